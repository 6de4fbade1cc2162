"""The chat worker's core: loaded models, their batchers, and the chat / enhance / generate requests.

HTTP requests and queued jobs both end up in `ChatService`, which turns a request body into token
ids, hands them to the model's batcher, and formats the reply. Concurrent requests are decoded
together: the batcher waits a few milliseconds for company, then runs up to CHAT_MAX_BATCH rows.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shared.gpu import resolve_dtype
from shared.logging import get_logger
from workers.chat.config import ChatSettings
from workers.chat.conversation import BadRequest, fit_to_context, messages_from_request
from workers.chat.generator import Completion, Request, TextGenerator

log = get_logger(component="chat")


class Batcher:
    """Collects concurrent requests for one model and decodes them together on one thread."""

    def __init__(self, generator: TextGenerator, max_batch: int, wait_ms: int):
        self.generator = generator
        self.max_batch = max_batch
        self.wait = wait_ms / 1000
        self._queue: queue.Queue = queue.Queue()
        self.batch_sizes: list[int] = []
        self._thread = threading.Thread(target=self._loop, name="chat-batcher", daemon=True)
        self._thread.start()

    def submit(self, request: Request) -> Future:
        future: Future = Future()
        self._queue.put((request, future))
        return future

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            deadline = time.monotonic() + self.wait
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            self.batch_sizes.append(len(batch))
            try:
                completions = self.generator.generate([r for r, _ in batch])
                for (_, future), completion in zip(batch, completions, strict=True):
                    future.set_result(completion)
            except Exception as exc:  # a failed batch fails its requests, never the worker
                log.exception("generation_failed", batch=len(batch))
                for _, future in batch:
                    future.set_exception(exc)


@dataclass
class LoadedModel:
    name: str
    tokenizer: Any
    generator: TextGenerator
    batcher: Batcher

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(self.prompt_ids(messages))


def _number(body: dict, name: str, default, low, high, kind=float):
    value = body.get(name, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"{name} must be a number")
    if not low <= value <= high:
        raise BadRequest(f"{name}={value} is outside [{low}, {high}]")
    return kind(value)


def _from_inputs_parameters(body: dict) -> dict:
    """The 2025-08 `/generate` body (text-generation-inference style) in this service's terms."""
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("parameters must be an object")
    mapped = {"prompt": body.get("inputs")}
    if "model" in body:
        mapped["model"] = body["model"]
    names = {"max_new_tokens": "max_tokens", "max_tokens": "max_tokens", "temperature": "temperature",
             "top_p": "top_p", "repetition_penalty": "repetition_penalty", "seed": "seed",
             "return_full_text": "return_full_text"}
    for theirs, ours in names.items():
        if parameters.get(theirs) is not None:
            mapped[ours] = parameters[theirs]
    if parameters.get("do_sample") is False:
        mapped["temperature"] = 0.0  # greedy
    return mapped


