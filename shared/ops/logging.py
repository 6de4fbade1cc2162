"""structlog JSON logs with secrets scrubbed from every event before it is written.

One stream, one format: structlog's events, the standard library's records (transformers,
diffusers, uvicorn) and Python warnings all leave as JSON lines on stderr (or console lines with
LOG_FORMAT=console), with secrets replaced by `***`, and progress bars kept out.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import threading
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


_WRITE = threading.Lock()


def _write_line(line: str) -> None:
    """One record, one write, one flush, under a lock: `print` writes the text and its newline
    separately, so two threads (a claimer and a delivery thread, say) could put two records on
    one line. Written whole, a line under 4 KiB also reaches a shared pipe (supervisord) unsplit."""
    with _WRITE:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


class _StderrLogger:
    """Writes each line to whatever sys.stderr is at that moment (it may be swapped after setup)."""

    def msg(self, message: str) -> None:
        _write_line(message)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


class _StderrHandler(logging.Handler):
    """The standard library's records (transformers, diffusers, uvicorn, warnings), rendered like ours."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _write_line(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never take the worker down
            self.handleError(record)


class _LibraryNoticesAtDebug(logging.Filter):
    """Our own events go through structlog; what reaches the standard library's root is the
    libraries' (and Python's `warnings`). Their notices and warnings are about the libraries, not
    the job: kept, at debug level, for LOG_LEVEL=DEBUG; their errors keep their level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


# Libraries that log through the standard library; below WARNING they are noise in a worker's log.
_QUIET = ("httpx", "httpcore", "urllib3", "botocore", "filelock", "asyncio", "PIL", "uvicorn.error")


def configure_logging(level: str = "INFO", secrets: Iterable[str] = (), fmt: str | None = None,
                      progress_bars: bool = False) -> None:
    """Every log line on stderr in one format: structlog's own events, the standard library's
    records and `warnings` alike. `fmt`: `json` (default; LOG_FORMAT) or `console` for people at a
    terminal. `progress_bars=False` keeps the libraries' download and loading bars out of the log."""
    register_secrets(secrets)
    level = level.upper()
    fmt = (fmt or os.environ.get("LOG_FORMAT") or "json").lower()
    renderer = (structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()) if fmt == "console"
                else structlog.processors.JSONRenderer())
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level, stamp,
                    _format_exc_redacted, _redact_processor, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=lambda *_args: _StderrLogger(),
        cache_logger_on_first_use=False,
    )
    handler = _StderrHandler()
    handler.addFilter(_LibraryNoticesAtDebug())
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, stamp],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _format_exc_redacted,
                    _redact_processor, renderer]))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    for noisy in _QUIET:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    logging.captureWarnings(True)  # warnings.warn(...) becomes a `py.warnings` record, rendered as above
    if not progress_bars:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # huggingface_hub and transformers read it
    _progress_bars[0] = progress_bars
    if level == "DEBUG":  # their records, as ours, whenever they are imported, warnings included
        route_library_logs(load=("transformers", "diffusers"), at_least=logging.WARNING)
    else:  # imported later, they keep their own handler: tell it to say only errors
        for variable in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
            os.environ.setdefault(variable, "error")
        route_library_logs()


_progress_bars = [True]


def route_library_logs(load: Iterable[str] = (), at_least: int | None = None) -> None:
    """transformers and diffusers install a stderr handler of their own and stop propagation:
    send their records to the root handler instead. `load` imports those libraries' logging
    first (a worker does, before its engine loads them); others are handled if already imported.
    `at_least`: lower their own verbosity to this level if it is above it (an inherited
    TRANSFORMERS_VERBOSITY=error, say, when LOG_LEVEL=DEBUG wants their warnings).
    torch goes first: it has a stderr handler of its own too, and torchao (imported by those
    libraries when an FP8 switch is on) warns through it while they import."""
    if "torch" in sys.modules or "torch" in load or set(load) & {"transformers", "diffusers"}:
        _route_torch_logs()
    for name in ("transformers", "diffusers"):
        if name not in sys.modules and name not in load:
            continue
        library = importlib.import_module(f"{name}.utils.logging")
        library.disable_default_handler()
        library.enable_propagation()
        if at_least is not None and library.get_verbosity() > at_least:
            library.set_verbosity(at_least)
        if not _progress_bars[0]:
            library.disable_progress_bar()


def _route_torch_logs() -> None:
    """torch's `W… _pytree.py …` lines become records of ours, unless TORCH_LOGS asks for torch's own
    output (`TORCH_LOGS=recompiles,graph_breaks`, when studying a compile), which it then keeps."""
    if os.environ.get("TORCH_LOGS"):
        return
    import torch  # noqa: F401  (its import installs the handler this takes out)

    torch_logger = logging.getLogger("torch")
    torch_logger.handlers = [h for h in torch_logger.handlers if type(h) is not logging.StreamHandler]
    torch_logger.propagate = True


def get_logger(**bound):
    """A logger that takes its configuration when it first logs, not when it is made: modules make
    theirs at import, before `configure_logging` runs."""
    return structlog.get_logger(**bound)
