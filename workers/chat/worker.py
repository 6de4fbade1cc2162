"""Running the chat worker: HTTP API, chat_queue consumer, RunPod announcement, graceful stop."""

from __future__ import annotations

import json
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import redis

from shared import keys
from shared.announce import announce_in_background
from shared.contract import decode_element
from shared.logging import get_logger
from shared.queue import Claimed, JobQueue, connect
from shared.settings import Settings
from workers.chat.api import ChatAPI
from workers.chat.config import ChatSettings
from workers.chat.conversation import BadRequest
from workers.chat.service import ChatService

REPLY_TTL = 300


class ChatQueueConsumer:
    """chat_queue jobs with the fleet's reliability: claimed, leased, acknowledged after the reply.

    Jobs are handled concurrently (up to CHAT_MAX_BATCH) so that queued requests batch together.
    """

    def __init__(self, service: ChatService, settings: Settings, chat: ChatSettings, client: redis.Redis):
        self.service = service
        self.redis = client
        self.queue = JobQueue(client, settings.worker_id, (keys.CHAT_QUEUE,), settings.contract,
                              settings.lease_seconds, settings.max_attempts)
        self.settings = settings
        self.pool = ThreadPoolExecutor(chat.max_batch, thread_name_prefix="chat-job")
        self.slots = threading.BoundedSemaphore(chat.max_batch)
        self.stopping = threading.Event()
        self.log = get_logger(worker_id=settings.worker_id, component="chat-queue")
        self._threads = [threading.Thread(target=self._claim_loop, name="chat-claimer", daemon=True),
                         threading.Thread(target=self._keeper_loop, name="chat-keeper", daemon=True)]

    def start(self) -> ChatQueueConsumer:
        self.queue.register()
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._threads[0].join(timeout=10)
        self.pool.shutdown(wait=True)  # requests in hand finish and are answered
        self.stopping.set()
        self._threads[1].join(timeout=10)
        self.queue.deregister()

    def _claim_loop(self) -> None:
        while not self.stopping.is_set():
            if not self.slots.acquire(timeout=0.5):
                continue
            try:
                claimed = self.queue.claim(block_seconds=1.0)
            except redis.RedisError as exc:
                self.slots.release()
                self.log.warning("claim_failed", error=str(exc))
                self.stopping.wait(1.0)
                continue
            if claimed is None:
                self.slots.release()
                continue
            self.pool.submit(self._handle_and_release, claimed)

    def _keeper_loop(self) -> None:
        while not self.stopping.wait(max(0.2, self.settings.lease_seconds / 3)):
            try:
                self.queue.heartbeat()
                self.queue.reap_dead_workers()
            except redis.RedisError as exc:
                self.log.warning("keeper_redis_error", error=str(exc))

    def _handle_and_release(self, claimed: Claimed) -> None:
        try:
            self._handle(claimed)
        finally:
            self.slots.release()

    def _handle(self, claimed: Claimed) -> None:
        try:
            body = decode_element(claimed.raw)
        except Exception as exc:
            self.queue.dead_letter(claimed, f"unreadable chat request: {exc}")
            return
        reply_to = body.get("reply_to")
        if not (isinstance(reply_to, str) and reply_to.startswith(keys.reply(""))):
            reply_to = None  # never write to a key the request names outside the reply space
        if self.queue.over_attempts(claimed):
            self._answer(reply_to, {"success": False, "error": "gave up after repeated failures"})
            self.queue.dead_letter(claimed, "max attempts")
            return
        kind = body.get("type")
        try:
            if kind == "enhance":
                reply = self.service.enhance(body)
            elif kind == "chat":
                reply = self.service.chat(body)
            else:
                raise BadRequest(f"chat_queue job type must be chat or enhance, got {str(kind)[:40]!r}")
        except BadRequest as exc:
            reply = {"success": False, "error": str(exc)}
        except Exception as exc:
            self.log.exception("chat_job_failed", job_id=body.get("id"))
            if claimed.attempts < self.settings.max_attempts:
                self.queue.requeue(claimed, count_attempt=True)
                return
            reply = {"success": False, "error": f"internal error ({type(exc).__name__})"}
        self._answer(reply_to, {"id": body.get("id"), **reply})
        self.queue.finish(claimed)

    def _answer(self, reply_to: str | None, reply: dict) -> None:
        if reply_to:
            self.redis.pipeline().lpush(reply_to, json.dumps(reply)).expire(reply_to, REPLY_TTL).execute()


def run_chat_worker(model: str, device: str, settings: Settings, chat: ChatSettings | None = None,
                    port: int | None = None, install_signal_handlers: bool = True,
                    stop_event: threading.Event | None = None) -> int:
    chat = chat or ChatSettings()
    log = get_logger(worker_id=settings.worker_id, engine="chat")
    stop = stop_event or threading.Event()
    if install_signal_handlers and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
    from shared.gpu import apply_memory_budget

    apply_memory_budget(settings.gpu_memory_gb, device)
    service = ChatService(chat, model, device)
    api = ChatAPI(service, chat, settings.worker_id, port=port if port is not None else chat.port).start()
    log.info("chat_api_listening", port=api.port)
    try:
        service.load()
    except Exception:
        api.state = "failed"
        log.exception("chat_model_load_failed")
        api.stop()
        return 1
    consumer = ChatQueueConsumer(service, settings, chat, connect(settings.effective_redis_url)).start() \
        if chat.consume_queue else None
    api.state = "ready"
    log.info("chat_worker_ready", models=sorted(service.models))
    announce_in_background(settings, "register-chat-worker", api.port)
    stop.wait()
    api.state = "stopping"
    if consumer is not None:
        consumer.stop()
    api.stop()
    service.close()
    log.info("chat_worker_stopped")
    return 0
