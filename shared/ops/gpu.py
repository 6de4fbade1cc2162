"""GPU memory budgets, so several workers can share one card (the production pod runs SDXL, WAN
and chat on one 48 GB GPU): each process is capped at GPU_MEMORY_GB and fails its own job with
out-of-memory instead of starving its neighbours."""

from __future__ import annotations

from shared.ops.logging import get_logger

log = get_logger(component="gpu")


def apply_memory_budget(gigabytes: float | None, device: str) -> float | None:
    """Cap this process's CUDA allocator; returns the fraction applied, or None when there is nothing to cap."""
    if not gigabytes or not device.startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    index = torch.device(device).index or 0
    total = torch.cuda.get_device_properties(index).total_memory
    fraction = min(1.0, gigabytes * 2**30 / total)
    torch.cuda.set_per_process_memory_fraction(fraction, index)
    log.info("gpu_memory_budget", gigabytes=gigabytes, fraction=round(fraction, 3))
    return fraction


def resolve_dtype(name: str, device: str):
    """`auto`: bf16 on CUDA (fp16 speed, no fp16 overflow in SDXL's VAE), fp32 on CPU; else as named."""
    import torch

    named = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    if name in named:
        return named[name]
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so a timer measures the work and not its launch."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def random_init_device() -> str:
    """Where to draw a full-size model's random weights: a GPU draws billions in a second, a CPU
    takes a minute (the benchmarks' random-weight models only; real weights load from disk)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def usable_memory_bytes() -> int:
    """What this process may still allocate on the current CUDA card: the card's free memory,
    within the GPU_MEMORY_GB budget when one is set (apply_memory_budget). Not run on a GPU yet."""
    import torch

    free, total = torch.cuda.mem_get_info()
    get_fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)  # torch 2.6 and later
    if get_fraction is not None:
        free = min(free, int(get_fraction() * total) - torch.cuda.memory_reserved())
    return max(free, 0)
