"""Hostile callers of the chat worker, over real sockets against the real uvicorn server.

Generated bodies (Hypothesis, fixed seed) on every route get a JSON 4xx or an answer, never a
500; slow, unfinished and abandoned requests are answered or closed within their bounds; an
abandoned or timed-out request frees its row at the next step and is counted once, as cancelled.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import wait_until
from tests.hostile import chat_bodies
from tests.test_chat import CHAT_KEY, WAN_KEY, ChatServer

ROUTES = ["/chat", "/enhance", "/generate", "/v1/chat/completions"]
LIMITS = {"http_header_timeout_seconds": 1.0, "http_body_timeout_seconds": 1.5, "http_max_connections": 60}


@pytest.fixture(scope="module")
def strict(tiny_chat):
    """Short read deadlines, a low connection bound, and answers capped at 16 tokens."""
    server = ChatServer(tiny_chat, settings_values=LIMITS, max_tokens_limit=16, default_max_tokens=8)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def patient(tiny_chat):
    """Long answers allowed (rows that stay busy for seconds) and a deadline far away: only the
    caller leaving can free a row early."""
    server = ChatServer(tiny_chat, request_timeout_seconds=120.0, max_tokens_limit=1900)
    yield server
    server.stop()


@pytest.fixture
def hasty(tiny_chat):
    """Long answers allowed, and a 2 s request deadline."""
    server = ChatServer(tiny_chat, request_timeout_seconds=2.0, max_tokens_limit=1900)
    yield server
    server.stop()


def url(server, path):
    return f"http://127.0.0.1:{server.port}{path}"


def metric(server, name, labels=""):
    for line in httpx.get(url(server, "/metrics")).text.splitlines():
        if line.startswith(name + labels + " ") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@settings(derandomize=True, database=None, deadline=None, max_examples=80,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(body=chat_bodies(), route=st.sampled_from(ROUTES + ["/enhance without a key"]))
def test_generated_bodies_get_a_json_4xx_or_an_answer_never_a_500(strict, body, route, capfd):
    keyless = route.endswith("without a key")
    headers = {} if keyless else {"Authorization": f"Bearer {CHAT_KEY}"}
    response = httpx.post(url(strict, route.split()[0]), content=body, headers=headers, timeout=30)
    assert response.status_code < 500, response.text
    text = response.text
    assert CHAT_KEY not in text and WAN_KEY not in text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error, str) or isinstance(error.get("message"), str)
    logged = capfd.readouterr().err
    assert "Traceback" not in logged, logged[-2000:]


def test_slowloris_sockets_are_closed_within_the_header_deadline_while_honest_callers_are_served(strict):
    baseline = open_fds()
    slow = [socket.create_connection(("127.0.0.1", strict.port)) for _ in range(40)]
    for sock in slow:
        sock.sendall(b"POST /chat HTTP/1.1\r\nHost: x\r\n")  # a head that never ends
    started = time.monotonic()
    with httpx.Client(timeout=10) as client:
        for _ in range(5):
            answer = client.post(url(strict, "/chat"), json={"message": "hi", "max_tokens": 2},
                                 headers={"Authorization": f"Bearer {CHAT_KEY}"})
            assert answer.status_code == 200
    for sock in slow:
        sock.settimeout(5)
        reply = sock.recv(4096)  # 408 then the close, or the close
        assert reply == b"" or reply.startswith(b"HTTP/1.1 408"), reply
        assert time.monotonic() - started < LIMITS["http_header_timeout_seconds"] + 2
        sock.close()
    wait_until(lambda: open_fds() <= baseline + 2, 5)


def test_a_body_that_never_finishes_is_answered_408_and_closed(strict):
    sock = socket.create_connection(("127.0.0.1", strict.port))
    sock.sendall(b"POST /chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + CHAT_KEY.encode() +
                 b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"message\": ")
    sock.settimeout(5)
    started = time.monotonic()
    reply = b""
    while chunk := sock.recv(4096):
        reply += chunk
    sock.close()
    assert reply.startswith(b"HTTP/1.1 408") and b"body did not arrive within 1.5 s" in reply
    assert time.monotonic() - started < LIMITS["http_body_timeout_seconds"] + 1.5


def test_a_connection_flood_is_refused_past_the_bound_and_every_descriptor_comes_back(strict):
    baseline = open_fds()
    flood = [socket.create_connection(("127.0.0.1", strict.port)) for _ in range(LIMITS["http_max_connections"] + 20)]
    refused = httpx.get(url(strict, "/health"), timeout=10)
    assert refused.status_code == 503 and "connections open" in refused.json()["error"]
    for sock in flood:
        sock.close()
    wait_until(lambda: open_fds() <= baseline + 2, 10)
    assert httpx.get(url(strict, "/health"), timeout=10).status_code == 200


def _abandon(server, path, body):
    """Send a request, wait until its row is decoding, and hang up without reading the answer."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    data = json.dumps(body).encode()
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CHAT_KEY}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


