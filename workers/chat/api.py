"""The chat worker's HTTP API, as the backend calls it: /chat, /enhance, /generate, /health, /worker/info.

Bearer keys are compared in constant time. Bodies are size-capped and must be JSON objects;
every failure is a JSON error with a 4xx/5xx status and never a secret, a path or the environment.
"""

from __future__ import annotations

import hmac
import json
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from shared.http import send_json
from shared.logging import get_logger
from workers.chat.config import ChatSettings
from workers.chat.conversation import BadRequest
from workers.chat.service import ChatService

log = get_logger(component="chat-api")


class ChatAPI:
    def __init__(self, service: ChatService, settings: ChatSettings, worker_id: str, host: str = "0.0.0.0",
                 port: int | None = None):
        self.service = service
        self.settings = settings
        self.worker_id = worker_id
        self.keys = [k.encode() for k in settings.api_keys()]
        self.state = "starting"
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _send(self, status: int, body: dict[str, Any]):
                send_json(self, status, body)

            def do_GET(self):  # noqa: N802
                path = self.path.split("?")[0]
                if path == "/health":
                    ready = api.state == "ready" and api.service.ready
                    return self._send(200 if ready else 503, {"status": api.state, "healthy": ready,
                                                              "worker_id": api.worker_id, "worker": "chat"})
                if path == "/worker/info":
                    return self._send(200, {"worker_id": api.worker_id, "worker": "chat", "status": api.state,
                                            **api.service.info()})
                self._send(404, {"success": False, "error": "not found"})

            def do_POST(self):  # noqa: N802
                path = self.path.split("?")[0]
                handler = {"/chat": api.service.chat, "/enhance": api.service.enhance,
                           "/generate": api.service.generate}.get(path)
                if handler is None:
                    return self._send(404, {"success": False, "error": "not found"})
                length = self.headers.get("Content-Length")
                if length is None or not length.isdigit():
                    return self._send(411, {"success": False, "error": "Content-Length required"})
                if int(length) > api.settings.max_request_bytes:
                    self.close_connection = True  # do not read a body we refuse
                    return self._send(413, {"success": False,
                                            "error": f"body larger than {api.settings.max_request_bytes} bytes"})
                raw = self.rfile.read(int(length))
                if not api.authorized(self.headers.get("Authorization"), path):
                    return self._send(401, {"success": False, "error": "missing or invalid bearer token"})
                if not (api.state == "ready" and api.service.ready):
                    return self._send(503, {"success": False, "error": "model is loading"})
                try:
                    body = json.loads(raw)
                    if not isinstance(body, dict):
                        raise BadRequest("body must be a JSON object")
                    return self._send(200, {**handler(body), "worker_id": api.worker_id})
                except (json.JSONDecodeError, UnicodeDecodeError):
                    return self._send(400, {"success": False, "error": "body is not valid JSON"})
                except BadRequest as exc:
                    return self._send(400, {"success": False, "error": str(exc)})
                except FutureTimeout:
                    return self._send(504, {"success": False, "error": "generation timed out"})
                except Exception as exc:
                    log.exception("request_failed", path=path)
                    return self._send(500, {"success": False, "error": f"internal error ({type(exc).__name__})"})

            def log_message(self, *args):
                pass

        port = settings.port if port is None else port
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="chat-api", daemon=True)

    def authorized(self, header: str | None, path: str) -> bool:
        if not self.keys:
            return True  # no key configured: an open worker (logged at start)
        if path == "/enhance" and self.settings.allow_unauthenticated_enhance and not header:
            return True
        if not header or not header.startswith("Bearer "):
            return False
        token = header[len("Bearer "):].strip().encode()
        # Compare against every key, always, so timing says nothing about which one nearly matched.
        matches = [hmac.compare_digest(token, key) for key in self.keys]
        return any(matches)

    def start(self) -> ChatAPI:
        if not self.keys:
            log.warning("chat_api_open", reason="neither CHAT_WORKER_API_KEY nor WAN_WORKER_API_KEY is set")
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
