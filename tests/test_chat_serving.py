"""The chat worker serving many callers: continuous batching over HTTP, and the OpenAI-compatible API
driven by the official `openai` client."""

import asyncio
import json
import threading
import time

import httpx
import openai
import pytest

from tests.helpers import wait_until
from tests.test_chat import CHAT_KEY, post, start_api


@pytest.fixture(scope="module")
def api(tiny_chat):
    server = start_api(tiny_chat, max_batch=64, batch_wait_ms=0, request_timeout_seconds=60)
    yield server
    server.stop()


def client(api, key=CHAT_KEY):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{api.port}/v1", api_key=key, max_retries=0)


def long_body(tokens: int = 1500) -> dict:
    return {"model": "qwen_instruct", "messages": [{"role": "user", "content": "a long one"}], "max_tokens": tokens,
            "ignore_eos": True, "temperature": 0}


def test_the_official_client_lists_models_and_completes(api):
    oai = client(api)
    assert [m.id for m in oai.models.list()] == ["Qwen/Qwen2.5-7B-Instruct"]
    assert oai.models.retrieve("Qwen/Qwen2.5-7B-Instruct").owned_by == "ourvidz"
    reply = oai.chat.completions.create(model="Qwen/Qwen2.5-7B-Instruct", max_tokens=10, seed=11,
                                        messages=[{"role": "system", "content": "be brief"},
                                                  {"role": "user", "content": "hello"}])
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.model == "Qwen/Qwen2.5-7B-Instruct"
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 0 and 0 < reply.usage.completion_tokens <= 10
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    again = oai.chat.completions.create(model="anything", max_tokens=10, seed=11,
                                        messages=[{"role": "system", "content": "be brief"},
                                                  {"role": "user", "content": [{"type": "text", "text": "hello"}]}])
    assert again.choices[0].message.content == choice.message.content  # same seed, same answer


def test_streaming_gives_the_same_text_ends_with_done_and_reports_usage(api):
    oai = client(api)
    body = {"model": "qwen_instruct", "max_tokens": 24, "seed": 3, "ignore_eos": True,
            "messages": [{"role": "user", "content": "tell me something"}]}
    plain = oai.chat.completions.create(**{k: v for k, v in body.items() if k != "ignore_eos"},
                                        extra_body={"ignore_eos": True})
    chunks = list(oai.chat.completions.create(stream=True, **{k: v for k, v in body.items() if k != "ignore_eos"},
                                              extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content and chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 24 and len({c.id for c in chunks}) == 1
    with_usage = list(oai.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                                  **{k: v for k, v in body.items() if k != "ignore_eos"},
                                                  extra_body={"ignore_eos": True}))
    assert with_usage[-1].choices == [] and with_usage[-1].usage.completion_tokens == 24
    assert all(c.usage is None for c in with_usage[:-1])
    # On the wire: server-sent events ending with [DONE].
    with httpx.stream("POST", f"http://127.0.0.1:{api.port}/v1/chat/completions", json={**body, "stream": True},
                      headers={"Authorization": f"Bearer {CHAT_KEY}"}) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = [line for line in reply.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "length"


def test_stop_sequences_cut_the_answer_and_free_the_row(api):
    oai = client(api)
    body = dict(model="qwen_instruct", max_tokens=40, seed=9, messages=[{"role": "user", "content": "go on"}],
                extra_body={"ignore_eos": True})
    full = oai.chat.completions.create(**body).choices[0].message.content
    stop = full[10:13]
    cut = oai.chat.completions.create(stop=[stop], **body).choices[0]
    assert cut.finish_reason == "stop" and cut.message.content == full[:full.index(stop)]
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       oai.chat.completions.create(stop=stop, stream=True, **body) if c.choices)
    assert streamed == cut.message.content  # a stop sequence never leaks, even split across tokens
    wait_until(lambda: api.engine.models["qwen_instruct"].generator.active == 0, 10)


def test_refusals_are_openai_errors(api):
    with pytest.raises(openai.AuthenticationError):
        client(api, key="wrong").chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.AuthenticationError):
        client(api, key="wrong").models.list()
    oai = client(api)
    for bad in ({"n": 2}, {"temperature": 9}, {"messages": [{"role": "tool", "content": "x"}]},
                {"tools": [{"type": "function", "function": {"name": "f"}}]}):
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}], **bad}
        with pytest.raises(openai.BadRequestError) as refused:
            oai.chat.completions.create(**body)
        assert refused.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("gpt-4o")