@pytest.mark.parametrize("path, body", [
    ("/chat", {"message": "tell me everything"}),
    ("/enhance", {"prompt": "a cat"}),
    ("/generate", {"prompt": "once upon a time"}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": True}),
])
def test_abandoned_requests_free_their_rows_and_count_once_as_cancelled(patient, path, body):
    body = {**body, "max_tokens": 1500, "ignore_eos": True, "temperature": 0}
    cancelled = metric(patient, "ourvidz_jobs_total", '{outcome="cancelled"}')
    completed = metric(patient, "ourvidz_jobs_total", '{outcome="completed"}')
    sockets = [_abandon(patient, path, body) for _ in range(6)]
    wait_until(lambda: metric(patient, "ourvidz_engine_rows") == 6, 10)
    for sock in sockets:
        sock.close()
    left = time.monotonic()
    wait_until(lambda: metric(patient, "ourvidz_engine_rows") == 0, 5)
    assert time.monotonic() - left < 5
    wait_until(lambda: metric(patient, "ourvidz_jobs_total", '{outcome="cancelled"}') == cancelled + 6, 5)
    assert metric(patient, "ourvidz_jobs_total", '{outcome="completed"}') == completed


def test_a_request_past_its_deadline_gets_504_and_its_row_is_cancelled_once(hasty):
    counts = {o: metric(hasty, "ourvidz_jobs_total", f'{{outcome="{o}"}}') for o in ("cancelled", "completed", "failed")}
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: httpx.post(
            url(hasty, "/chat"), json={"message": "go on", "max_tokens": 1900, "ignore_eos": True},
            headers={"Authorization": f"Bearer {CHAT_KEY}"}, timeout=30), range(4)))
    assert [a.status_code for a in answers] == [504] * 4 and time.monotonic() - started < 5
    wait_until(lambda: metric(hasty, "ourvidz_engine_rows") == 0, 5)
    wait_until(lambda: metric(hasty, "ourvidz_jobs_total", '{outcome="cancelled"}') == counts["cancelled"] + 4, 5)
    assert metric(hasty, "ourvidz_jobs_total", '{outcome="completed"}') == counts["completed"]
    assert metric(hasty, "ourvidz_jobs_total", '{outcome="failed"}') == counts["failed"]


@pytest.mark.parametrize("route, headers", [("/chat", {"Authorization": f"Bearer {CHAT_KEY}"}), ("/enhance", {})])
def test_a_1500_message_conversation_is_answered_within_seconds_and_the_cap_refuses_more(strict, route, headers):
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " * 20} for i in range(1500)]
    started = time.monotonic()
    answer = httpx.post(url(strict, route), json={"messages": messages, "max_tokens": 4}, headers=headers, timeout=30)
    assert answer.status_code == 200 and time.monotonic() - started < 10
    if route == "/chat":
        assert answer.json()["dropped_messages"] > 1000
    too_many = httpx.post(url(strict, route), json={"messages": messages * 2, "max_tokens": 4}, headers=headers,
                          timeout=30)
    assert too_many.status_code == 400 and "the limit is 2000" in too_many.json()["error"]


AUTH = f"Authorization: Bearer {CHAT_KEY}\r\n"


@pytest.mark.parametrize("request_bytes", [
    b"POST /chat HTTP/1.1\r\nHost: x\r\n" + AUTH.encode() + b"Content-Length: abc\r\n\r\n{}",
    b"POST /chat HTTP/1.1\r\nHost: x\r\n" + AUTH.encode() + b"Content-Length: -5\r\n\r\n{}",
    b"POST /chat HTTP/1.1\r\nHost: x\r\n" + AUTH.encode() + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
    b"POST /chat HTTP/1.1\r\nHost: x\r\n" + AUTH.encode() + b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"mes",  # never ends
    b"POST /chat HTTP/1.1\r\nHost: x\r\n" + AUTH.encode() + b"Transfer-Encoding: chunked\r\n\r\nfffffffff\r\n",
    b"POST /chat HTTP/1.1\r\nHost: x\r\n" + AUTH.encode() + b"Expect: 100-continue\r\nContent-Length: 50\r\n\r\n",
    b"POST /chat HTTP/1.1\r\nHost: x\r\n" + AUTH.encode() + b"Content-Length: 99999999999\r\n\r\n{",
    b"POST /chat HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n",
    b"POST /chat HTTP/1.1\r\nHost: x\r\n" + AUTH.encode() + b"Content-Length: 2\r\n\r\n{}GARBAGE / HTTP/9\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS hello on the plain port
])
def test_every_body_trick_gets_a_4xx_or_a_close_within_the_deadlines(strict, request_bytes):
    sock = socket.create_connection(("127.0.0.1", strict.port))
    sock.settimeout(LIMITS["http_body_timeout_seconds"] + 3)
    started = time.monotonic()
    try:
        sock.sendall(request_bytes)
    except OSError:  # the server already hung up on it
        return
    reply = b""
    try:  # until the connection closes or a final (not 1xx) status line and its headers are in
        while not re.search(rb"HTTP/1.1 [2-5]\d\d [^\r]*\r\n(.+\r\n)*\r\n", reply) and (chunk := sock.recv(65536)):
            reply += chunk
    except ConnectionResetError:
        pass
    sock.close()
    final = re.search(rb"HTTP/1.1 ([2-5]\d\d)", reply)
    assert reply == b"" or (final and final[1].startswith(b"4") and final[1] != b"404"), reply[:300]
    assert time.monotonic() - started < LIMITS["http_body_timeout_seconds"] + 2.5
