"""The chat worker on a tiny random-weight Qwen2, over real HTTP and the real Redis."""

import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from shared.ops.engine_settings import ChatSettings
from shared.ops.settings import Settings
from shared.source import keys
from shared.source.chat_client import request_enhancement, request_reply
from tests.conftest import TEST_REDIS_URL
from tests.helpers import running_worker, wait_until
from workers.chat.conversation import BadRequest, fit_to_context, messages_from_request
from workers.chat.engine import ChatEngine
from workers.chat.generator import Request, TextGenerator
from workers.registry import build_worker

CHAT_KEY, WAN_KEY = "chat-key-0123456789", "wan-key-9876543210"


class ChatServer:
    """A chat worker (the fleet's runtime, HTTP source only) on a thread, and where it listens."""

    def __init__(self, tiny_chat, settings_values=None, **chat_values):
        values = dict(chat_api_key=CHAT_KEY, wan_api_key=WAN_KEY, max_batch=8, batch_wait_ms=30, consume_queue=False)
        values.update(chat_values)
        chat = ChatSettings(**values)
        settings = Settings(redis_url=TEST_REDIS_URL, worker_id="chat-test", chat=chat, **(settings_values or {}))
        self.engine = ChatEngine(str(tiny_chat), chat)
        self.worker = build_worker(self.engine, settings, health_port=0, install_signal_handlers=False)
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.worker.state == "ready" and self.worker.http is not None, 60)
        self.port = self.worker.http.port

    def stop(self):
        self.worker.stop(grace=5)
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


def start_api(tiny_chat, **settings):
    return ChatServer(tiny_chat, **settings)


@pytest.fixture(scope="module")
def api(tiny_chat):
    server = start_api(tiny_chat)
    yield server
    server.stop()


