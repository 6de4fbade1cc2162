"""Wan's sampling solvers by the names payloads use (`unipc`, `dpm++`, `euler`), built with the preset shift."""

from __future__ import annotations

SOLVERS = ("unipc", "dpm++", "euler")
_ALIASES = {"unipc": "unipc", "dpm++": "dpm++", "dpmpp": "dpm++", "dpmsolver++": "dpm++", "dpm": "dpm++",
            "euler": "euler", "flowmatcheuler": "euler"}


def normalize_solver(name: str) -> str:
    key = name.strip().lower().replace(" ", "").replace("_", "").replace("-", "")
    if key not in _ALIASES:
        raise ValueError(f"unknown WAN solver {name!r}; known: {', '.join(SOLVERS)}")
    return _ALIASES[key]


def make_solver(name: str, base_config: dict, shift: float):
    import diffusers

    solver = normalize_solver(name)
    if solver == "unipc":
        return diffusers.UniPCMultistepScheduler.from_config(base_config, flow_shift=shift)
    if solver == "dpm++":
        return diffusers.DPMSolverMultistepScheduler.from_config(
            base_config, algorithm_type="dpmsolver++", prediction_type="flow_prediction", use_flow_sigmas=True,
            flow_shift=shift)
    return diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
