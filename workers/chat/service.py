"""Chat decode and replies: a request body (either backend shape) → the engine's input, and back.

HTTP requests and `chat_queue` jobs both come here: `plan` turns a body into token ids that fit
the model's context plus per-row sampling settings (a `ChatInput` for the engine), and `reply`
formats what the engine generated the way the backend reads it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.decode.decoder import Plan
from shared.ops.engine_settings import ChatSettings
from shared.ops.numbers import NumberRefused, read_number
from workers.chat.conversation import BadRequest, fit_to_context, messages_from_request
from workers.chat.engine import ChatEngine, ChatInput, LoadedModel
from workers.chat.generator import Completion, Request

KINDS = ("chat", "enhance", "generate")


@dataclass(frozen=True)
class ChatJob:
    """A chat request as the runtime carries it: from the queue (with a reply key) or from HTTP."""

    id: str
    kind: str  # chat | enhance | generate
    body: dict
    reply_to: str | None = None
    type: str = "chat"
    stop: Callable[[], bool] | None = None  # true once the caller is gone or out of time: decode stops


def _number(body: dict, name: str, default, low, high, kind=float):
    value = body.get(name, default)
    if value is None:
        value = default
    try:
        return kind(read_number(name, value, whole=kind is int, low=low, high=high, text_ok=False))
    except NumberRefused as exc:
        raise BadRequest(str(exc)) from None


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


class ChatRequests:
    """Decode for the chat engine (needs its tokenizers, so it is built after `setup`)."""

    def __init__(self, engine: ChatEngine, settings: ChatSettings):
        self.engine = engine
        self.settings = settings
        self.started_at = time.time()

    def plan(self, job: ChatJob) -> Plan:
        if job.kind not in KINDS:
            raise BadRequest(f"chat_queue job type must be chat, enhance or generate, got {str(job.kind)[:40]!r}")
        started = time.perf_counter()
        decode = {"chat": self._chat, "enhance": self._enhance, "generate": self._generate}[job.kind]
        input_, facts = decode(job.id, job.body, job.stop)
        return Plan(job=job, input=input_, facts={**facts, "kind": job.kind, "started": started})

    def model_names(self) -> list[str]:
        """The models this worker serves, by their served names."""
        return sorted(self.engine.models)

    def tokenizer(self, name: str) -> Any:
        return self.engine.models[name].tokenizer

    def reply(self, plan: Plan, completion: Completion) -> dict[str, Any]:
        facts = plan.facts
        model = self.engine.models[plan.input.model]
        text = model.tokenizer.decode(completion.token_ids, skip_special_tokens=True)
        reply = {"success": True, "generation_time": round(time.perf_counter() - facts["started"], 3),
                 "tokens_generated": len(completion.token_ids), "prompt_tokens": completion.prompt_tokens,
                 "finish_reason": completion.finish_reason, "model": model.name, **facts["choice"]}
        if facts["kind"] == "chat":
            reply.update(response=text.strip(), dropped_messages=facts["dropped"])
        elif facts["kind"] == "enhance":
            original = facts["original"]
            reply.update(enhanced_prompt=text.strip() or original, original_prompt=original,
                         enhancement_strategy=f"{model.name}_chat")
        else:
            reply.update(response=text, generated_text=facts["prompt"] + text if facts["full_text"] else text)
        return reply

    # ------------------------------------------------------------------------ requests

    def _model(self, body: dict, default: str = "qwen_instruct") -> tuple[LoadedModel, dict[str, Any]]:
        """The model that serves a request, and what the reply says about the choice.

        `model` may be a served name (`qwen_instruct`, `qwen_base`) or a hub id naming one (the
        2025-08 backend sends `Qwen/Qwen2.5-7B-Instruct`). Anything else, or the base model when
        none is loaded, is served by the instruct model and the reply says so: never a 400 for a
        body the real backend sends.
        """
        models = self.engine.models
        wanted = body.get("model")
        name = self._served_name(wanted) if wanted else default
        model = models.get(name or "") or models["qwen_instruct"]
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
        names = {"qwen_instruct": (self.settings.model_id, self.engine.model_path),
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
            frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
            seed=_number(body, "seed", None, 0, 2**63 - 1, int) if body.get("seed") is not None else None,
            ignore_eos=body.get("ignore_eos") is True,
        )

    def _fit(self, model: LoadedModel, messages, max_tokens: int, stop) -> tuple[list[int], int]:
        budget = model.generator.max_context - max_tokens
        if budget <= 0:
            raise BadRequest(f"max_tokens={max_tokens} leaves no room for the prompt in a "
                             f"{model.generator.max_context}-token context")
        kept, dropped = fit_to_context(messages, model.count_tokens, budget, model.count_text, stop)
        return model.prompt_ids(kept), dropped

    def _chat(self, request_id: str, body: dict, stop=None) -> tuple[ChatInput, dict[str, Any]]:
        model, choice = self._model(body)
        max_tokens = self._max_tokens(model, body)
        ids, dropped = self._fit(model, messages_from_request(body, self.settings.max_messages), max_tokens, stop)
        return ChatInput(request_id, model.name, self._request(body, ids, max_tokens)), {"choice": choice,
                                                                                          "dropped": dropped}

    def _enhance(self, request_id: str, body: dict, stop=None) -> tuple[ChatInput, dict[str, Any]]:
        model, choice = self._model(body)
        if isinstance(body.get("messages"), list):
            messages = messages_from_request(body, self.settings.max_messages)
            original = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        else:
            original = body.get("prompt")
            if not isinstance(original, str) or not original.strip():
                raise BadRequest("enhance needs `prompt` (or `messages`)")
            video = "video" in str(body.get("job_type") or "")
            system = body.get("system_prompt") or self.settings.enhance_system_prompt.format(
                media="video" if video else "image", motion=", motion" if video else "")
            messages = [{"role": "system", "content": str(system)}, {"role": "user", "content": original}]
        max_tokens = self._max_tokens(model, body, default=256)  # a prompt, not an essay
        ids, _ = self._fit(model, messages, max_tokens, stop)
        return ChatInput(request_id, model.name, self._request(body, ids, max_tokens)), {"choice": choice,
                                                                                          "original": original}

    def _generate(self, request_id: str, body: dict, stop=None) -> tuple[ChatInput, dict[str, Any]]:
        """Plain continuation of `prompt`, no chat template (the base model's use).

        Also takes the 2025-08 body, `{inputs, parameters: {max_new_tokens, temperature, top_p,
        do_sample, repetition_penalty, return_full_text, seed}}`, and answers it with
        `generated_text` beside `response`.
        """
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
        facts = {"choice": choice, "prompt": prompt, "full_text": body.get("return_full_text") is True}
        return ChatInput(request_id, model.name, self._request(body, ids, max_tokens)), facts

    def public_id(self, name: str) -> str:
        """The hub id a served model answers to (what /v1 reports as `model`)."""
        return self.settings.base_model_id if name == "qwen_base" else self.settings.model_id

    def info(self) -> dict[str, Any]:
        return {
            "models": sorted(self.engine.models), "max_batch": self.settings.max_batch, "device": self.engine.device,
            "max_context_tokens": {n: m.generator.max_context for n, m in self.engine.models.items()},
            "uptime_seconds": round(time.time() - self.started_at, 1), "ready": bool(self.engine.models),
        }
