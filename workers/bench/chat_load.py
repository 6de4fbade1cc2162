"""The chat benchmark's callers, in a process of their own: `python -m workers.bench.chat_load < plan.json`.

Separate from the server so that the callers' own work (HTTP parsing, JSON) does not share the
server's interpreter and skew what is measured. Reads a plan as JSON on stdin, runs its steps in
order against a running chat worker, and prints one JSON result per step on stdout.

Steps (`op`):
- `sequential`: `n` requests one after another; `concurrent`: `n` requests all at once, each on
  its own connection. Both report answered/failed counts, latencies and completion tokens.
- `beside`: a `long` request, then after `delay` seconds a `short` one; both latencies.
- `probe`: `n` GETs (or POSTs with `body`) to `path` on one kept-alive connection, in turn; the
  latencies in milliseconds. `key` null sends no key, so a POST probes the 401 path.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time

import httpx


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))] if ordered else float("nan")


async def _one(client: httpx.AsyncClient, url: str, headers: dict, body: dict) -> dict:
    started = time.perf_counter()
    try:
        reply = await client.post(url, json=body, headers=headers)
        seconds = time.perf_counter() - started
        if reply.status_code != 200:
            return {"ok": False, "status": reply.status_code, "seconds": seconds}
        return {"ok": True, "seconds": seconds, "tokens": reply.json()["usage"]["completion_tokens"]}
    except httpx.HTTPError as exc:  # reset, refused, timed out: not answered
        return {"ok": False, "error": type(exc).__name__, "seconds": time.perf_counter() - started}


def _summary(results: list[dict], wall: float) -> dict:
    answered = [r for r in results if r["ok"]]
    latencies = [r["seconds"] for r in answered]
    tokens = sum(r["tokens"] for r in answered)
    errors: dict[str, int] = {}
    for r in results:
        if not r["ok"]:
            kind = r.get("error") or f"http_{r.get('status')}"
            errors[kind] = errors.get(kind, 0) + 1
    return {"requests": len(results), "answered": len(answered), "errors": errors, "wall_seconds": round(wall, 3),
            "tokens": tokens, "tokens_per_second": round(tokens / wall, 1) if wall > 0 else 0.0,
            "p50_latency_s": round(_percentile(latencies, 0.5), 3) if latencies else None,
            "p95_latency_s": round(_percentile(latencies, 0.95), 3) if latencies else None}


async def _run(plan: dict) -> list[dict]:
    base, key = plan["url"].rstrip("/"), plan.get("key")
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    completions = f"{base}/v1/chat/completions"
    out = []
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        for step in plan["steps"]:
            op, started = step["op"], time.perf_counter()
            if op == "sequential":
                results = [await _one(client, completions, auth, step["body"]) for _ in range(step["n"])]
                out.append(_summary(results, time.perf_counter() - started))
            elif op == "concurrent":
                # A fresh connection per caller, as that many independent clients would open.
                async with httpx.AsyncClient(timeout=600, limits=limits) as burst:
                    results = await asyncio.gather(*[_one(burst, completions, auth, step["body"])
                                                     for _ in range(step["n"])])
                out.append(_summary(list(results), time.perf_counter() - started))
            elif op == "beside":
                long = asyncio.ensure_future(_one(client, completions, auth, step["long"]))
                await asyncio.sleep(step["delay"])
                async with httpx.AsyncClient(timeout=600) as other:
                    short = await _one(other, completions, auth, step["short"])
                out.append({"long": await long, "short": short})
            elif op == "probe":
                headers = {"Authorization": f"Bearer {step['key']}"} if step.get("key") else {}
                timings, statuses = [], set()
                async with httpx.AsyncClient(timeout=30) as probe:
                    for _ in range(step["n"]):
                        begun = time.perf_counter()
                        if "body" in step:
                            reply = await probe.post(base + step["path"], json=step["body"], headers=headers)
                        else:
                            reply = await probe.get(base + step["path"], headers=headers)
                        timings.append((time.perf_counter() - begun) * 1000)
                        statuses.add(reply.status_code)
                out.append({"path": step["path"], "statuses": sorted(statuses), "n": step["n"],
                            "median_ms": round(statistics.median(timings), 2),
                            "p95_ms": round(_percentile(timings, 0.95), 2)})
            else:
                raise ValueError(f"unknown step {op!r}")
    return out


def main() -> None:
    plan = json.load(sys.stdin)
    json.dump(asyncio.run(_run(plan)), sys.stdout)


if __name__ == "__main__":
    main()
