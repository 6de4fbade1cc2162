"""Fixtures: the real Redis server (its own database index, flushed per test) and a local backend."""

from __future__ import annotations

import os
import threading

import pytest
import redis

from shared.ops.logging import configure_logging
from shared.ops.settings import Settings
from workers.bench.local_backend import LocalBackend

TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
configure_logging("WARNING")


@pytest.fixture
def redis_client():
    client = redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True)
    try:
        client.ping()
    except redis.ConnectionError as exc:  # the suite's contract: a real server, never a mock
        pytest.fail(f"tests need a Redis server at {TEST_REDIS_URL}: {exc}")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def backend():
    server = LocalBackend(callback_secret="test-callback-secret", service_key="test-service-key").start()
    yield server
    server.stop()


@pytest.fixture
def make_settings(tmp_path, backend):
    """Settings for a worker talking to the local backend, tuned for fast tests."""

    def make(**overrides) -> Settings:
        values = dict(
            redis_url=TEST_REDIS_URL,
            contract="v1",
            storage_url="supabase",
            supabase_url=backend.url,
            supabase_service_key="test-service-key",
            job_callback_secret="test-callback-secret",
            lease_seconds=2.0,
            max_attempts=3,
            retry_base_seconds=0.02,
            callback_retries=2,
            storage_retries=3,
            batch_wait_ms=20,
            shutdown_grace_seconds=10.0,
            worker_id=f"test-{threading.get_ident()}-{len(os.listdir(tmp_path))}",
        )
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture(scope="session")
def tiny_chat(tmp_path_factory):
    """A tiny random-weight Qwen2 chat model folder (built once per test run)."""
    from workers.chat.tiny import make_tiny_chat

    return make_tiny_chat(tmp_path_factory.mktemp("tiny-chat"))
