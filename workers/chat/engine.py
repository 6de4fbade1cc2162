"""The chat engine: Qwen2.5 (instruct, and base when configured) generating for batches of requests.

An engine of the same runtime as SDXL and WAN, and a continuous one: `run` keeps decoding while
requests (HTTP and `chat_queue` alike) join between steps, up to CHAT_MAX_BATCH rows, and each
leaves the moment it is done, so a 4-token enhancement never waits behind a 600-token chat. Each
row keeps its own sampling settings, length and seed. Decode (workers/chat/service.py) has
already turned a request into token ids that fit the model's context; the generator
(workers/chat/generator.py, or vLLM) owns the batch between steps.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import torch

from shared.engine import Engine, RunContext
from shared.engine_settings import ChatSettings
from shared.errors import JobError
from shared.gpu import resolve_dtype
from shared.logging import get_logger
from workers.chat.generator import Request, TextGenerator

log = get_logger(component="chat")


@dataclass(frozen=True)
class ChatInput:
    """One request as the model sees it: which model, and the tokens and sampling of one row."""

    id: str
    model: str  # qwen_instruct | qwen_base
    request: Request
    count: int = 1


@dataclass
class LoadedModel:
    name: str
    tokenizer: Any
    generator: Any  # TextGenerator, or VLLMGenerator with CHAT_BACKEND=vllm

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(self.prompt_ids(messages))


class ChatEngine(Engine):
    name = "chat"
    continuous = True

    def __init__(self, model: str, config: ChatSettings | None = None):
        self.model_path = model
        self.config = config or ChatSettings()
        self.max_batch_images = self.config.max_batch
        self.batch_wait_ms = self.config.batch_wait_ms
        self.models: dict[str, LoadedModel] = {}
        self.device = "cpu"
        self.batch_sizes: list[int] = []  # the most rows decoded together in each run, for tests and metrics

    def setup(self, device: str) -> None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError("--device cuda but no CUDA GPU is visible")
        self.device = device
        self.models["qwen_instruct"] = self._load("qwen_instruct", self.model_path)
        if self.config.base_model:
            self.models["qwen_base"] = self._load("qwen_base", self.config.base_model)
        for model in self.models.values():  # warm-up: the first real request should not pay for it
            model.generator.generate([Request(model.prompt_ids([{"role": "user", "content": "hi"}]), max_tokens=2,
                                              temperature=0)])

    def _load(self, name: str, path: str) -> LoadedModel:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = resolve_dtype(self.config.dtype, self.device)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if self.config.backend == "vllm":
            from workers.chat.vllm_backend import VLLMGenerator

            generator = VLLMGenerator(path, tokenizer, str(dtype).removeprefix("torch."),
                                      self.config.max_context_tokens, self.config.vllm_gpu_memory_utilization)
            log.info("model_loaded", model=name, backend="vllm")
            return LoadedModel(name, tokenizer, generator)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True).to(self.device).eval()
        log.info("model_loaded", model=name, parameters=sum(p.numel() for p in model.parameters()))
        return LoadedModel(name, tokenizer, TextGenerator(model, tokenizer, self.device, self.config.max_context_tokens))

    def batch_key(self, item: ChatInput) -> Hashable:
        return item.model  # one model per generate call

    def run(self, items: list[ChatInput], ctx: RunContext) -> list[Any]:
        """Decode until no row is left, taking in new requests between steps (see module doc)."""
        generator = self.models[items[0].model].generator
        live: dict[str, ChatInput] = {}
        peak = 0
        try:
            while True:
                for item in items:
                    try:
                        generator.add(item.id, item.request)
                    except ValueError as exc:  # decode keeps prompts inside the context; this is the last guard
                        ctx.finish(item, JobError("bad_request", str(exc)))
                        continue
                    live[item.id] = item
                for item in list(live.values()):
                    try:
                        ctx.check(item)
                    except JobError as exc:  # cancelled, timed out, shutting down: its row leaves now
                        generator.abort(item.id)
                        del live[item.id]
                        ctx.finish(item, exc)
                if not live:
                    return []
                peak = max(peak, len(live))
                for update in generator.step():
                    item = live.get(update.key)
                    if item is None:
                        continue
                    if update.token_ids:
                        ctx.emit(item, update.token_ids)
                    if update.completion is not None:
                        del live[item.id]
                        ctx.finish(item, update.completion)
                items = ctx.admit(self.max_batch_images - len(live))
        except BaseException:
            generator.reset()  # the batch state after a failed step is not to be trusted
            raise
        finally:
            self.batch_sizes.append(peak)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "models": sorted(self.models), "backend": self.config.backend}