def post(api, path, body, key=CHAT_KEY, raw=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(f"http://127.0.0.1:{api.port}{path}", content=content, headers=headers, timeout=30)


def test_v2_messages_request(api):
    reply = post(api, "/chat", {"messages": [{"role": "system", "content": "be brief"},
                                             {"role": "user", "content": "hello"}], "max_tokens": 6})
    body = reply.json()
    assert reply.status_code == 200 and body["success"] is True
    assert isinstance(body["response"], str) and 0 < body["tokens_generated"] <= 6
    assert body["model"] == "qwen_instruct" and body["generation_time"] >= 0 and body["worker_id"] == "chat-test"


def test_v1_message_history_request(api):
    body = {"message": "and now?", "system_prompt": "you are Ava",
            "conversation_history": [{"sender": "user", "content": "hi"}, {"sender": "character", "content": "hey"}],
            "max_tokens": 4}
    reply = post(api, "/chat", body)
    assert reply.status_code == 200 and reply.json()["success"]
    assert messages_from_request(body) == [
        {"role": "system", "content": "you are Ava"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hey"}, {"role": "user", "content": "and now?"}]


def test_enhance_both_shapes(api):
    v1 = post(api, "/enhance", {"prompt": "a cat", "job_type": "video7b_fast_enhanced", "max_tokens": 5}).json()
    v2 = post(api, "/enhance", {"messages": [{"role": "user", "content": "a dog"}], "max_tokens": 5}).json()
    assert v1["success"] and v1["enhanced_prompt"] and v1["original_prompt"] == "a cat"
    assert v2["success"] and v2["original_prompt"] == "a dog"


def test_auth_accepts_both_keys_and_refuses_the_rest(api):
    good = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    assert post(api, "/chat", good, key=CHAT_KEY).status_code == 200
    assert post(api, "/chat", good, key=WAN_KEY).status_code == 200
    assert post(api, "/chat", good, key="wrong").status_code == 401
    assert post(api, "/chat", good, key=None).status_code == 401  # CHAT_ALLOW_UNAUTHENTICATED_CHAT is off by default
    assert post(api, "/generate", {"prompt": "x"}, key=None).status_code == 401
    assert post(api, "/enhance", {"prompt": "a cat", "max_tokens": 2}, key=None).status_code == 200  # allowed by default
    assert post(api, "/enhance", {"prompt": "a cat", "max_tokens": 2}, key="wrong").status_code == 401


def test_unauthenticated_enhance_can_be_switched_off(tiny_chat):
    strict = start_api(tiny_chat, allow_unauthenticated_enhance=False)
    try:
        assert post(strict, "/enhance", {"prompt": "a cat", "max_tokens": 2}, key=None).status_code == 401
        assert post(strict, "/enhance", {"prompt": "a cat", "max_tokens": 2}, key=WAN_KEY).status_code == 200
    finally:
        strict.stop()


def test_chat_health_answers_as_health_does_for_the_2025_08_playground_chat(api):
    """The 2025-08 playground-chat probes GET /chat/health (with the WAN key) before it sends /chat."""
    url = f"http://127.0.0.1:{api.port}"
    probe = httpx.get(f"{url}/chat/health", headers={"Authorization": f"Bearer {WAN_KEY}"}, timeout=10)
    health = httpx.get(f"{url}/health", timeout=10)
    assert probe.status_code == health.status_code == 200
    assert probe.json()["status"] == health.json()["status"] == "ready" and probe.json()["healthy"] is True
    assert httpx.get(f"{url}/chat/health", timeout=10).status_code == 200  # a probe needs no key, as /health


def test_keyless_chat_is_refused_unless_its_allowance_is_on(tiny_chat):
    """The 2026-04 scene-narrative posts /chat with no Authorization header: refused by default;
    CHAT_ALLOW_UNAUTHENTICATED_CHAT opens /chat alone, and only to callers that send no key."""
    scene = {"messages": [{"role": "system", "content": "SCENE CONTEXT: a harbour at dusk"},
                          {"role": "user", "content": "Generate the scene narrative now."}],
             "max_tokens": 4, "temperature": 0.8, "top_p": 0.9, "frequency_penalty": 0.1, "presence_penalty": 0.1}
    opened = start_api(tiny_chat, allow_unauthenticated_chat=True)
    try:
        answer = post(opened, "/chat", scene, key=None)
        assert answer.status_code == 200 and isinstance(answer.json()["response"], str)
        # The 2025-08 roleplay-chat: no key either, and one prompt holding character and history.
        roleplay = post(opened, "/chat", {"prompt": "You are Mara.\n\nUser's message: hello", "content_tier": "sfw",
                                          "model": "qwen_instruct", "max_tokens": 4}, key=None)
        assert roleplay.status_code == 200 and roleplay.json()["prompt_tokens"] > 5
        assert post(opened, "/chat", {"prompt": " "}, key=None).status_code == 400
        assert post(opened, "/chat", {"prompt": ["x"]}, key=None).status_code == 400
        assert post(opened, "/chat", scene, key="wrong").status_code == 401  # a wrong key is never let through
        assert post(opened, "/generate", {"prompt": "x"}, key=None).status_code == 401
        v1 = httpx.post(f"http://127.0.0.1:{opened.port}/v1/chat/completions", json=scene, timeout=30)
        assert v1.status_code == 401
    finally:
        opened.stop()


def test_keyless_generate_is_refused_unless_its_allowance_is_on(tiny_chat):
    """The 2025-08 enhance-prompt sends qwen_base work to the WAN worker's URL as `{inputs,
    parameters}` with no key and reads `generated_text`: refused by default;
    CHAT_ALLOW_UNAUTHENTICATED_GENERATE opens /generate alone, and only to callers that send no key."""
    legacy = {"inputs": "Enhance this prompt: \"a cat\"\n\nEnhanced version:",
              "parameters": {"max_new_tokens": 4, "temperature": 0.7, "top_p": 0.9, "do_sample": True,
                             "return_full_text": False}}
    opened = start_api(tiny_chat, allow_unauthenticated_generate=True)
    try:
        answer = post(opened, "/generate", legacy, key=None)
        assert answer.status_code == 200 and isinstance(answer.json()["generated_text"], str)
        assert post(opened, "/generate", legacy, key="wrong").status_code == 401
        assert post(opened, "/chat", {"messages": [{"role": "user", "content": "x"}]}, key=None).status_code == 401
    finally:
        opened.stop()


def test_bad_requests_get_clear_4xx_and_never_crash_the_server(api):
    assert post(api, "/chat", None, raw=b"{not json").status_code == 400
    assert post(api, "/chat", None, raw=b"[1, 2]").json()["error"] == "body must be a JSON object"
    assert "max_tokens must be a number" in post(api, "/chat", {"messages": [{"role": "user", "content": "x"}],
                                                                "max_tokens": "lots"}).json()["error"]
    assert "role of system, user or assistant" in post(api, "/chat", {"messages": [{"role": "wizard"}]}).json()["error"]
    assert post(api, "/chat", {"messages": "hello"}).status_code == 400
    assert post(api, "/chat", {"temperature": 5, "message": "x"}).status_code == 400
    assert post(api, "/chat", None, raw=b"x" * (2 * 1024 * 1024)).status_code == 413
    assert post(api, "/nowhere", {}).status_code == 404
    assert post(api, "/chat", {"message": "still alive?", "max_tokens": 2}).status_code == 200


def test_no_route_returns_secrets_or_the_environment(api, monkeypatch):
    texts = [httpx.get(f"http://127.0.0.1:{api.port}{p}").text for p in ("/health", "/worker/info")]
    texts.append(post(api, "/chat", {"message": "x", "max_tokens": 1}, key="wrong").text)
    for text in texts:
        assert CHAT_KEY not in text and WAN_KEY not in text and "PATH" not in text


def test_the_oldest_turns_are_dropped_and_the_newest_kept():
    messages = [{"role": "system", "content": "S"}] + [{"role": "user", "content": f"turn {i} " * 10} for i in range(6)]
    kept, dropped = fit_to_context(messages, lambda ms: sum(len(m["content"]) for m in ms), budget=200)
    assert kept[0]["content"] == "S" and kept[-1] == messages[-1] and dropped == 4
    with pytest.raises(BadRequest):
        fit_to_context(messages, lambda ms: sum(len(m["content"]) for m in ms), budget=10)


def test_a_long_conversation_is_trimmed_to_the_context(tiny_chat):
    small = start_api(tiny_chat, max_context_tokens=200)
    try:
        history = [{"sender": "user" if i % 2 == 0 else "character", "content": "lorem ipsum " * 4} for i in range(10)]
        body = post(small, "/chat", {"message": "the newest", "conversation_history": history, "max_tokens": 8}).json()
        assert body["success"] and body["dropped_messages"] > 0 and body["prompt_tokens"] + 8 <= 200
    finally:
        small.stop()


def test_batched_greedy_output_equals_single_output(tiny_chat):
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat)
    generator = TextGenerator(AutoModelForCausalLM.from_pretrained(tiny_chat).eval(), tokenizer, "cpu")
    prompts = ["hi", "tell me a much longer story about the sea, please", "x y z"]
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             for p in prompts]
    requests = [Request(tokenizer(t).input_ids, max_tokens=10, temperature=0) for t in texts]
    together = generator.generate(requests)
    for request, completion in zip(requests, together, strict=True):
        alone = generator.generate([request])[0]
        assert completion.token_ids == alone.token_ids and len(alone.token_ids) == 10
    prompt = torch.tensor([requests[1].prompt_ids])
    reference = generator.model.generate(prompt, max_new_tokens=10, do_sample=False)[0, prompt.shape[1]:].tolist()
    assert together[1].token_ids == reference  # and it is what transformers' own greedy search gives


def test_concurrent_requests_are_decoded_together_and_seeds_reproduce(api):
    before = len(api.engine.batch_sizes)
    bodies = [{"message": f"question {i}", "max_tokens": 6, "temperature": 0.9, "seed": 42} for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        first = list(pool.map(lambda b: post(api, "/chat", b).json()["response"], bodies))
    sizes = api.engine.batch_sizes[before:]
    assert max(sizes) > 1
    again = [post(api, "/chat", b).json()["response"] for b in bodies[:2]]
    assert again == first[:2]


def test_queued_requests_and_the_request_reply_helper(tiny_chat, make_settings, redis_client):
    settings = make_settings()
    engine = ChatEngine(str(tiny_chat), ChatSettings(max_batch=4, batch_wait_ms=20))
    with running_worker(settings, engine=engine, health_port=0) as worker:
        enhanced = request_enhancement(redis_client, "v1", "a dog on a beach", "video7b_fast_enhanced", timeout=20)
        assert isinstance(enhanced, str) and enhanced
        reply = request_reply(redis_client, "v1", "chat", {"message": "hi", "max_tokens": 3}, timeout=20)
        assert reply["success"] and reply["tokens_generated"] <= 3
        bad = request_reply(redis_client, "v1", "translate", {"text": "hi"}, timeout=20)
        assert bad == {"id": bad["id"], "success": False, "error_type": "bad_request",
                       "error": "chat_queue job type must be chat, enhance or generate, got 'translate'"}
        assert redis_client.llen(keys.CHAT_QUEUE) == 0
        wait_until(lambda: redis_client.llen(keys.processing(settings.worker_id, keys.CHAT_QUEUE)) == 0, 10)
        # The same counting as every queue (counted just after the reply goes out).
        wait_until(lambda: worker.counts["completed"] == 2 and worker.counts["failed"] == 1, 10)


def test_enhancement_times_out_to_none_and_takes_its_request_back(redis_client):
    assert request_enhancement(redis_client, "v2", "a cat", "image7b_fast_enhanced", timeout=1) is None
    assert redis_client.llen(keys.CHAT_QUEUE) == 0


def test_the_2025_08_backend_bodies_are_served(api):
    hub = post(api, "/enhance", {"prompt": "a cat", "job_type": "image7b_fast_enhanced",
                                 "model": "Qwen/Qwen2.5-7B-Instruct", "max_tokens": 4})
    assert hub.status_code == 200 and hub.json()["success"] and hub.json()["model"] == "qwen_instruct"
    assert "model_note" not in hub.json()
    unknown = post(api, "/enhance", {"prompt": "a cat", "model": "gpt-4o", "max_tokens": 4}).json()
    assert unknown["success"] and unknown["model"] == "qwen_instruct" and unknown["requested_model"] == "gpt-4o"
    assert "gpt-4o" in unknown["model_note"] and "qwen_instruct" in unknown["model_note"]
    chat = post(api, "/chat", {"message": "hi", "model": "qwen2.5-7b-instruct", "max_tokens": 2}).json()
    assert chat["success"] and "model_note" not in chat
    generated = post(api, "/generate", {"inputs": "Once upon a time",
                                        "parameters": {"max_new_tokens": 3, "do_sample": False, "top_p": 0.9}})
    body = generated.json()
    assert generated.status_code == 200 and body["success"] and 0 < body["tokens_generated"] <= 3
    assert body["generated_text"] == body["response"]
    assert "CHAT_BASE_MODEL" in body["model_note"]  # no base model here: said, not refused
    again = post(api, "/generate", {"inputs": "Once upon a time",
                                    "parameters": {"max_new_tokens": 3, "do_sample": False,
                                                   "return_full_text": True}}).json()
    assert again["generated_text"] == "Once upon a time" + body["response"]  # greedy: the same continuation


def test_base_model_is_served_on_request_when_configured(tiny_chat):
    both = start_api(tiny_chat, base_model=str(tiny_chat))
    try:
        assert post(both, "/chat", {"message": "x", "model": "qwen_base", "max_tokens": 2}).json()["model"] == "qwen_base"
        assert post(both, "/generate", {"prompt": "Once upon a time", "max_tokens": 3}).json()["model"] == "qwen_base"
        hub = post(both, "/chat", {"message": "x", "model": "Qwen/Qwen2.5-7B", "max_tokens": 2}).json()
        assert hub["model"] == "qwen_base" and "model_note" not in hub
    finally:
        both.stop()


def test_on_runpod_the_worker_announces_its_url(tiny_chat, make_settings, backend, monkeypatch):
    monkeypatch.setenv("RUNPOD_POD_ID", "abc123")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = ChatEngine(str(tiny_chat), ChatSettings(consume_queue=False))
    with running_worker(make_settings(), engine=engine, health_port=port):
        wait_until(lambda: backend.function_calls, 30)
        name, body, auth = backend.function_calls[0]
        assert name == "register-chat-worker"
        assert body == {"worker_url": f"https://abc123-{port}.proxy.runpod.net", "auto_registered": True}
        assert auth == "Bearer test-service-key"
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200


def test_random_weights_chat_model_builds_from_a_config_folder(tiny_chat):
    engine = ChatEngine(str(tiny_chat), ChatSettings(consume_queue=False), random_weights=True)
    engine.setup("cpu")
    model = engine.models["qwen_instruct"]
    assert model.generator.model.config.hidden_size == 32 and model.tokenizer.eos_token == "<|im_end|>"
    assert engine.backend == "transformers"  # CHAT_BACKEND=auto on a CPU


def test_selecting_vllm_without_it_installed_fails_clearly(tiny_chat, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    engine = ChatEngine(str(tiny_chat), ChatSettings(backend="vllm"))
    with pytest.raises(RuntimeError, match="CHAT_BACKEND=vllm but the vllm package is not installed"):
        engine.setup("cpu")
