"""`bench all`'s report: the rows so far as `report.json` and as a Markdown table in `report.md`,
rewritten after every row so that a run cut short keeps what it measured."""

from __future__ import annotations

import json
import time
from pathlib import Path


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


def markdown(rows: list[dict], device: str, peak: float, tiny: bool, seconds: float) -> str:
    lines = [f"# ourvidz-worker bench all: {device}, {'tiny models' if tiny else 'full-size random weights'}",
             "", f"Measured peak (matmul, {'bf16' if device != 'CPU' else 'fp32'}): {peak:.2f} TFLOP/s. "
             f"Whole run: {seconds:.0f} s. Ratio = ours / baseline of each row's metric.", "",
             "| bench | settings | baseline | ours | ratio | ms/step | MFU | ready s | pixels vs exact (mean/max) |",
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
        lines.append(f"| {r['bench']} | {settings} | {r['baseline']['name']}: {r['baseline'][metric]:g} | "
                     f"{ours['name']}: {ours[metric]:g} | {r['ratio']} ({r['better']} is better) | "
                     f"{ours.get('ms_per_step') or ''} | {mfu} | {ours.get('ready_s', '')} | {pixels} |")
    return "\n".join(lines) + "\n"
