"""Is `--model` what this engine loads? Read from the folder's config files before anything loads.

A wrong folder would otherwise fail deep inside diffusers or transformers (a hub-id error, a
tensor shape mismatch); these checks say in one line what the folder is and what was expected.
"""

from __future__ import annotations

import json
from pathlib import Path

from workers.config_error import ConfigError

SDXL_PIPELINES = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")
WAN_PIPELINES = ("WanPipeline", "WanVACEPipeline", "WanImageToVideoPipeline")


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def describe(path: Path) -> str:
    """What a model folder looks like, in a few words."""
    index = _json(path / "model_index.json")
    if index and index.get("_class_name"):
        return f"a diffusers {index['_class_name']} folder"
    config = _json(path / "config.json")
    if config:
        return f"a transformers {config.get('model_type') or (config.get('architectures') or ['?'])[0]} model"
    if path.is_file():
        return f"a {path.suffix or 'plain'} file"
    return "a folder with neither model_index.json nor config.json"


def _existing(model: str, engine: str) -> Path:
    path = Path(model).expanduser()
    if not path.exists():
        raise ConfigError(f"--model {model}: no such file or folder (run {engine} needs its model there; "
                         f"`ourvidz-worker fetch-models` downloads it, `make-tiny-model {engine} DIR` makes a tiny one)")
    return path


def check_sdxl(model: str) -> None:
    path = _existing(model, "sdxl")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ConfigError(f"--model {model} is {describe(path)}; run sdxl takes a .safetensors checkpoint "
                             "or a diffusers SDXL folder")
        return
    index = _json(path / "model_index.json") or {}
    if index.get("_class_name") not in SDXL_PIPELINES:
        raise ConfigError(f"--model {model} is {describe(path)}; run sdxl needs a diffusers SDXL folder "
                         f"(model_index.json: StableDiffusionXLPipeline) or a .safetensors checkpoint")


def check_wan(model: str) -> None:
    path = _existing(model, "wan")
    index = _json(path / "model_index.json") or {}
    if path.is_file() or index.get("_class_name") not in WAN_PIPELINES:
        raise ConfigError(f"--model {model} is {describe(path)}; run wan needs a diffusers Wan 2.1 folder "
                         "(model_index.json: WanPipeline or WanVACEPipeline)")


def check_chat(model: str) -> None:
    path = _existing(model, "chat")
    config = _json(path / "config.json") or {}
    architectures = config.get("architectures") or []
    if path.is_file() or not any(a.endswith("ForCausalLM") for a in architectures):
        raise ConfigError(f"--model {model} is {describe(path)}; run chat needs a transformers causal language "
                         "model folder (config.json: Qwen2ForCausalLM) with its tokenizer")
    if not any((path / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise ConfigError(f"--model {model} has no tokenizer files (tokenizer.json); copy them beside the weights")
