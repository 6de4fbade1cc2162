"""structlog JSON logs with secrets scrubbed from every event before it is written."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable

import structlog

_SECRET_KEY_NAMES = re.compile(r"(secret|token|password|passwd|authorization|api_key|apikey|service_key)", re.I)
# user:password@ in any URL-looking text, e.g. a rediss:// address in an exception message.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@", re.I)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.I)

_known_secrets: list[str] = []


def register_secrets(values: Iterable[str]) -> None:
    """Remember secret values so they are scrubbed wherever they turn up in a log line."""
    for v in values:
        if v and v not in _known_secrets:
            _known_secrets.append(v)
    _known_secrets.sort(key=len, reverse=True)


def redact_text(text: str) -> str:
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, "***")
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _BEARER.sub(r"\1***", text)


def _redact_value(key: str, value):
    if isinstance(value, str):
        return "***" if _SECRET_KEY_NAMES.search(key) else redact_text(value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_value(key, v) for v in value]
    return value


def _redact_processor(_logger, _name, event_dict):
    return {k: _redact_value(k, v) for k, v in event_dict.items()}


def _format_exc_redacted(logger, name, event_dict):
    event_dict = structlog.processors.format_exc_info(logger, name, event_dict)
    if "exception" in event_dict:
        event_dict["exception"] = redact_text(event_dict["exception"])
    return event_dict


class _StderrLogger:
    """Writes each line to whatever sys.stderr is at that moment (it may be swapped after setup)."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def configure_logging(level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    register_secrets(secrets)
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format="%(message)s")
    for noisy in ("httpx", "httpcore", "urllib3", "botocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _format_exc_redacted,
            _redact_processor,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=lambda *_args: _StderrLogger(),
        cache_logger_on_first_use=False,
    )


def get_logger(**bound):
    return structlog.get_logger().bind(**bound)
