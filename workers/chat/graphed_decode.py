"""`CHAT_CUDA_GRAPHS`: the transformers backend's decoding steps replayed from CUDA graphs.

A 7B model's decoding step reads its 15 GB of weights once (about 4 ms on an H200) but launches
over a thousand kernels from Python; eagerly the launches are the step. A CUDA graph replays them
in one launch. A graph needs fixed shapes and addresses, and the generator's KV cache grows by a
column every step (workers/chat/generator.py), so while the batch's rows stay the same the cache
lives in a *slab*: a transformers `StaticCache` of `rows` x `length` slots (both rounded up to
buckets, so one graph serves many batch sizes and lengths), with a boolean mask over its columns.
Each step writes the new token's keys and values into the next column, in place, and replays.

When rows join or leave, `settle()` hands the cache back to the generator as plain tensors (views
of the slab's first rows and columns) and the generator does what it always did; the next step
copies it into a slab again. Rows beyond the batch (up to the bucket) are padding: they attend to
one column and their logits are dropped.

Same model, same kernels as an eager step with a mask: greedy decoding gives the same tokens
(tests/test_chat_graphs.py, on the CPU with the capture stood in for). On the card, each slab's
first replay on new inputs is checked against an eager step; a capture, replay or check that fails
hands the cache back and the generator decodes eagerly from then on (logged). Needs transformers >= 5.24
(its `StaticLayer` writes at `cumulative_length`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from workers.accel.cuda_graphs import cuda_capture, differs, graphs_wanted

ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LENGTH_STEP = 256  # slab lengths are multiples of this: a graph serves 256 steps before the next
# KV slabs kept (with their graphs) at most: every row bucket at 256 columns is 1.9 GB for Qwen2.5-7B
# in bf16, so all of them stay captured; a longer slab evicts the least recently used.
SLAB_BYTES = 8 * 2**30


def static_cache_fits() -> bool:
    """Whether this transformers' static cache writes each step at its layers' `cumulative_length`,
    which the slabs set before every replay (transformers 5.24; older ones take a cache_position)."""
    from transformers.cache_utils import StaticLayer

    return hasattr(StaticLayer(max_cache_len=1), "cumulative_length")


def decode_graphs_on(config, device: str) -> bool:
    """`CHAT_CUDA_GRAPHS`: `auto` means on CUDA; refused off CUDA, where there are no graphs."""
    return graphs_wanted(config.cuda_graphs, device, "CHAT_CUDA_GRAPHS")


def bucket_rows(rows: int) -> int:
    return next((b for b in ROW_BUCKETS if b >= rows), rows)


def row_buckets(max_rows: int) -> list[int]:
    """Every bucket a batch of up to `max_rows` rows can fall in (captured at the warm-up)."""
    return [b for b in ROW_BUCKETS if b <= bucket_rows(max_rows)]


def bucket_length(columns: int) -> int:
    """Slots for `columns` used plus at least one to write: the next multiple of LENGTH_STEP."""
    return (columns // LENGTH_STEP + 1) * LENGTH_STEP


@dataclass
class _Slab:
    rows: int
    length: int
    cache: object  # transformers StaticCache
    ids: torch.Tensor  # (rows, 1)
    positions: torch.Tensor  # (rows, 1)
    mask: torch.Tensor  # (rows, length) bool: which columns each row attends to
    replay: object = None
    logits: torch.Tensor | None = None
    replayed: int = 0  # replays so far; the first on new inputs (the second) is checked against eager


class GraphedDecoder:
    """Decoding steps for one `TextGenerator`'s model; see the module doc."""

    def __init__(self, model, device: str, cache_arg: str, capture=None, max_bytes: int = SLAB_BYTES):
        self.model, self.device, self.cache_arg = model, device, cache_arg
        self._capture = capture or cuda_capture
        self._pool = torch.cuda.graph_pool_handle() if capture is None else None
        self.max_bytes = max_bytes
        self.slabs: OrderedDict[tuple[int, int], _Slab] = OrderedDict()
        self.active: _Slab | None = None  # the slab that holds the batch's cache now
        self.batch = self.width = 0  # rows in the batch, columns in use
        self.replays = self.captures = 0

    # ------------------------------------------------------------------ the generator's cache

    def load(self, cache, mask: torch.Tensor) -> None:
        """Take the generator's cache (DynamicCache, rows right-aligned) and mask (rows, columns)."""
        batch, width = mask.shape
        slab = self._slab(bucket_rows(batch), bucket_length(width))
        for mine, theirs in zip(slab.cache.layers, cache.layers, strict=True):
            mine.keys[:batch, :, :width].copy_(theirs.keys)
            mine.values[:batch, :, :width].copy_(theirs.values)
        slab.mask.zero_()
        slab.mask[:batch, :width] = mask.bool()
        slab.mask[batch:, 0] = True  # padding rows attend somewhere: a row that attends nowhere is NaN
        slab.ids.zero_()
        slab.positions.zero_()
        self.active, self.batch, self.width = slab, batch, width

    def settle(self, cache) -> torch.Tensor | None:
        """Give the cache back to the generator (its layers get views of the slab); returns the mask,
        or None when the slab held nothing."""
        slab, self.active = self.active, None
        if slab is None:
            return None
        for mine, theirs in zip(slab.cache.layers, cache.layers, strict=True):
            theirs.keys = mine.keys[:self.batch, :, :self.width]
            theirs.values = mine.values[:self.batch, :, :self.width]
        return slab.mask[:self.batch, :self.width].long()

    @property
    def holding(self) -> bool:
        return self.active is not None

    def full(self) -> bool:
        """No column left to write in the active slab: the caller settles and loads a longer one."""
        return self.active is not None and self.width >= self.active.length

    # ----------------------------------------------------------------------------- a step

    def step(self, last: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One decoding step for the loaded batch: `last` and `positions` are (batch,). Returns the
        float logits (batch, vocab)."""
        slab, batch, column = self.active, self.batch, self.width
        assert slab is not None and column < slab.length
        slab.ids[:batch, 0] = last
        slab.positions[:batch, 0] = positions
        slab.mask[:batch, column] = True
        self._move_to(slab, column)  # where this step writes its keys and values
        if slab.replay is None:
            slab.replay, slab.logits = self._capture(lambda: self._forward(slab), self._pool)
            self.captures += 1
            self._move_to(slab, column)  # the capture's warm-up runs moved it on
        slab.replay()
        slab.replayed += 1
        self.replays += 1
        if slab.replayed == 2:  # the first replay on inputs the capture did not see
            self._check(slab, column)
        self.width = column + 1
        return slab.logits[:batch].float()

    def _check(self, slab: _Slab, column: int) -> None:
        """The replay's logits against an eager step on the same inputs (which writes the same keys and
        values into the same column); a graph that disagrees raises, and the generator goes eager."""
        got = slab.logits.clone()
        self._move_to(slab, column)
        want = self._forward(slab)
        mismatch = differs(got[:self.batch], want[:self.batch])
        if mismatch:
            raise RuntimeError(f"graphed decoding step differs from eager: {mismatch}")

    @staticmethod
    def _move_to(slab: _Slab, column: int) -> None:
        for layer in slab.cache.layers:
            layer.cumulative_length.fill_(column)

    def _forward(self, slab: _Slab) -> torch.Tensor:
        out = self.model(input_ids=slab.ids, position_ids=slab.positions, attention_mask=slab.mask[:, None, None, :],
                         use_cache=True, logits_to_keep=1, **{self.cache_arg: slab.cache})
        return out.logits[:, -1, :]

    def _slab(self, rows: int, length: int) -> _Slab:
        key = (rows, length)
        slab = self.slabs.pop(key, None)
        if slab is None:
            while self.slabs and self._bytes() + self._slab_bytes(rows, length) > self.max_bytes:
                self.slabs.popitem(last=False)  # least recently used first; its graph and memory go
            slab = self._new_slab(rows, length)
        self.slabs[key] = slab
        return slab

    def _kv_heads(self) -> tuple[int, int]:
        """(key/value heads, head size) of the model's attention."""
        config = self.model.config
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        return heads, getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    def _slab_bytes(self, rows: int, length: int) -> int:
        heads, head_dim = self._kv_heads()
        element = next(self.model.parameters()).element_size()
        return 2 * self.model.config.num_hidden_layers * rows * heads * length * head_dim * element  # keys, values

    def _bytes(self) -> int:
        return sum(self._slab_bytes(rows, length) for rows, length in self.slabs)

    def _new_slab(self, rows: int, length: int) -> _Slab:
        from transformers import StaticCache

        cache = StaticCache(config=self.model.config, max_cache_len=length)
        heads, head_dim = self._kv_heads()
        dtype = next(self.model.parameters()).dtype
        like = torch.zeros(rows, heads, 1, head_dim, dtype=dtype, device=self.device)
        for layer in cache.layers:
            layer.lazy_initialization(like, like)
        return _Slab(rows, length, cache, ids=torch.zeros(rows, 1, dtype=torch.long, device=self.device),
                     positions=torch.zeros(rows, 1, dtype=torch.long, device=self.device),
                     mask=torch.zeros(rows, length, dtype=torch.bool, device=self.device))
