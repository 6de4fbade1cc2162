"""`bench all`'s report: the rows so far as `report.json` and as a Markdown table in `report.md`,
rewritten after every row so that a run cut short keeps what it measured."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from workers.bench.step_profile import summary as step_summary

Measured = dict[str, Any] | float  # a `figure` of samples, or a value that is not timed (a set GPU time)


def _side(name: str, value: Measured, metric: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {"name": name, metric: round(value, 4)}
    return {"name": name, metric: round(value["median"], 4), "spread": [round(value["min"], 4), round(value["max"], 4)],
            "samples": value["samples"]}


def row(bench: str, device: str, settings: dict, baseline: tuple[str, Measured], ours: tuple[str, Measured],
         metric: str, better: str, **extra) -> dict[str, Any]:
    """A row: each side's median (with its spread and samples), and the ratio of the medians."""
    base, mine = _side(*baseline, metric), _side(*ours, metric)
    ratio = mine[metric] / base[metric] if base[metric] else None
    return {"bench": bench, "device": device, "settings": settings, "metric": metric, "better": better,
            "baseline": base, "ours": {**mine, **extra}, "ratio": round(ratio, 3) if ratio is not None else None}


def add_row(rows: list[dict], row: dict, peak: float, begun: float, out: Path, name: str, tiny: bool,
            started: float) -> str:
    """Adds a row and rewrites the report: a run cut short (a lease's end, a later crash) keeps what it measured."""
    row["peak_tflops_measured"] = round(peak, 3)
    row["bench_seconds"] = round(time.monotonic() - begun, 1)
    rows.append(row)
    (out / "report.json").write_text(json.dumps(rows, indent=2, default=str))
    table = markdown(rows, name, peak, tiny, time.monotonic() - started)
    (out / "report.md").write_text(table)
    return table


UNITS = {"seconds_per_image": "s/image", "seconds_per_job": "s/job", "seconds": "s", "wall_seconds": "s",
         "tokens_per_second": "tokens/s"}


def _shown(side: dict, metric: str) -> str:
    """`name: median unit (min–max, n samples)`, or the value alone when it was not timed."""
    unit = UNITS.get(metric, metric)
    text = f"{side['name']}: {side[metric]:g} {unit}"
    if "spread" in side:
        low, high = side["spread"]
        text += f" ({low:g}–{high:g}, {len(side['samples'])} samples)"
    return text


def markdown(rows: list[dict], device: str, peak: float, tiny: bool, seconds: float) -> str:
    lines = [f"# ourvidz-worker bench all: {device}, {'tiny models' if tiny else 'full-size random weights'}",
             "", f"Measured peak (matmul, {'bf16' if device != 'CPU' else 'fp32'}): {peak:.2f} TFLOP/s. "
             f"Whole run: {seconds:.0f} s. Each timed figure is the median of its samples (spread: min–max); "
             "ratio = ours / baseline of the medians.", "",
             "| bench | settings | baseline | ours | ratio | ms/step | MFU | ready s | pixels vs exact (mean/max, 0-1) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['bench']} | {r.get('variant', '')} | | error: {r['error'][:160]} | | | | | |")
            continue
        metric = r["metric"]
        settings = ", ".join(f"{k} {v}" for k, v in r["settings"].items() if k != "switches" and v not in (None, {}))
        ours = r["ours"]
        mfu = f"{ours['mfu'] * 100:.2f}%" if ours.get("mfu") is not None else ""
        delta = ours.get("pixel_difference") or {}
        pixels = f"{delta['mean']:g} / {delta['max']:g}" if delta else ""
        lines.append(f"| {r['bench']} | {settings} | {_shown(r['baseline'], metric)} | "
                     f"{_shown(ours, metric)} | {r['ratio']} ({r['better']} is better) | "
                     f"{ours.get('ms_per_step') or ''} | {mfu} | {ours.get('ready_s', '')} | {pixels} |")
    profiles = [r["ours"]["step_profile"] for r in rows if "step_profile" in r.get("ours", {})]
    lines += ["", *(f"Chat decoding profile: {step_summary(p)}" for p in profiles)] if profiles else []
    return "\n".join(lines) + "\n"
