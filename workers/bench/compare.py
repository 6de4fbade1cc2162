"""`ourvidz-worker bench compare A B`: two `bench all` reports, row by row. Each row's two ratios
and how far apart they are (|a − b| over the smaller), with how many rows agree within a bound:
whether a machine's figures agree with themselves, run after run."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from workers.bench import BenchInputError


def load(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    return json.loads((path / "report.json" if path.is_dir() else path).read_text())


def _label(row: dict[str, Any]) -> str:
    settings = row.get("settings", {})
    detail = ", ".join(f"{key} {settings[key]}" for key in ("mode", "media", "concurrent", "long_tokens", "rows",
                                                          "prompt_tokens") if key in settings)
    return f"{row['bench']}: {row.get('ours', {}).get('name', row.get('variant', ''))}, {detail}".rstrip(", ")


def compare(first: list[dict[str, Any]], second: list[dict[str, Any]], within: float = 15.0) -> dict[str, Any]:
    """Rows paired in order; a row with no ratio on either side (an error) is listed, not counted."""
    rows, apart = [], []
    for a, b in zip(first, second, strict=False):
        if _label(a) != _label(b):
            raise ValueError(f"the reports' rows differ: {_label(a)!r} against {_label(b)!r} (same benchmarks, "
                             "same variants, same order?)")
        ra, rb = a.get("ratio"), b.get("ratio")
        difference = abs(ra - rb) / min(ra, rb) * 100 if ra and rb else None
        if difference is not None:
            apart.append(difference)
        rows.append({"row": _label(a), "first": ra, "second": rb, "apart_percent": difference})
    summary = {"rows": len(apart), "within": sum(d <= within for d in apart), "bound_percent": within,
               "median_percent": statistics.median(apart) if apart else None,
               "worst_percent": max(apart) if apart else None, "unpaired": abs(len(first) - len(second))}
    return {"rows": rows, "summary": summary}


def table(result: dict[str, Any]) -> str:
    lines = ["| row | first ratio | second ratio | apart |", "|---|---|---|---|"]
    for r in result["rows"]:
        apart = f"{r['apart_percent']:.1f} %" if r["apart_percent"] is not None else "no ratio"
        lines.append(f"| {r['row']} | {r['first']} | {r['second']} | {apart} |")
    s = result["summary"]
    if s["rows"]:
        lines += ["", f"{s['within']} of {s['rows']} rows within {s['bound_percent']:g} %; median row "
                      f"{s['median_percent']:.1f} % apart, worst {s['worst_percent']:.1f} %"]
    if s["unpaired"]:
        lines.append(f"{s['unpaired']} rows of the longer report have no partner")
    return "\n".join(lines)


def run_from_args(args) -> dict[str, Any]:
    try:
        result = compare(load(args.first), load(args.second), args.within)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BenchInputError(str(exc)) from None
    return {**result, "table": table(result)}
