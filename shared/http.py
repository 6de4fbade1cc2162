"""A small threaded HTTP server for each worker's /health and /metrics (stdlib only)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Route = Callable[[], tuple[int, str, bytes]]


def json_response(status: int, body: dict[str, Any]) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(body).encode()


def write_response(handler: BaseHTTPRequestHandler, status: int, content_type: str, body: bytes) -> None:
    """One complete response on a stdlib handler (Content-Length set, so keep-alive works)."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def send_json(handler: BaseHTTPRequestHandler, status: int, body: Any) -> None:
    write_response(handler, *json_response(status, body))


class HealthServer:
    """Serves GET routes on a background thread. Port 0 picks a free port (see `.port`)."""

    def __init__(self, routes: dict[str, Route], host: str = "0.0.0.0", port: int = 0):
        self.routes = routes
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the stdlib's name
                route = server.routes.get(self.path.split("?")[0])
                if route is None:
                    status, ctype, body = json_response(404, {"error": "not found"})
                else:
                    try:
                        status, ctype, body = route()
                    except Exception as exc:  # a broken probe must not kill the server
                        status, ctype, body = json_response(500, {"error": type(exc).__name__})
                write_response(self, status, ctype, body)

            def log_message(self, *args):  # access logs would drown the job logs
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="health-http", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
