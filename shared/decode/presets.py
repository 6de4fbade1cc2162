"""Job presets, bounds and bucket limits: configs/presets.toml, read once per path."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Presets:
    types: dict[str, dict[str, Any]]
    bounds: dict[str, Any]
    defaults: dict[str, Any]
    buckets: dict[str, dict[str, Any]]

    def for_type(self, job_type: str) -> dict[str, Any]:
        if job_type not in self.types:
            raise KeyError(job_type)
        return self.types[job_type]


@lru_cache(maxsize=8)
def load_presets(path: str | Path) -> Presets:
    data = tomllib.loads(Path(path).read_text())
    types: dict[str, dict[str, Any]] = {}
    raw_types = data.get("types", {})
    for name, spec in raw_types.items():
        merged = dict(raw_types[spec["base"]]) if "base" in spec else {}
        merged.update({k: v for k, v in spec.items() if k != "base"})
        merged.setdefault("enhance_prompt", False)
        types[name] = merged
    return Presets(types=types, bounds=data["bounds"], defaults=data["defaults"], buckets=data["buckets"])