class ChatService:
    def __init__(self, settings: ChatSettings, model_path: str, device: str = "cuda"):
        self.settings = settings
        self.model_path = model_path
        self.device = device
        self.models: dict[str, LoadedModel] = {}
        self.ready = False
        self.started_at = time.time()

    # -------------------------------------------------------------------------- setup

    def load(self) -> None:
        self.models["qwen_instruct"] = self._load("qwen_instruct", self.model_path)
        if self.settings.base_model:
            self.models["qwen_base"] = self._load("qwen_base", self.settings.base_model)
        for model in self.models.values():  # warm-up: the first real request should not pay for it
            model.generator.generate([Request(model.prompt_ids([{"role": "user", "content": "hi"}]), max_tokens=2,
                                              temperature=0)])
        self.ready = True

    def _load(self, name: str, path: str) -> LoadedModel:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError("--device cuda but no CUDA GPU is visible")
        dtype = resolve_dtype(self.settings.dtype, self.device)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if self.settings.backend == "vllm":
            from workers.chat.vllm_backend import VLLMGenerator

            generator = VLLMGenerator(path, tokenizer, str(dtype).removeprefix("torch."),
                                      self.settings.max_context_tokens, self.settings.vllm_gpu_memory_utilization)
            batcher = Batcher(generator, self.settings.max_batch, self.settings.batch_wait_ms)
            log.info("model_loaded", model=name, backend="vllm")
            return LoadedModel(name, tokenizer, generator, batcher)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True).to(self.device).eval()
        generator = TextGenerator(model, tokenizer, self.device, self.settings.max_context_tokens)
        batcher = Batcher(generator, self.settings.max_batch, self.settings.batch_wait_ms)
        log.info("model_loaded", model=name, parameters=sum(p.numel() for p in model.parameters()))
        return LoadedModel(name, tokenizer, generator, batcher)

    def close(self) -> None:
        for model in self.models.values():
            model.batcher.stop()

    # ----------------------------------------------------------------------- requests

    def _model(self, body: dict, default: str = "qwen_instruct") -> tuple[LoadedModel, dict[str, Any]]:
        """The model that serves a request, and what the reply says about the choice.

        `model` may be a served name (`qwen_instruct`, `qwen_base`) or a hub id naming one (the
        2025-08 backend sends `Qwen/Qwen2.5-7B-Instruct`). Anything else, or the base model when
        none is loaded, is served by the instruct model and the reply says so: never a 400 for a
        body the real backend sends.
        """
        wanted = body.get("model")
        name = self._served_name(wanted) if wanted else default
        model = self.models.get(name or "") or self.models["qwen_instruct"]
        if not wanted or model.name == name:
            return model, {}
        return model, {"requested_model": str(wanted)[:200],
                       "model_note": f"model {str(wanted)[:80]!r} is not served here; answered by {model.name}"}

    def _served_name(self, wanted: Any) -> str | None:
        if not isinstance(wanted, str):
            return None
        key = wanted.strip().lower()
        if key in ("qwen_instruct", "qwen_base"):
            return key
        names = {"qwen_instruct": (self.settings.model_id, self.model_path),
                 "qwen_base": (self.settings.base_model_id, self.settings.base_model or "")}
        for name, (hub_id, path) in names.items():
            aliases = {hub_id.lower(), hub_id.lower().rsplit("/", 1)[-1], Path(path).name.lower()} - {""}
            if key in aliases or key.rsplit("/", 1)[-1] in aliases:
                return name
        return None

    def _max_tokens(self, model: LoadedModel, body: dict, default: int | None = None) -> int:
        """The request's max_tokens; when absent, the default but never more than half the context."""
        fallback = min(default or self.settings.default_max_tokens, model.generator.max_context // 2)
        return _number(body, "max_tokens", fallback, 1, self.settings.max_tokens_limit, int)

    def _request(self, body: dict, prompt_ids: list[int], max_tokens: int, default_temperature: float = 0.7) -> Request:
        return Request(
            prompt_ids=prompt_ids,
            max_tokens=max_tokens,
            temperature=_number(body, "temperature", default_temperature, 0.0, 2.0),
            top_p=_number(body, "top_p", 0.9, 0.01, 1.0),
            repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.5, 2.0),
            presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
            seed=_number(body, "seed", None, 0, 2**63 - 1, int) if body.get("seed") is not None else None,
        )

    def _run(self, model: LoadedModel, request: Request) -> Completion:
        future = model.batcher.submit(request)
        return future.result(timeout=self.settings.request_timeout_seconds)

    def _fit(self, model: LoadedModel, messages, max_tokens: int) -> tuple[list[int], int]:
        budget = model.generator.max_context - max_tokens
        if budget <= 0:
            raise BadRequest(f"max_tokens={max_tokens} leaves no room for the prompt in a {model.generator.max_context}-token context")
        kept, dropped = fit_to_context(messages, model.count_tokens, budget)
        return model.prompt_ids(kept), dropped

    def _reply(self, model: LoadedModel, completion: Completion, started: float, choice: dict[str, Any],
               **extra) -> dict[str, Any]:
        return {
            "success": True,
            "generation_time": round(time.perf_counter() - started, 3),
            "tokens_generated": len(completion.token_ids),
            "prompt_tokens": completion.prompt_tokens,
            "finish_reason": completion.finish_reason,
            "model": model.name,
            **choice,
            **extra,
        }

    def chat(self, body: dict) -> dict[str, Any]:
        started = time.perf_counter()
        model, choice = self._model(body)
        max_tokens = self._max_tokens(model, body)
        ids, dropped = self._fit(model, messages_from_request(body), max_tokens)
        completion = self._run(model, self._request(body, ids, max_tokens))
        text = model.tokenizer.decode(completion.token_ids, skip_special_tokens=True).strip()
        return self._reply(model, completion, started, choice, response=text, dropped_messages=dropped)

    def enhance(self, body: dict) -> dict[str, Any]:
        started = time.perf_counter()
        model, choice = self._model(body)
        if isinstance(body.get("messages"), list):
            messages = messages_from_request(body)
            original = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        else:
            original = body.get("prompt")
            if not isinstance(original, str) or not original.strip():
                raise BadRequest("enhance needs `prompt` (or `messages`)")
            job_type = str(body.get("job_type") or "")
            video = "video" in job_type
            system = body.get("system_prompt") or self.settings.enhance_system_prompt.format(
                media="video" if video else "image", motion=", motion" if video else "")
            messages = [{"role": "system", "content": str(system)}, {"role": "user", "content": original}]
        max_tokens = self._max_tokens(model, body, default=256)  # a prompt, not an essay
        ids, _ = self._fit(model, messages, max_tokens)
        completion = self._run(model, self._request(body, ids, max_tokens))
        text = model.tokenizer.decode(completion.token_ids, skip_special_tokens=True).strip()
        return self._reply(model, completion, started, choice, enhanced_prompt=text or original,
                           original_prompt=original, enhancement_strategy=f"{model.name}_chat")

    def generate(self, body: dict) -> dict[str, Any]:
        """Plain continuation of `prompt`, no chat template (the base model's use).

        Also takes the 2025-08 body, `{inputs, parameters: {max_new_tokens, temperature, top_p,
        do_sample, repetition_penalty, return_full_text, seed}}`, and answers it with
        `generated_text` beside `response`.
        """
        started = time.perf_counter()
        body = _from_inputs_parameters(body) if "inputs" in body and "prompt" not in body else body
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise BadRequest("generate needs a non-empty `prompt` (or `inputs`)")
        model, choice = self._model(body, default="qwen_base")
        if "model" not in body and model.name != "qwen_base":
            choice = {"model_note": "no base model is configured (CHAT_BASE_MODEL); answered by qwen_instruct"}
        ids = model.tokenizer(prompt, add_special_tokens=False).input_ids
        max_tokens = self._max_tokens(model, body)
        if len(ids) + max_tokens > model.generator.max_context:
            raise BadRequest(f"prompt of {len(ids)} tokens plus max_tokens={max_tokens} exceeds the context")
        completion = self._run(model, self._request(body, ids, max_tokens))
        text = model.tokenizer.decode(completion.token_ids, skip_special_tokens=True)
        generated = prompt + text if body.get("return_full_text") is True else text
        return self._reply(model, completion, started, choice, response=text, generated_text=generated)

    def info(self) -> dict[str, Any]:
        return {
            "models": sorted(self.models), "max_batch": self.settings.max_batch, "device": self.device,
            "max_context_tokens": {n: m.generator.max_context for n, m in self.models.items()},
            "uptime_seconds": round(time.time() - self.started_at, 1), "ready": self.ready,
        }
