"""Batched text generation with per-request sampling: the chat worker's engine.

A hand-written decoding loop rather than `model.generate`, because requests batched together may
want different temperatures, top-p, penalties, lengths and seeds: each row keeps its own. Prompts
are left-padded with position ids that ignore the padding, so a row decodes the same tokens
batched or alone (greedy decoding; equal within float error).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field

import torch


@dataclass
class Request:
    prompt_ids: list[int]
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    seed: int | None = None


@dataclass
class Completion:
    token_ids: list[int]
    finish_reason: str  # stop | length
    prompt_tokens: int
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


class TextGenerator:
    def __init__(self, model, tokenizer, device: str, max_context: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.max_context = max_context or int(getattr(model.config, "max_position_embeddings", 4096))
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
        eos_ids.add(tokenizer.eos_token_id)
        self.stop_ids = {i for i in eos_ids if i is not None}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # transformers >= 5.24 calls the KV cache `cache`; older releases `past_key_values`.
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def _forward(self, **kwargs):
        cache = kwargs.pop("cache", None)
        if cache is not None:
            kwargs[self._cache_arg] = cache
        out = self.model(use_cache=True, **kwargs)
        cache = out["cache"] if "cache" in out else out.past_key_values
        return cache, out.logits[:, -1, :].float()

    @torch.inference_mode()
    def generate(self, requests: list[Request]) -> list[Completion]:
        started = time.perf_counter()
        rows = len(requests)
        longest = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((rows, longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((rows, longest), dtype=torch.long)
        for i, r in enumerate(requests):  # left padding: every row's last token is at the end
            ids[i, longest - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, longest - len(r.prompt_ids):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)

        generators = [torch.Generator("cpu").manual_seed(r.seed) if r.seed is not None else None for r in requests]
        seen = [set(r.prompt_ids) for r in requests]  # for the repetition penalty
        produced: list[list[int]] = [[] for _ in requests]
        finished = [False] * rows
        reasons = ["length"] * rows
        budget = [min(r.max_tokens, self.max_context - len(r.prompt_ids)) for r in requests]

        cache, logits = self._forward(input_ids=ids, attention_mask=mask, position_ids=positions)
        last_position = positions[:, -1]
        for _step in range(max(budget)):
            next_tokens = []
            for i, r in enumerate(requests):
                if finished[i]:
                    next_tokens.append(self.pad_id)
                    continue
                token = self._pick(logits[i], r, seen[i], produced[i], generators[i])
                produced[i].append(token)
                seen[i].add(token)
                if token in self.stop_ids:
                    finished[i], reasons[i] = True, "stop"
                    produced[i].pop()  # the stop token is not part of the reply
                elif len(produced[i]) >= budget[i]:
                    finished[i] = True
                next_tokens.append(token)
            if all(finished):
                break
            step_ids = torch.tensor(next_tokens, device=self.device)[:, None]
            mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype, device=self.device)], dim=1)
            last_position = last_position + 1
            cache, logits = self._forward(input_ids=step_ids, attention_mask=mask,
                                          position_ids=last_position[:, None], cache=cache)
        seconds = time.perf_counter() - started
        return [Completion(p, reason, len(r.prompt_ids), seconds)
                for p, reason, r in zip(produced, reasons, requests, strict=True)]

    @staticmethod
    def _pick(logits: torch.Tensor, r: Request, seen: set[int], produced: list[int], generator) -> int:
        logits = logits.clone()
        if r.repetition_penalty != 1.0 and seen:
            index = torch.tensor(sorted(seen), device=logits.device)
            values = logits[index]
            logits[index] = torch.where(values > 0, values / r.repetition_penalty, values * r.repetition_penalty)
        if r.presence_penalty and produced:
            logits[torch.tensor(sorted(set(produced)), device=logits.device)] -= r.presence_penalty
        if r.temperature <= 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / r.temperature, dim=-1)
        if r.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = sorted_probs.cumsum(-1) - sorted_probs < r.top_p  # always keeps the top token
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        return int(torch.multinomial(probs.cpu(), 1, generator=generator))
