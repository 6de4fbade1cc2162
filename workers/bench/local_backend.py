"""A local stand-in for the Supabase backend: Storage REST and the job-callback function.

Not part of a production worker: it is the embedded default that `scripts/demo.sh` and
`ourvidz-worker bench fleet` run against, so the fleet can be tried without a cloud account (the
tests use it too). It records every stored object and every callback, verifies the callback HMAC
the way the backend does (401 on a missing or wrong signature), and can add latency or fail the
next N requests of a kind. A small stdlib server is enough for that; workers serve HTTP with
uvicorn (shared/ops/http.py).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from shared.deliver.callback import verify


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # A worker killed mid-request hangs up on us: expected in crash tests, not worth a traceback.
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


@dataclass
class Faults:
    latency: float = 0.0
    fail_next: int = 0  # answer the next N requests with `fail_status`
    fail_status: int = 500
    down: bool = False  # refuse every request with 503 until cleared


@dataclass
class LocalBackend:
    callback_secret: str | None = None
    service_key: str | None = None
    storage: Faults = field(default_factory=Faults)
    callback: Faults = field(default_factory=Faults)

    def __post_init__(self):
        self.objects: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.files: dict[str, tuple[int, bytes, dict[str, str]]] = {}  # path -> (status, body, headers) for GET
        self.callbacks: list[dict[str, Any]] = []
        self.finished_at: dict[str, float] = {}  # job id -> when its first terminal callback arrived
        self.upload_count = 0
        self.requests: list[tuple[str, str]] = []  # (path, Range header) of file GETs
        self.function_calls: list[tuple[str, dict[str, Any], str | None]] = []  # (name, body, Authorization)
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -------------------------------------------------------------------------- access

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def terminal_callbacks(self, job_id: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [c for c in self.callbacks
                    if c["status"] in ("completed", "failed", "cancelled") and (job_id is None or c["job_id"] == job_id)]

    def wait_for_terminal(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.terminal_callbacks()
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise TimeoutError(f"{len(self.terminal_callbacks())} terminal callbacks after {timeout}s, expected {count}")

    # ------------------------------------------------------------------------- serving

    def start(self, host: str = "127.0.0.1", port: int = 0) -> LocalBackend:
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Buffered, so headers and body leave in one send: written in two, a response stalls
            # about 40 ms on Nagle's algorithm and delayed ACKs, after the callback was recorded.
            wbufsize = 64 * 1024

            def _reply(self, status: int, body: Any):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _faulted(self, faults: Faults) -> bool:
                if faults.latency:
                    time.sleep(faults.latency)
                with backend.lock:
                    if faults.down:
                        status = 503
                    elif faults.fail_next > 0:
                        faults.fail_next -= 1
                        status = faults.fail_status
                    else:
                        return False
                self._reply(status, {"error": "injected fault", "message": f"injected {status}"})
                return True

            def _authorized(self) -> bool:
                if backend.service_key is None:
                    return True
                return self.headers.get("Authorization") == f"Bearer {backend.service_key}"

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.startswith("/storage/v1/object/"):
                    if self._faulted(backend.storage):
                        return
                    if not self._authorized():
                        return self._reply(403, {"message": "invalid service key"})
                    bucket, _, key = unquote(self.path[len("/storage/v1/object/"):]).partition("/")
                    with backend.lock:
                        backend.objects[(bucket, key)] = (body, self.headers.get("Content-Type", ""))
                        backend.upload_count += 1
                    return self._reply(200, {"Key": f"{bucket}/{key}"})
                if self.path == "/functions/v1/job-callback":
                    if self._faulted(backend.callback):
                        return
                    if backend.callback_secret is not None and not verify(
                        body, backend.callback_secret, self.headers.get("X-Callback-Signature")
                    ):
                        return self._reply(401, {"error": "invalid signature"})
                    with backend.lock:
                        callback = json.loads(body)
                        backend.callbacks.append(callback)
                        if callback.get("status") in ("completed", "failed", "cancelled"):
                            backend.finished_at.setdefault(callback.get("job_id"), time.time())
                    return self._reply(200, {"success": True})
                if self.path.startswith("/functions/v1/"):
                    with backend.lock:
                        backend.function_calls.append(
                            (self.path.rsplit("/", 1)[-1], json.loads(body or b"{}"), self.headers.get("Authorization")))
                    return self._reply(200, {"success": True})
                self._reply(404, {"error": "not found"})

            def do_GET(self):  # noqa: N802
                path = self.path.split("?")[0]
                if path in backend.files:
                    status, body, headers = backend.files[path]
                    wanted = self.headers.get("Range", "")
                    if status == 200 and wanted.startswith("bytes=") and wanted[6:-1].isdigit() and wanted.endswith("-"):
                        start = int(wanted[6:-1])
                        status, body = 206, body[start:]
                        headers = {**headers, "Content-Range": f"bytes {start}-{start + len(body) - 1}/*"}
                    with backend.lock:
                        backend.requests.append((path, wanted))
                    self.send_response(status)
                    for name, value in {"Content-Length": str(len(body)), **headers}.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if self.path.startswith("/storage/v1/object/authenticated/"):
                    if not self._authorized():
                        return self._reply(403, {"message": "invalid service key"})
                    bucket, _, key = unquote(self.path[len("/storage/v1/object/authenticated/"):]).partition("/")
                    found = backend.objects.get((bucket, key))
                    if found is None:
                        return self._reply(404, {"message": "Object not found"})
                    self.send_response(200)
                    self.send_header("Content-Type", found[1])
                    self.send_header("Content-Length", str(len(found[0])))
                    self.end_headers()
                    self.wfile.write(found[0])
                    return
                if self.path == "/storage/v1/bucket":
                    return self._reply(200, [{"name": b} for b in sorted({b for b, _ in backend.objects})])
                if path == "/functions/v1/job-callback":  # deployed: the real function refuses a GET so
                    return self._reply(405, {"error": "Method not allowed"})
                self._reply(404, {"error": "not found"})  # a function that is not deployed, as Supabase says

            def log_message(self, *args):
                pass

        self._server = _QuietServer((host, port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="local-backend", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
