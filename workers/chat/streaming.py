"""A request's answer as it is made: tokens from the engine → text pieces for an HTTP stream.

`TextPieces` turns token ids into text incrementally (never splitting a multi-byte character,
and holding back text that might be the start of a stop sequence); `StreamedReply` follows one
request through the worker from the event loop: the engine's tokens arrive by
`call_soon_threadsafe` (the GPU thread never waits on a client), and a client that leaves or a
stop sequence that is met cancels the request at the engine's next step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from shared.decode.decoder import Plan
from shared.engine.errors import JobError
from shared.runtime.worker import Worker
from workers.chat.generator import Completion


class TextPieces:
    """Incremental detokenization with stop sequences."""

    def __init__(self, tokenizer, stop: list[str] | None = None):
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.ids: list[int] = []
        self.text = ""  # all the text decoded so far
        self.sent = 0  # how much of it went out
        self._prefix = self._read = 0  # token offsets: decoded context, and what is already text
        self.stopped = False

    def feed(self, ids: list[int]) -> str:
        """The text these tokens add that may go out now ('' while a character or a possible stop
        sequence is incomplete)."""
        self.ids += ids
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):  # a complete character
            self.text += after[len(before):]
            self._prefix, self._read = self._read, len(self.ids)
        return self._release(final=False)

    def finish(self, token_ids: list[int]) -> str:
        """The rest, once the engine is done (`token_ids`: the whole answer)."""
        if not self.stopped:
            whole = self._decode(token_ids)
            if whole.startswith(self.text):
                self.text = whole
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stopped:
            return ""
        end = len(self.text)
        for stop in self.stop:
            found = self.text.find(stop, max(0, self.sent - len(stop)))
            if found != -1 and found < end:
                end, self.stopped = found, True
        if not self.stopped and not final:
            end -= self._possible_stop_start(end)
        piece = self.text[self.sent:end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        if self.stopped:
            self.text = self.text[:end]
        return piece

    def _possible_stop_start(self, end: int) -> int:
        """How many characters at the end might begin a stop sequence (held back until known)."""
        longest = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, end - self.sent), longest, -1):
                if self.text.endswith(stop[:size], 0, end):
                    longest = size
                    break
        return longest

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class StreamedReply:
    """One request on the worker, followed from the event loop (see the module doc)."""

    def __init__(self, worker: Worker, plan: Plan, tokenizer, stop: list[str] | None, deadline: float,
                 stream: bool):
        self.worker, self.deadline = worker, deadline  # time.monotonic(), from the request's arrival
        self.prompt_tokens = len(plan.input.request.prompt_ids)
        self.loop = asyncio.get_running_loop()
        self.pieces = TextPieces(tokenizer, stop)
        self.updates: asyncio.Queue = asyncio.Queue()
        follow = stream or bool(self.pieces.stop)  # tokens are only sent here when someone reads them
        self.task = worker.submit(plan, stream=self._on_tokens if follow else None, deadline=deadline)
        self.task.future.add_done_callback(lambda _: self.loop.call_soon_threadsafe(self.updates.put_nowait, None))
        self.completion: Completion | None = None
        self.finish_reason = "length"

    def _on_tokens(self, ids: list[int]) -> None:  # the GPU thread: never blocks
        self.loop.call_soon_threadsafe(self.updates.put_nowait, ids)

    async def text(self) -> AsyncIterator[str]:
        """Text pieces as they are made. Raises JobError if the engine failed, TimeoutError past
        the request timeout; afterwards `completion`, `finish_reason` and `usage()` are set."""
        deadline = self.deadline
        try:
            while True:
                update = await asyncio.wait_for(self.updates.get(), max(0.0, deadline - time.monotonic()))
                if update is None:
                    break
                piece = self.pieces.feed(update)
                if piece:
                    yield piece
                if self.pieces.stopped:
                    self.cancel()
                    self.finish_reason = "stop"
                    return
            outcome = self.task.future.result()
            if isinstance(outcome, JobError):
                raise outcome
            self.completion, self.finish_reason = outcome, outcome.finish_reason
            rest = self.pieces.finish(outcome.token_ids)
            if self.pieces.stopped:
                self.finish_reason = "stop"
            if rest:
                yield rest
        except BaseException:
            self.cancel()  # the client left, or time ran out: free the row at the next step
            raise

    def cancel(self) -> None:
        if not self.task.future.done():
            self.worker.cancel_local(self.task)

    def usage(self) -> dict[str, Any]:
        prompt = self.prompt_tokens
        made = len(self.completion.token_ids) if self.completion is not None else len(self.pieces.ids)
        return {"prompt_tokens": prompt, "completion_tokens": made, "total_tokens": prompt + made}
