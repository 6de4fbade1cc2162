"""Choosing the next token of every row at once, on the device, each row with its own settings.

One call per decoding step for the whole batch: repetition, presence and frequency penalties,
temperature, top-p and greedy rows, in a few tensor operations, with no host round trip; the
caller then copies the chosen tokens to the host once.

Seeds: a row samples by inverse transform with one uniform number per token, drawn when the row
joins from its own seeded CPU generator. The same seed gives the same numbers on any device and
in any batch, so a seeded request gets the same answer alone or batched (within float error of
the logits).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RowSampling:
    """The sampling settings of one request."""

    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None


class BatchSampler:
    """Per-row settings and penalty state as device tensors; rows are added and removed between steps."""

    def __init__(self, vocab_size: int, device: str | torch.device):
        self.vocab_size, self.device = vocab_size, torch.device(device)
        self._unseeded = torch.Generator("cpu").manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
        self.settings: list[RowSampling] = []
        empty = torch.empty(0, device=self.device)
        self.temperature = self.top_p = self.repetition = self.presence = self.frequency = empty
        self.uniforms = torch.empty((0, 1), device=self.device)  # [rows, budget] drawn at join
        self.step = torch.empty(0, dtype=torch.long, device=self.device)  # tokens chosen so far, per row
        self.seen = torch.empty((0, vocab_size), dtype=torch.bool, device=self.device)  # prompt and answer
        self.counts = torch.empty((0, vocab_size), dtype=torch.float32, device=self.device)  # answer only
        self._flags()

    def __len__(self) -> int:
        return len(self.settings)

    def add(self, rows: list[tuple[RowSampling, list[int], int]]) -> None:
        """Rows (settings, prompt ids, token budget) joining after the current ones, in that order."""
        if not rows:
            return
        dev = self.device
        width = max(self.uniforms.shape[1], *(budget for _, _, budget in rows))
        uniforms = [torch.rand(budget, generator=self._generator(s)) for s, _, budget in rows]
        uniforms = torch.stack([torch.nn.functional.pad(u, (0, width - len(u))) for u in uniforms]).to(dev)
        seen = torch.zeros((len(rows), self.vocab_size), dtype=torch.bool, device=dev)
        for i, (_, prompt, _) in enumerate(rows):
            if prompt:
                seen[i, torch.tensor(prompt, device=dev).clamp(max=self.vocab_size - 1)] = True

        def column(name: str) -> torch.Tensor:
            return torch.tensor([getattr(s, name) for s, _, _ in rows], dtype=torch.float32, device=dev)

        self.settings += [s for s, _, _ in rows]
        self.temperature = torch.cat([self.temperature, column("temperature")])
        self.top_p = torch.cat([self.top_p, column("top_p")])
        self.repetition = torch.cat([self.repetition, column("repetition_penalty")])
        self.presence = torch.cat([self.presence, column("presence_penalty")])
        self.frequency = torch.cat([self.frequency, column("frequency_penalty")])
        self.uniforms = torch.cat([torch.nn.functional.pad(self.uniforms, (0, width - self.uniforms.shape[1])),
                                   uniforms])
        self.step = torch.cat([self.step, torch.zeros(len(rows), dtype=torch.long, device=dev)])
        self.seen = torch.cat([self.seen, seen])
        self.counts = torch.cat([self.counts, torch.zeros((len(rows), self.vocab_size), device=dev)])
        self._flags()

    def keep(self, index: list[int]) -> None:
        """Keep only these rows (by position), in this order."""
        self.settings = [self.settings[i] for i in index]
        at = torch.tensor(index, dtype=torch.long, device=self.device)
        for name in ("temperature", "top_p", "repetition", "presence", "frequency", "uniforms", "step", "seen",
                     "counts"):
            setattr(self, name, getattr(self, name).index_select(0, at))
        self._flags()

    def _generator(self, settings: RowSampling) -> torch.Generator:
        if settings.seed is None:
            return self._unseeded
        return torch.Generator("cpu").manual_seed(settings.seed)

    def _flags(self) -> None:
        # Decided when rows change, not per step: a batch of plain greedy rows skips all the rest.
        s = self.settings
        self.any_repetition = any(r.repetition_penalty != 1.0 for r in s)
        self.any_additive = any(r.presence_penalty or r.frequency_penalty for r in s)
        self.any_sampling = any(r.temperature > 0 for r in s)
        self.any_top_p = any(r.temperature > 0 and r.top_p < 1.0 for r in s)

    @torch.inference_mode()
    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token of every row (a device tensor), from float32 logits [rows, vocab]."""
        if self.any_repetition:
            rep = self.repetition[:, None]
            logits = torch.where(self.seen, torch.where(logits > 0, logits / rep, logits * rep), logits)
        if self.any_additive:
            logits = logits - self.counts * self.frequency[:, None] - (self.counts > 0) * self.presence[:, None]
        tokens = logits.argmax(-1)
        if self.any_sampling:
            probs = torch.softmax(logits / self.temperature.clamp(min=1e-5)[:, None], dim=-1)
            order = None
            if self.any_top_p:  # the smallest set of most likely tokens whose mass reaches top_p
                probs, order = probs.sort(dim=-1, descending=True)
                probs = probs.masked_fill(probs.cumsum(-1) - probs >= self.top_p[:, None], 0.0)
            cumulative = probs.cumsum(-1)
            u = self.uniforms.gather(1, self.step.clamp(max=self.uniforms.shape[1] - 1)[:, None])
            index = torch.searchsorted(cumulative, u * cumulative[:, -1:], right=True).clamp(max=probs.shape[1] - 1)
            sampled = (order.gather(1, index) if order is not None else index).squeeze(1)
            tokens = torch.where(self.temperature > 0, sampled, tokens)
        self._record(tokens)
        return tokens

    def _record(self, tokens: torch.Tensor) -> None:
        rows = torch.arange(len(tokens), device=self.device)
        self.step += 1
        # Kept for every row (a scatter per step): cheaper than deciding which rows need it.
        self.seen[rows, tokens] = True
        self.counts[rows, tokens] += 1
