"""Schedulers by the names the backend and users write, built from the model's own config."""

from __future__ import annotations

import re

# name → (diffusers class, extra config)
SCHEDULERS = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler",
                        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "dpmpp_sde_karras": ("DPMSolverMultistepScheduler",
                         {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
}
ALIASES = {"euler_ancestral": "euler_a", "euler_a_": "euler_a", "dpmpp": "dpmpp_2m", "dpm_2m": "dpmpp_2m",
           "dpmpp_2m_k": "dpmpp_2m_karras", "karras": "dpmpp_2m_karras", "uni_pc": "unipc"}


def normalize_scheduler(name: str) -> str:
    """'DPM++ 2M Karras', 'dpm++_2m_karras', 'dpmpp-2m-karras' → 'dpmpp_2m_karras'."""
    key = re.sub(r"[\s\-.]+", "_", name.strip().lower()).replace("++", "pp").replace("+", "p")
    key = ALIASES.get(key, key)
    if key not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULERS)}")
    return key


def make_scheduler(name: str, base_config: dict):
    import diffusers

    class_name, extra = SCHEDULERS[normalize_scheduler(name)]
    cls = getattr(diffusers, class_name)
    return cls.from_config({**base_config, **extra})
