"""The chat engine: Qwen2.5 (instruct, and base when configured) generating for batches of requests.

An engine of the same runtime as SDXL and WAN, and a continuous one: `run` keeps decoding while
requests (HTTP and `chat_queue` alike) join between steps, up to CHAT_MAX_BATCH rows, and each
leaves the moment it is done, so a 4-token enhancement never waits behind a 600-token chat. Each
row keeps its own sampling settings, length and seed. Decode (workers/chat/service.py) has
already turned a request into token ids that fit the model's context; the generator
(workers/chat/generator.py, or vLLM) owns the batch between steps.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import torch

from shared.engine.contract import Engine, RunContext
from shared.engine.errors import JobError
from shared.ops.engine_settings import ChatSettings
from shared.ops.gpu import resolve_dtype
from shared.ops.logging import get_logger
from workers.chat.generator import Request, TextGenerator
from workers.chat.graphed_decode import decode_graphs_on, row_buckets

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

    def count_text(self, text: str) -> int:
        """The tokens of one message's text, template aside (context fitting's per-turn estimate)."""
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)


class ChatEngine(Engine):
    name = "chat"
    continuous = True

    def __init__(self, model: str, config: ChatSettings | None = None, random_weights: bool = False):
        self.model_path = model
        self.config = config or ChatSettings()
        self.random_weights = random_weights  # benchmarks: `model` is a config folder, weights are random
        self.backend = self.config.backend
        self.max_batch_images = self.config.max_batch
        self.batch_wait_ms = self.config.batch_wait_ms
        self.models: dict[str, LoadedModel] = {}
        self.device = "cpu"
        self.batch_sizes: list[int] = []  # the most rows decoded together in each run, for tests and metrics

    def setup(self, device: str) -> None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError("--device cuda but no CUDA GPU is visible")
        self.device = device
        self.backend = self._choose_backend()
        self.models["qwen_instruct"] = self._load("qwen_instruct", self.model_path)
        if self.config.base_model:
            self.models["qwen_base"] = self._load("qwen_base", self.config.base_model)
        for model in self.models.values():  # warm-up: the first real request should not pay for it
            hello = Request(model.prompt_ids([{"role": "user", "content": "hi"}]), max_tokens=3, temperature=0)
            # With CUDA graphs, each batch-size bucket a burst can reach is captured now, not mid-burst.
            graphed = getattr(model.generator, "decoder", None) is not None
            for rows in row_buckets(self.config.max_batch) if graphed else [1]:
                model.generator.generate([hello] * rows)

    def _choose_backend(self) -> str:
        """CHAT_BACKEND=auto: vLLM on CUDA when it is installed, else transformers."""
        if self.config.backend != "auto":
            return self.config.backend
        if not self.device.startswith("cuda"):
            return "transformers"
        if importlib.util.find_spec("vllm") is None:
            log.warning("vllm_not_installed", detail="serving with transformers; pip install 'ourvidz-workers[vllm]'")
            return "transformers"
        return "vllm"

    def _load(self, name: str, path: str) -> LoadedModel:
        from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

        from workers.chat.tiny import build_qwen_tokenizer

        dtype = resolve_dtype(self.config.dtype, self.device)
        # Random weights need no tokenizer of their own: a byte-level one makes valid ids for any vocabulary.
        tokenizer = build_qwen_tokenizer() if self.random_weights else AutoTokenizer.from_pretrained(
            path, local_files_only=True)
        if self.backend == "vllm":
            from workers.chat.vllm_backend import VLLMGenerator

            generator = VLLMGenerator(path, tokenizer, str(dtype).removeprefix("torch."),
                                      self.config.max_context_tokens, self.config.vllm_gpu_memory_utilization,
                                      max_rows=self.config.max_batch, stop_ids=_stop_ids(path, tokenizer),
                                      random_weights=self.random_weights)
            log.info("model_loaded", model=name, backend="vllm")
            return LoadedModel(name, tokenizer, generator)
        if self.random_weights:
            with torch.device(self.device):
                model = Qwen2ForCausalLM(Qwen2Config.from_pretrained(path)).to(dtype).eval()
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
            model = model.to(self.device).eval()
        log.info("model_loaded", model=name, backend="transformers",
                 parameters=sum(p.numel() for p in model.parameters()))
        return LoadedModel(name, tokenizer, TextGenerator(model, tokenizer, self.device, self.config.max_context_tokens,
                                                          cuda_graphs=decode_graphs_on(self.config, self.device)))

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
                self.rows = len(live)
                if not live:
                    return []
                peak = max(peak, len(live))
                for update in generator.step():
                    item = live.get(update.key)
                    if item is None:
                        continue
                    if update.token_ids:
                        ctx.emit(item, update.token_ids)
                    if update.error is not None:
                        del live[item.id]
                        log.error("generation_failed", error=str(update.error)[:200])
                        ctx.finish(item, JobError("internal_error", "generation failed in the backend"))
                    elif update.completion is not None:
                        del live[item.id]
                        ctx.finish(item, update.completion)
                items = ctx.admit(self.max_batch_images - len(live))
        except BaseException:
            generator.reset()  # the batch state after a failed step is not to be trusted
            raise
        finally:
            self.rows = 0
            self.batch_sizes.append(peak)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "models": sorted(self.models), "backend": self.backend}


def _stop_ids(path: str, tokenizer) -> set[int]:
    """The tokens that end an answer: the model's generation config's EOS ids and the tokenizer's."""
    from transformers import GenerationConfig

    ids = {tokenizer.eos_token_id}
    try:
        eos = GenerationConfig.from_pretrained(path, local_files_only=True).eos_token_id
        ids |= set(eos if isinstance(eos, list) else [eos])
    except OSError:  # no generation_config.json: the tokenizer's EOS is all there is
        pass
    return {i for i in ids if i is not None}
