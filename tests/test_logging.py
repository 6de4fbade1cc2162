import json

import structlog

from shared.ops.logging import configure_logging, get_logger, redact_text
from shared.ops.settings import Settings


def test_secrets_never_reach_the_log(capsys, monkeypatch):
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "srv-key-123456")
    monkeypatch.setenv("JOB_CALLBACK_SECRET", "hmac-secret-xyz")
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", "https://eu1-cool.upstash.io")
    monkeypatch.setenv("UPSTASH_REDIS_REST_TOKEN", "upstash-token-abc")
    settings = Settings()
    configure_logging("INFO", settings.secret_values())
    log = get_logger(worker_id="w1")
    log.info("connecting", redis=settings.effective_redis_url, api_key="k-1", note="key is srv-key-123456")
    try:
        raise RuntimeError(f"auth failed with Bearer hmac-secret-xyz for {settings.effective_redis_url}")
    except RuntimeError:
        log.exception("boom", job_id="j1")
    out = capsys.readouterr().err
    for secret in ("srv-key-123456", "hmac-secret-xyz", "upstash-token-abc", "k-1"):
        assert secret not in out
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert lines[0]["redis"] == "rediss://default:***@eu1-cool.upstash.io:6379"
    assert lines[1]["job_id"] == "j1" and lines[1]["worker_id"] == "w1" and "RuntimeError" in lines[1]["exception"]
    configure_logging("WARNING")
    structlog.contextvars.clear_contextvars()


def test_redact_text_scrubs_url_credentials_and_bearer_tokens():
    assert redact_text("redis://user:pw@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact_text("Authorization: Bearer abc.def") == "Authorization: Bearer ***"


def test_library_records_and_warnings_are_json_lines_and_log_level_holds():
    """In a fresh process (pytest replaces Python's warning display in its own)."""
    import subprocess
    import sys

    program = """
import logging, warnings
from shared.ops.logging import configure_logging, get_logger
early = get_logger(component="made-at-import")  # as modules do, before any configuration
configure_logging("WARNING")
early.info("too_quiet_to_show")
early.warning("shown", job_id="j1")
logging.getLogger("transformers.modeling_utils").warning("a library says %s", "something")
logging.getLogger("uvicorn.error").info("below the level")
warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
"""
    done = subprocess.run([sys.executable, "-W", "always", "-c", program], capture_output=True, text=True, timeout=60,
                          check=True)
    lines = [json.loads(line) for line in done.stderr.strip().splitlines()]  # every line is JSON
    # A library's warnings are about the library: not shown at WARNING (nor INFO)...
    assert [line["event"] for line in lines] == ["shown"] and lines[0]["component"] == "made-at-import"
    # ...and kept, as JSON records at debug level, when LOG_LEVEL=DEBUG asks; a library's error keeps its level.
    program = program.replace('configure_logging("WARNING")', 'configure_logging("DEBUG")') + (
        '\nlogging.getLogger("diffusers").error("a library failed")')
    done = subprocess.run([sys.executable, "-W", "always", "-c", program], capture_output=True, text=True, timeout=60,
                          check=True)
    lines = [json.loads(line) for line in done.stderr.strip().splitlines()]
    library = {line["event"]: line for line in lines if "logger" in line}
    assert library["a library says something"]["level"] == "debug"
    warned = next(line for event, line in library.items() if "deprecated thing" in event)
    assert warned["logger"] == "py.warnings" and warned["level"] == "debug"
    assert library["a library failed"]["level"] == "error"


def test_console_format_for_people_at_a_terminal(capsys):
    configure_logging("INFO", fmt="console")
    get_logger(worker_id="w1").info("worker_ready", engine="sim")
    line = capsys.readouterr().err.strip()
    assert "worker_ready" in line and "engine=sim" in line and not line.startswith("{")
    configure_logging("WARNING")


THREADED = """
import sys, threading
from shared.ops import logging as ourlog
if len(sys.argv) > 1:  # the old writer, for comparison: print's text and newline as two writes
    ourlog._write_line = lambda line: print(line, file=sys.stderr, flush=True)
ourlog.configure_logging("INFO")
log = ourlog.get_logger(component="threads")

def burst(n):
    for i in range(300):
        log.info("burst", thread=n, i=i, padding="x" * 200)

threads = [threading.Thread(target=burst, args=(n,)) for n in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def test_records_from_many_threads_stay_one_json_object_per_line():
    """A worker logs from its claimer, delivery and keeper threads at once into one pipe."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", THREADED], capture_output=True, text=True, timeout=60, check=True)
    records = [json.loads(line) for line in done.stderr.splitlines()]
    assert len(records) == 8 * 300 and {r["thread"] for r in records} == set(range(8))
