"""What a command-line mistake looks like: one line that says what is wrong and what to do.

`run_command` calls a command and turns what goes wrong into that line on stderr and an exit
status: 2 for a usage mistake (a flag, a setting, a model folder that cannot work), 1 for a run
that failed (Redis away, a job that failed). No traceback reaches the terminal unless
LOG_LEVEL=DEBUG asks for one.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

import redis
from pydantic import ValidationError

from shared.ops.logging import redact_text
from workers.config_error import ConfigError

# The environment prefix of each settings class whose fields are read under a prefix.
_PREFIXES = {"SDXLSettings": "SDXL_", "WANSettings": "WAN_"}
_SECRET_NAMES = ("KEY", "SECRET", "TOKEN", "PASSWORD")


class UsageError(ValueError):
    """A command line or configuration that cannot work as given; said in one line, exit 2."""


class CommandFailed(RuntimeError):
    """The command ran and failed; said in one line, exit 1."""


def settings_problem(exc: ValidationError) -> str:
    """A settings error as `NAME=value: what is wrong` (secret values are never shown)."""
    error = exc.errors()[0]
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    message = error["msg"].removeprefix("Value error, ")
    field = ".".join(str(p) for p in error["loc"])
    if not field:  # a rule across settings: its message names them
        return f"configuration: {message}{more}; fix it in the environment (see docs/configuration.md)"
    name = field if field.isupper() else _PREFIXES.get(exc.title, "") + field.upper()
    value = error.get("input")
    shown = "***" if any(s in name for s in _SECRET_NAMES) else repr(value)[:80]
    where = f"{name}={shown}" if isinstance(value, (str, int, float)) else name
    return f"setting {where}: {message}{more}; fix it in the environment (see docs/configuration.md)"


def redis_problem(exc: Exception, url: str) -> str:
    reason = str(exc).split("\n")[0] or type(exc).__name__
    return (f"cannot reach Redis at {redact_text(url)} ({redact_text(reason)[:160]}): start redis-server, "
            "or point REDIS_URL at a running Redis")


def run_command(command: Callable[[], int], name: str, redis_url: Callable[[], str]) -> int:
    """Run `command`; every failure becomes one line on stderr and an exit status."""
    try:
        code = command()
        sys.stdout.flush()
        return code
    except (UsageError, ConfigError) as exc:
        return _say(name, str(exc), 2)
    except ValidationError as exc:
        return _say(name, settings_problem(exc), 2)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        return _say(name, redis_problem(exc, redis_url()), 1)
    except CommandFailed as exc:
        return _say(name, str(exc), 1)
    except BrokenPipeError:
        # The reader went away (`ourvidz-worker queue | head -1`): stop quietly, as Python's docs advise.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return _say(name, "interrupted", 130)
    except Exception as exc:  # noqa: BLE001 - a bug or an unforeseen failure: still one line
        if os.environ.get("LOG_LEVEL", "").upper() == "DEBUG":
            traceback.print_exc()
        detail = redact_text(str(exc).split("\n")[0])[:300]
        return _say(name, f"failed: {type(exc).__name__}: {detail} (LOG_LEVEL=DEBUG shows the traceback)", 1)


def _say(name: str, message: str, code: int) -> int:
    print(f"ourvidz-worker {name}: {message}", file=sys.stderr, flush=True)
    return code
