"""The one registry of engines, and the composition root: per engine, its queues, job types, URL
announcement, tiny-model builders, model check, how to build it and how its jobs are decoded.
`build_worker` wires an engine into the runtime with everything it needs (Redis, storage,
callbacks, reference fetcher, enhancement, metrics). It takes plain values and a mapping of
options, never a command line; what cannot work is a `ConfigError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.decode.decoder import Decoder, Planner, plan_as_given
from shared.engine.contract import Engine
from shared.ops.settings import Settings
from shared.source import keys
from workers import model_check
from workers.config_error import ConfigError

SDXL_TYPES = ("sdxl_image_fast", "sdxl_image_high")
WAN_TYPES = ("image_fast", "image_high", "video_fast", "video_high", "image7b_fast_enhanced",
             "image7b_high_enhanced", "video7b_fast_enhanced", "video7b_high_enhanced")


@dataclass(frozen=True)
class EngineSpec:
    name: str
    queues: tuple[str, ...]
    job_types: tuple[str, ...] | None  # None: every type routed to its queues
    build: Callable[[str | None, Settings, Mapping[str, Any]], Engine]  # (model, settings, options) -> engine
    planner: Planner | None = None  # decode for generation engines; None: the engine brings its own stages
    announce: str | None = None  # backend function told this worker's RunPod URL
    tiny_models: dict[str, Callable[[str], None]] = field(default_factory=dict)  # make-tiny-model name -> builder(dir)
    enhances_prompts: bool = False  # `*_enhanced` types are rewritten by the chat worker first
    check_model: Callable[[str], None] | None = None  # raises ConfigError when the model is not what it loads
    libraries: tuple[str, ...] = ()  # model libraries it loads (their logs are routed into ours)
    add_routes: Callable[[Any, Any], None] | None = None  # (app, worker): routes beside /health and /metrics


def _sim(_model, _settings, options: Mapping[str, Any]) -> Engine:
    from workers.sim import SimEngine

    return SimEngine(gpu_seconds=options.get("gpu_seconds", 1.0), max_batch_images=options.get("batch_images", 1))


def _sdxl(model, settings, _options) -> Engine:
    from workers.sdxl.engine import SDXLEngine

    if not model:
        raise ConfigError("run sdxl needs --model (or MODEL_PATH): a diffusers folder or a .safetensors checkpoint")
    return SDXLEngine(model, settings.sdxl)


def _wan(model, settings, _options) -> Engine:
    from workers.wan.engine import WANEngine

    if not model:
        raise ConfigError("run wan needs --model (or MODEL_PATH): a diffusers Wan 2.1 folder (T2V or VACE)")
    return WANEngine(model, settings.wan)


def _chat(model, settings, _options) -> Engine:
    from workers.chat.engine import ChatEngine

    if not model:
        raise ConfigError("run chat needs --model (or MODEL_PATH): a Qwen2.5 Instruct folder")
    return ChatEngine(model, settings.chat)


def _plan_sdxl(job, tools):
    from workers.sdxl.plan import plan_sdxl

    return plan_sdxl(job, tools)


def _plan_wan(job, tools):
    from workers.wan.plan import plan_wan

    return plan_wan(job, tools)


# Tiny random-weight models (make-tiny-model, the tests): imported only when one is made.
def _tiny_sdxl(folder: str) -> None:
    from workers.sdxl.tiny import make_tiny_sdxl

    make_tiny_sdxl(folder)


def _tiny_wan(folder: str) -> None:
    from workers.wan.tiny import make_tiny_wan

    make_tiny_wan(folder)


def _wan_routes(app, worker) -> None:
    from workers.wan.generate_route import add_generate_route

    add_generate_route(app, worker)


def _tiny_vace(folder: str) -> None:
    from workers.wan.tiny import make_tiny_vace

    make_tiny_vace(folder)


def _tiny_chat(folder: str) -> None:
    from workers.chat.tiny import make_tiny_chat

    make_tiny_chat(folder)


ENGINES: dict[str, EngineSpec] = {
    "sim": EngineSpec("sim", keys.JOB_QUEUES, None, _sim, plan_as_given),
    "sdxl": EngineSpec("sdxl", (keys.SDXL_QUEUE,), SDXL_TYPES, _sdxl, _plan_sdxl,
                       tiny_models={"sdxl": _tiny_sdxl}, check_model=model_check.check_sdxl,
                       libraries=("transformers", "diffusers")),
    "wan": EngineSpec("wan", (keys.WAN_QUEUE,), WAN_TYPES, _wan, _plan_wan, announce="update-worker-url",
                      tiny_models={"wan": _tiny_wan, "wan-vace": _tiny_vace},
                      enhances_prompts=True, check_model=model_check.check_wan, libraries=("transformers", "diffusers"),
                      add_routes=_wan_routes),
    "chat": EngineSpec("chat", (keys.CHAT_QUEUE,), ("chat", "enhance"), _chat, announce="register-chat-worker",
                       tiny_models={"chat": _tiny_chat}, check_model=model_check.check_chat,
                       libraries=("transformers",)),
}


def tiny_model_builders() -> dict[str, Callable[[str], None]]:
    return {name: target for spec in ENGINES.values() for name, target in spec.tiny_models.items()}


def spec_for(engine: Engine | str) -> EngineSpec:
    name = engine if isinstance(engine, str) else engine.name
    if name not in ENGINES:
        raise ConfigError(f"unknown engine {name!r}; available: {', '.join(ENGINES)}")
    return ENGINES[name]


def build_stages(engine: Engine, settings: Settings, client, *, storage=None, sender=None, metrics=None):
    """Decode and delivery for a generation engine, wired from `settings`: what a queue worker, the
    serverless handler and the serial benchmark all run around the engine."""
    from concurrent.futures import ThreadPoolExecutor

    from shared.decode.fetch import ReferenceFetcher
    from shared.decode.presets import load_presets
    from shared.deliver.delivery import Delivery
    from shared.deliver.outbox import CallbackSender
    from shared.deliver.storage import BucketPolicy, Uploader, make_storage
    from shared.runtime.stages import GenerationStages
    from shared.source.chat_client import request_enhancement

    spec = spec_for(engine)
    presets = load_presets(str(settings.presets_file))
    policy = BucketPolicy(presets)
    store = storage or make_storage(settings)
    uploader = Uploader(store, policy, settings.storage_retries, settings.retry_base_seconds)
    delivery = Delivery(settings.contract, uploader, policy, sender or CallbackSender(settings, client), client,
                        settings.worker_id, settings.result_ttl_seconds, metrics=metrics,
                        upload_pool=ThreadPoolExecutor(settings.upload_concurrency, thread_name_prefix="upload"))
    enhance = None
    if spec.enhances_prompts:
        timeout = settings.wan.enhance_timeout_seconds

        def enhance(prompt: str, job_type: str) -> str | None:
            return request_enhancement(client, settings.contract, prompt, job_type, timeout)

    decoder = Decoder(presets, settings.preset_policy, spec.planner, engine, spec.job_types,
                      fetch_image=ReferenceFetcher(settings, store).fetch_image, enhance=enhance)
    return GenerationStages(decoder, delivery, settings.contract)


def build_worker(engine: Engine, settings: Settings, *, redis_client=None, storage=None, sender=None,
                 queues: tuple[str, ...] | None = None, device: str = "cpu", max_jobs: int | None = None,
                 health_port: int | None = None, install_signal_handlers: bool = True):
    """An engine in the runtime, with its sources, decode and delivery wired from `settings`."""
    from shared.deliver.outbox import CallbackSender
    from shared.ops.metrics import WorkerMetrics
    from shared.runtime.worker import Worker
    from shared.source.queue import connect

    spec = spec_for(engine)
    client = redis_client or connect(settings.effective_redis_url)
    sender = sender or CallbackSender(settings, client)
    metrics = WorkerMetrics(settings.worker_id, engine.name)  # before the stages, which count into it
    common = dict(redis_client=client, queues=queues or spec.queues, outbox=sender, device=device, max_jobs=max_jobs,
                  health_port=health_port, install_signal_handlers=install_signal_handlers,
                  announce_function=spec.announce, metrics=metrics)
    if spec.planner is None:  # the chat engine: its own stages and HTTP routes
        from workers.chat.stages import chat_worker

        return chat_worker(engine, settings, **common)
    stages = build_stages(engine, settings, client, storage=storage, sender=sender, metrics=metrics)
    return Worker(engine, settings, stages, add_routes=spec.add_routes, **common)
