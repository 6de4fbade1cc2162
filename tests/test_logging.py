import json

import structlog

from shared.logging import configure_logging, get_logger, redact_text
from shared.settings import Settings


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