def test_a_short_request_finishes_while_a_long_one_is_still_decoding(api):
    finished: dict[str, float] = {}

    def send(name, path, body):
        post(api, path, body)
        finished[name] = time.monotonic()

    long = threading.Thread(target=send, args=("long", "/v1/chat/completions", long_body()))
    started = time.monotonic()
    long.start()
    wait_until(lambda: api.engine.models["qwen_instruct"].generator.active == 1, 10, interval=0.005)
    short_sent = time.monotonic()
    reply = post(api, "/enhance", {"prompt": "a cat", "max_tokens": 4})
    short_done = time.monotonic()
    assert reply.status_code == 200 and "long" not in finished  # out while the long one decodes
    long.join(60)
    assert short_done - short_sent < 0.3 * (finished["long"] - started)


def test_64_concurrent_callers_on_both_apis_are_all_answered(api):
    async def burst():
        limits = httpx.Limits(max_connections=None)
        async with httpx.AsyncClient(timeout=60, limits=limits) as session:
            auth = {"Authorization": f"Bearer {CHAT_KEY}"}
            calls = [session.post(f"http://127.0.0.1:{api.port}/v1/chat/completions", headers=auth,
                                  json={"messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": 16})
                     for i in range(32)]
            calls += [session.post(f"http://127.0.0.1:{api.port}/chat", headers=auth,
                                   json={"message": f"q{i}", "max_tokens": 16}) for i in range(32)]
            return await asyncio.gather(*calls)

    before = len(api.engine.batch_sizes)
    replies = asyncio.run(burst())
    assert [r.status_code for r in replies] == [200] * 64
    assert max(api.engine.batch_sizes[before:]) > 16  # decoded together, not one by one


def test_a_streaming_client_that_leaves_frees_its_row(api):
    generator = api.engine.models["qwen_instruct"].generator
    cancelled = api.worker.counts["cancelled"]
    with httpx.stream("POST", f"http://127.0.0.1:{api.port}/v1/chat/completions", json={**long_body(1900),
                                                                                          "stream": True},
                      headers={"Authorization": f"Bearer {CHAT_KEY}"}, timeout=30) as reply:
        for index, _ in enumerate(reply.iter_lines()):
            if index > 3:
                break  # the client hangs up mid-answer
    wait_until(lambda: generator.active == 0, 10)
    wait_until(lambda: api.worker.counts["cancelled"] == cancelled + 1, 10)


def test_a_401_and_health_do_not_wait_for_the_engine(api):
    long = threading.Thread(target=post, args=(api, "/v1/chat/completions", long_body(1900)))
    long.start()
    wait_until(lambda: api.engine.models["qwen_instruct"].generator.active == 1, 10, interval=0.005)
    with httpx.Client(base_url=f"http://127.0.0.1:{api.port}") as session:
        begun = time.monotonic()
        statuses = [session.post("/v1/chat/completions", json={}, headers={"Authorization": "Bearer x"}).status_code
                    for _ in range(10)]
        statuses += [session.get("/health").status_code for _ in range(10)]
        spent = time.monotonic() - begun
    busy = api.engine.models["qwen_instruct"].generator.active == 1
    long.join(60)
    assert statuses == [401] * 10 + [200] * 10 and busy and spent < 1.0


def test_another_model_waiting_is_not_starved_by_a_stream_of_requests(tiny_chat):
    both = start_api(tiny_chat, base_model=str(tiny_chat), max_batch=8, batch_wait_ms=0)
    stop = threading.Event()

    def flood(tokens):
        while not stop.is_set():
            post(both, "/chat", {"message": "more", "max_tokens": tokens, "model": "qwen_instruct"})

    # Lengths that differ, so that some row is always decoding: the run never ends by itself.
    flooders = [threading.Thread(target=flood, args=(12 + 9 * i,)) for i in range(6)]
    try:
        for t in flooders:
            t.start()
        wait_until(lambda: both.engine.models["qwen_instruct"].generator.active > 2, 10, interval=0.005)
        begun = time.monotonic()
        reply = post(both, "/generate", {"prompt": "Once upon a time", "max_tokens": 3})
        assert reply.json()["model"] == "qwen_base" and time.monotonic() - begun < 5
    finally:
        stop.set()
        for t in flooders:
            t.join(30)
        both.stop()
