"""Telling the backend where this worker answers, on RunPod: `https://{pod}-{port}.proxy.runpod.net`.

The chat worker posts to `register-chat-worker`, the video worker to `update-worker-url`; the
backend then probes GET /health before it uses the URL. Retried with backoff in the background,
so a slow backend never holds up serving.
"""

from __future__ import annotations

import os
import threading

import httpx

from shared.ops.logging import get_logger
from shared.ops.retry import TransientError, backoff_delays, retrying
from shared.ops.settings import Settings

log = get_logger(component="announce")


def runpod_url(port: int) -> str | None:
    pod = os.environ.get("RUNPOD_POD_ID")
    return f"https://{pod}-{port}.proxy.runpod.net" if pod else None


def announce(settings: Settings, function: str, port: int, attempts: int = 8, base_delay: float = 2.0) -> bool:
    url = runpod_url(port)
    if url is None or not settings.supabase_url:
        return False
    headers = {"Content-Type": "application/json"}
    if settings.supabase_service_key:
        headers["Authorization"] = f"Bearer {settings.supabase_service_key.get_secret_value()}"
    endpoint = f"{settings.supabase_url}/functions/v1/{function}"

    def post() -> None:
        response = httpx.post(endpoint, json={"worker_url": url, "auto_registered": True}, headers=headers,
                              timeout=15.0)
        if response.status_code >= 300:  # the backend may not be deployed yet: asked again later
            refused = TransientError(f"{function} answered {response.status_code}")
            refused.status = response.status_code
            raise refused

    def logged(exc: BaseException, _delay: float) -> None:
        if isinstance(exc, TransientError):
            log.warning("announce_refused", function=function, status=getattr(exc, "status", None))
        else:
            log.warning("announce_failed", function=function, error=type(exc).__name__)

    try:
        retrying(post, (TransientError, httpx.HTTPError),
                 backoff_delays(attempts, base_delay, cap=base_delay * 2**attempts), on_retry=logged)
    except (TransientError, httpx.HTTPError) as exc:
        logged(exc, 0.0)
        return False
    log.info("worker_url_announced", function=function, worker_url=url)
    return True


def announce_in_background(settings: Settings, function: str, port: int) -> threading.Thread | None:
    if runpod_url(port) is None:
        return None
    thread = threading.Thread(target=announce, args=(settings, function, port), name="announce", daemon=True)
    thread.start()
    return thread
