"""Continuous batching on transformers: requests join and leave the batch between decoding steps.

Why not transformers' own continuous batching (`init_continuous_batching`, transformers 5)? It
takes temperature, top-p and top-k per request, but one seed for the whole process and no
per-request greedy rows or repetition, presence and frequency penalties, and this service
promises each of those per request ("same seed, same answer"). So the scheduling loop is ours;
the model call is transformers'.

One `step()`:
1. rows already decoding feed their newest token (one position each);
2. requests added since the last step are prefilled together (left-padded, keeping only the last
   position's logits) and their KV cache is joined to the batch's;
3. one sampling call picks every row's next token on the device (workers/chat/sampling.py) and
   one copy brings them to the host;
4. rows that met a stop token or their budget leave: their cache rows are dropped, and padding
   columns that no remaining row needs are trimmed.
Rows stay right-aligned: every row's newest token is in the last column, padding is on the left
and masked, and position ids ignore the padding, so a row decodes the same tokens batched or
alone (greedy; equal within float error).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Hashable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from shared.ops.logging import get_logger
from workers.chat.sampling import BatchSampler, RowSampling

log = get_logger(component="chat")


@dataclass
class Request:
    prompt_ids: list[int]
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    ignore_eos: bool = False  # exactly max_tokens tokens (benchmarks; `ignore_eos` on /v1)

    def sampling(self) -> RowSampling:
        return RowSampling(self.temperature, self.top_p, self.repetition_penalty, self.presence_penalty,
                           self.frequency_penalty, self.seed)


@dataclass
class Completion:
    token_ids: list[int]
    finish_reason: str  # stop | length
    prompt_tokens: int
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


@dataclass
class Update:
    """What one step did for one row: the tokens it added, and its completion once it is done."""

    key: Hashable
    token_ids: list[int]
    completion: Completion | None = None
    error: Exception | None = None  # the row failed inside the backend (vLLM); it is over


@dataclass
class _Row:
    key: Hashable
    request: Request
    budget: int
    started: float = field(default_factory=time.perf_counter)
    produced: list[int] = field(default_factory=list)

    def finish(self, reason: str) -> Completion:
        return Completion(self.produced, reason, len(self.request.prompt_ids), time.perf_counter() - self.started)


class TextGenerator:
    def __init__(self, model, tokenizer, device: str, max_context: int | None = None, cuda_graphs: bool = False,
                 decoder=None):
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
        self.sampler = BatchSampler(int(model.get_output_embeddings().weight.shape[0]), device)
        self.rows: list[_Row] = []  # decoding, in the batch's row order
        self.joining: list[_Row] = []  # prefilled at the next step
        self.cache = self.mask = self.next_position = self.last = None
        # CHAT_CUDA_GRAPHS: decoding steps from CUDA graphs over a static cache (workers/chat/graphed_decode.py)
        if decoder is None and cuda_graphs:
            from workers.chat.graphed_decode import GraphedDecoder, static_cache_fits

            if static_cache_fits():
                decoder = GraphedDecoder(model, device, self._cache_arg)
            else:
                log.warning("chat_cuda_graphs_unsupported", fallback="eager",
                            reason="this transformers' StaticCache does not write at cumulative_length (5.24+)")
        self.decoder = decoder

    @property
    def active(self) -> int:
        return len(self.rows) + len(self.joining)

    def add(self, key: Hashable, request: Request) -> None:
        """Join the batch at the next step."""
        budget = min(request.max_tokens, self.max_context - len(request.prompt_ids))
        if budget < 1 or not request.prompt_ids:
            raise ValueError(f"a prompt of {len(request.prompt_ids)} tokens leaves no room in a "
                             f"{self.max_context}-token context")
        self.joining.append(_Row(key, request, budget))

    def abort(self, key: Hashable) -> None:
        """Drop a row (cancelled, timed out) and free its share of the cache."""
        self.joining = [r for r in self.joining if r.key != key]
        keep = [i for i, r in enumerate(self.rows) if r.key != key]
        if len(keep) < len(self.rows):
            self._keep(keep)

    def reset(self) -> None:
        """Forget every row (after an error in a step the batch state is not to be trusted)."""
        if self.decoder is not None:
            self.decoder.active = None
        self.rows, self.joining = [], []
        self.cache = self.mask = self.next_position = self.last = None
        self.sampler.keep([])

    @torch.inference_mode()
    def step(self) -> list[Update]:
        logits = []
        if self.rows and self.decoder is not None:
            decoded = self._graphed_step()
            if decoded is not None:
                logits.append(decoded)
                self.next_position = self.next_position + 1
        if self.rows and not logits:
            self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=1)
            self.cache, step_logits = self._forward(input_ids=self.last[:, None], attention_mask=self.mask,
                                                    position_ids=self.next_position[:, None], cache=self.cache)
            self.next_position = self.next_position + 1
            logits.append(step_logits)
        if self.joining:
            self._settle()
            joining, self.joining = self.joining, []
            logits.append(self._prefill(joining))
            self.rows += joining
        if not logits:
            return []
        tokens = self.sampler.sample(torch.cat(logits))
        self.last = tokens
        updates, keep = [], []
        for i, (row, token) in enumerate(zip(self.rows, tokens.tolist(), strict=True)):  # the one copy to the host
            if token in self.stop_ids and not row.request.ignore_eos:
                updates.append(Update(row.key, [], row.finish("stop")))  # the stop token is not part of the reply
                continue
            row.produced.append(token)
            done = len(row.produced) >= row.budget
            updates.append(Update(row.key, [token], row.finish("length") if done else None))
            if not done:
                keep.append(i)
        if len(keep) < len(self.rows):
            self._keep(keep)
        return updates

    def generate(self, requests: list[Request]) -> list[Completion]:
        """All of `requests` to the end, together (warm-up, benchmarks); not while serving."""
        if self.active:
            raise RuntimeError("generate() needs an idle generator")
        for index, request in enumerate(requests):
            self.add(index, request)
        done: dict[Hashable, Completion] = {}
        while len(done) < len(requests):
            done.update({u.key: u.completion for u in self.step() if u.completion is not None})
        return [done[i] for i in range(len(requests))]

    # ------------------------------------------------------------------------ internals

    def _forward(self, **kwargs):
        cache = kwargs.pop("cache", None)
        if cache is not None:
            kwargs[self._cache_arg] = cache
        out = self.model(use_cache=True, **kwargs)
        cache = out["cache"] if "cache" in out else out.past_key_values
        return cache, out.logits[:, -1, :].float()

    def _prefill(self, rows: list[_Row]) -> torch.Tensor:
        """Prefill the joining rows together; their cache joins the batch's. Returns their logits."""
        longest = max(len(r.request.prompt_ids) for r in rows)
        ids = torch.full((len(rows), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding: every row's last token is at the end
            ids[i, longest - len(r.request.prompt_ids):] = torch.tensor(r.request.prompt_ids)
            mask[i, longest - len(r.request.prompt_ids):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        # Only the last position's logits: a full-vocabulary row per prompt token would be wasted.
        cache, logits = self._forward(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
        self._join_cache(cache, mask)
        lengths = torch.tensor([len(r.request.prompt_ids) for r in rows], device=self.device)
        self.next_position = lengths if self.next_position is None else torch.cat([self.next_position, lengths])
        self.sampler.add([(r.request.sampling(), r.request.prompt_ids, r.budget) for r in rows])
        return logits

    def _join_cache(self, cache, mask: torch.Tensor) -> None:
        for layer in cache.layers:
            if type(layer).__name__ != "DynamicLayer":
                raise RuntimeError(f"continuous batching needs full-attention KV caches, got {type(layer).__name__}")
        if self.cache is None:
            self.cache, self.mask = cache, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])
        old, new = width - self.mask.shape[1], width - mask.shape[1]  # left padding for each side
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([F.pad(mine.keys, (0, 0, old, 0)), F.pad(theirs.keys, (0, 0, new, 0))])
            mine.values = torch.cat([F.pad(mine.values, (0, 0, old, 0)), F.pad(theirs.values, (0, 0, new, 0))])
        self.mask = torch.cat([F.pad(self.mask, (old, 0)), F.pad(mask, (new, 0))])

    def _graphed_step(self) -> torch.Tensor | None:
        """A decoding step through the graphed decoder; None, and eager from then on, if anything in
        it fails (a capture, a replay that disagrees with eager, a transformers whose static cache
        works otherwise). The cache goes back untouched: the decoder only ever writes past its last
        column before a step succeeds."""
        try:
            if self.decoder.full():  # the slab's columns are used up: into a longer one
                self._settle()
            if not self.decoder.holding:
                self.decoder.load(self.cache, self.mask)
            return self.decoder.step(self.last, self.next_position)
        except Exception as exc:  # noqa: BLE001 - decoding goes on eagerly; the log says why
            self._settle()
            log.warning("chat_cuda_graphs_failed", error=f"{type(exc).__name__}: {str(exc)[:300]}",
                        fallback="eager")
            self.decoder = None
            return None

    def _settle(self) -> None:
        """Before the rows change: the cache back from the graphed decoder's slab, if it holds it."""
        if self.decoder is not None and self.decoder.holding:
            self.mask = self.decoder.settle(self.cache)

    def _keep(self, index: list[int]) -> None:
        """Keep these rows (by position); trim padding columns that no remaining row needs."""
        self._settle()
        self.rows = [self.rows[i] for i in index]
        self.sampler.keep(index)
        if not index:
            self.cache = self.mask = self.next_position = self.last = None
            return
        at = torch.tensor(index, dtype=torch.long, device=self.device)
        self.mask, self.next_position, self.last = (t.index_select(0, at) for t in
                                                    (self.mask, self.next_position, self.last))
        first = int(self.mask.any(dim=0).nonzero()[0])  # columns before this are padding in every row
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, at)[:, :, first:]
            layer.values = layer.values.index_select(0, at)[:, :, first:]
