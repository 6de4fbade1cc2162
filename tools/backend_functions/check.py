"""Run the backend's own chat edge functions, unmodified, against a real `ourvidz-worker run chat`
and `ourvidz-worker run wan` (the URL the backend keeps as the WAN worker's).

    python tools/backend_functions/check.py /path/to/ourvidz.git [--logs DIR] [--only NAME]

For each function of each era (a commit of Lazyjimpressions/ourvidz), the function's source tree
is exported from the backend's git history and served by Deno (`pip install deno`) with an import
map in place of the two modules that cannot be downloaded here (std's `serve`, supabase-js from
esm.sh: the same supabase-js comes from npm). A small in-memory Supabase (fake_supabase.py)
holds the rows the functions read; `functions.invoke` reaches other real functions of the same
era (get-active-worker-url, health-check-workers). The request each function gets is what the
frontend sends; the check passes when the function answers 200 with text the worker generated.
OpenRouter cannot be reached from here, so a function that strayed there would fail.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request, Response

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_supabase import FakeSupabase  # noqa: E402

HERE = Path(__file__).resolve().parent
USER_ID = "6f0c1a52-8a7e-4d7b-9a55-1d2b1c3e4f50"
CONVERSATION_ID = "9a1c2b3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d"
CHARACTER_ID = "c1a2b3c4-d5e6-4f70-8192-a3b4c5d6e7f8"
CHAT_KEY, WAN_KEY = "chat-key-for-the-check", "wan-key-for-the-check"
ERAS = {"2025-08 (pre f89876cb)": "f89876cb^", "2025-08": "6f6fe519", "2026-04": "ff5a74a9"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code < 500:
                return
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on port {port} after {timeout:.0f} s")


def tables(chat_url: str, wan_url: str) -> dict[str, list[dict[str, Any]]]:
    """The rows a chat session reads: the worker's URL, a user, a conversation with a character, templates."""
    now = datetime.now(UTC).isoformat()
    template = {"is_active": True, "token_limit": 200, "version": 1, "enhancer_model": "qwen_instruct",
                "system_prompt": "You are {{character_name}}, {{character_description}}. Personality: "
                                 "{{character_personality}}. Stay in character."}
    templates = [
        {"id": f"t-{tier}-{case}", "template_name": name, "use_case": case, "content_mode": tier,
         "target_model": None, "job_type": None, **template}
        for tier in ("sfw", "nsfw")
        for case, name in (("character_roleplay", f"Universal Roleplay - {tier.upper()}"),
                           ("chat_general", f"Playground Chat - {tier.upper()}"),
                           ("chat_creative", f"Creative Chat - {tier.upper()}"),
                           ("chat_admin", f"Admin Chat - {tier.upper()}"),
                           ("roleplay", f"Roleplay - {tier.upper()}"))
    ] + [{"id": f"t-enhance-{model}-{tier}", "template_name": f"{model} enhance {tier}", "use_case": "enhancement",
          "content_mode": tier, "target_model": model, "job_type": kind, **template}
         for tier in ("sfw", "nsfw") for model, kind in (("sdxl", "image"), ("wan", "video"))
    ] + [{"id": f"t-scene-{m}", "template_name": f"Scene Narrative - {m}", "use_case": "scene_narrative",
          "content_mode": m.lower(), "target_model": None, **template} for m in ("SFW", "NSFW")]
    return {
        "system_config": [{"id": 1, "config": {"chatWorkerUrl": chat_url, "wanWorkerUrl": wan_url,
                                               "workerUrl": wan_url, "updated_at": now}}],
        "profiles": [{"id": USER_ID, "age_verified": True, "username": "tester"}],
        "user_roles": [],
        "conversations": [{"id": CONVERSATION_ID, "user_id": USER_ID, "project_id": None,
                           "character_id": CHARACTER_ID, "user_character_id": None, "title": "Harbour",
                           "conversation_type": "character_roleplay", "status": "active",
                           "memory_tier": "conversation", "memory_data": {}, "created_at": now, "updated_at": now}],
        "characters": [{"id": CHARACTER_ID, "user_id": USER_ID, "name": "Mara",
                        "description": "a lighthouse keeper", "persona": "calm, dry humour",
                        "traits": "observant", "appearance_tags": ["red coat"], "voice_tone": "warm",
                        "mood": "curious", "content_rating": "sfw", "interaction_count": 0,
                        "image_url": None, "reference_image_url": None, "gender": "female",
                        "system_prompt": None, "voice_examples": [], "forbidden_phrases": [],
                        "scene_behavior_rules": {}, "created_at": now}],
        "messages": [{"id": "m-1", "conversation_id": CONVERSATION_ID, "sender": "user",
                      "content": "Hello there.", "created_at": now}],
        "prompt_templates": templates,
        "api_models": [], "api_providers": [], "character_scenes": [],
    }


@dataclass
class Case:
    era: str
    function: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    generates: str = "chat /chat"  # the worker and route that must have produced the reply
    before: tuple[str, ...] = ()  # functions of the same era called first, as the backend's scheduler does
    reply: Callable[[dict[str, Any]], str | None] = lambda answer: answer.get("response")


SCENE = {"sceneContext": {"characters": [{"name": "Mara", "visualDescription": "red coat", "role": "keeper"}],
                          "setting": "a harbour at dusk", "mood": "calm", "actions": ["looks out"],
                          "isNSFW": False, "visualElements": ["lamp"], "positioning": ["standing"]},
         "conversationHistory": ["Hello there.", "Evening."], "characterName": "Mara",
         "characterDescription": "a lighthouse keeper", "characterPersonality": "calm"}
USER_HEADERS = {"Authorization": "Bearer user-jwt-for-the-check"}
PLAYGROUND = {"conversation_id": CONVERSATION_ID, "message": "Tell me about the light."}
ROLEPLAY = {"message": "Tell me about the light.", "conversation_id": CONVERSATION_ID, "character_id": CHARACTER_ID,
            "model_provider": "chat_worker", "memory_tier": "conversation", "content_tier": "sfw", "user_id": USER_ID}


def cases() -> list[Case]:
    enhance_2025 = {"prompt": "a cat on a windowsill", "jobType": "sdxl_image_fast", "quality": "fast",
                    "selectedModel": "qwen_instruct", "user_id": USER_ID}
    enhance_2026 = {"prompt": "a harbour at dusk", "contentType": "scene_creation",
                    "selectedModel": "qwen_instruct", "contentRating": "sfw"}
    return [
        Case("2025-08 (pre f89876cb)", "playground-chat", PLAYGROUND, USER_HEADERS),
        Case("2025-08", "playground-chat", PLAYGROUND, USER_HEADERS),
        Case("2025-08", "enhance-prompt", enhance_2025, USER_HEADERS, generates="chat /enhance",
             reply=lambda a: a.get("enhanced_prompt")),
        # qwen_base goes to the WAN worker's URL as `{inputs, parameters}` with no key; the WAN
        # worker hands it to the chat worker through chat_queue.
        Case("2025-08", "enhance-prompt", {**enhance_2025, "selectedModel": "qwen_base"}, USER_HEADERS,
             generates="wan /generate", reply=lambda a: a.get("enhanced_prompt")),
        Case("2025-08", "roleplay-chat", ROLEPLAY, USER_HEADERS),
        Case("2026-04", "playground-chat", {**PLAYGROUND, "model_provider": "chat_worker", "content_tier": "sfw"},
             USER_HEADERS),
        Case("2026-04", "roleplay-chat", ROLEPLAY, USER_HEADERS, before=("health-check-workers",)),
        Case("2026-04", "scene-narrative", SCENE, {"Authorization": "Bearer anon"},
             reply=lambda a: a.get("narrative")),
        Case("2026-04", "enhance-prompt", enhance_2026, USER_HEADERS, generates="chat /enhance",
             reply=lambda a: a.get("enhanced_description")),
    ]


@contextlib.contextmanager
def worker(engine: str, model_dir: Path, log: io.TextIOBase) -> Iterator[str]:
    """`ourvidz-worker run ENGINE` with the keys set and the allowances the backend's key-less callers need."""
    port = free_port()
    env = {**os.environ, "CHAT_WORKER_API_KEY": CHAT_KEY, "WAN_WORKER_API_KEY": WAN_KEY,
           "CHAT_ALLOW_UNAUTHENTICATED_CHAT": "true", "CHAT_ALLOW_UNAUTHENTICATED_GENERATE": "true",
           "CHAT_MAX_NEW_TOKENS": "24"}
    process = subprocess.Popen(["ourvidz-worker", "run", engine, "--model", str(model_dir), "--device", "cpu",
                                "--health-port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", 180)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(30)


class WorkerTap:
    """A recording pass-through in front of a worker: which paths each function called, with or without a key."""

    def __init__(self, name: str, worker_url: str, calls: list[tuple[str, str, str, bool, int]]) -> None:
        self.worker_url = worker_url
        self.calls = calls  # (worker, method, path, sent a key, status), shared by the taps of a case
        self.app = FastAPI()

        @self.app.api_route("/{path:path}", methods=["GET", "POST", "OPTIONS"])
        async def forward(path: str, request: Request) -> Response:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
            async with httpx.AsyncClient(timeout=180) as client:
                answer = await client.request(request.method, f"{self.worker_url}/{path}",
                                              content=await request.body(), headers=headers)
            self.calls.append((name, request.method, f"/{path}", "authorization" in request.headers,
                               answer.status_code))
            return Response(answer.content, answer.status_code, media_type=answer.headers.get("content-type"))


@contextlib.contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port(port, 30)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextlib.contextmanager
def deno_function(tree: Path, name: str, env: dict[str, str], log: io.TextIOBase) -> Iterator[str]:
    port = free_port()
    entry = tree / "supabase" / "functions" / name / "index.ts"
    process = subprocess.Popen(
        ["deno", "run", "--allow-all", "--no-check", f"--import-map={HERE / 'import_map.json'}", str(entry)],
        env={**os.environ, **env, "PORT": str(port)}, stdout=log, stderr=subprocess.STDOUT, cwd=tree)
    try:
        wait_for_port(port, 120)  # a request would run the function
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def export_tree(repo: Path, commit: str, into: Path) -> Path:
    archive = subprocess.run(["git", "--git-dir", str(repo), "archive", commit, "supabase/functions"],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def run_case(case: Case, tree: Path, workers: dict[str, str], logs: Path) -> tuple[bool, str]:
    calls: list[tuple[str, str, str, bool, int]] = []
    with contextlib.ExitStack() as stack, open(logs / f"{ERAS[case.era].replace('^', '-parent')}-{case.function}.log", "w") as log:
        chat_url, wan_url = (stack.enter_context(serving(WorkerTap(name, workers[name], calls).app))
                             for name in ("chat", "wan"))
        supabase = FakeSupabase(tables(chat_url, wan_url), user={"id": USER_ID, "email": "t@example.com",
                                                                 "aud": "authenticated", "role": "authenticated"})
        supabase_url = stack.enter_context(serving(supabase.app))
        env = {"SUPABASE_URL": supabase_url, "SUPABASE_SERVICE_ROLE_KEY": "service-role",
               "SUPABASE_ANON_KEY": "anon", "CHAT_WORKER_URL": chat_url, "WAN_WORKER_URL": wan_url,
               "CHAT_WORKER_API_KEY": CHAT_KEY, "WAN_WORKER_API_KEY": WAN_KEY, **case.env}
        helpers = {name: stack.enter_context(deno_function(tree, name, env, log))
                   for name in ("get-active-worker-url", "health-check-workers")
                   if (tree / "supabase" / "functions" / name).is_dir()}
        supabase.functions.update(helpers)
        for name in case.before:
            httpx.post(f"{helpers[name]}/", json={}, headers=case.headers, timeout=120)
        url = stack.enter_context(deno_function(tree, case.function, env, log))
        answer = httpx.post(f"{url}/", json=case.body, headers={"Content-Type": "application/json", **case.headers},
                            timeout=180)
    try:
        body = answer.json()
    except ValueError:
        body = {"raw": answer.text[:200]}
    text = case.reply(body) if isinstance(body, dict) else None
    generated = [c for c in calls if c[1] == "POST" and f"{c[0]} {c[2]}" == case.generates and c[4] == 200]
    ok = answer.status_code == 200 and bool(text) and body.get("success", True) is not False and bool(generated)
    called = ", ".join(f"{w}: {m} {p} ({'key' if k else 'no key'}) {st}" for w, m, p, k, st in calls)
    return ok, f"workers saw: {called or 'nothing'}; function answered HTTP {answer.status_code}: {json.dumps(body)[:160]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backend_git_dir", type=Path)
    parser.add_argument("--logs", type=Path, default=None, help="keep the functions' and worker's logs here")
    parser.add_argument("--only", default="", help="run only functions whose name contains this")
    args = parser.parse_args()
    if not shutil.which("deno"):
        print("deno is not installed: pip install deno", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="backend-functions-"))
    logs = args.logs or work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for engine in ("chat", "wan"):
        subprocess.run(["ourvidz-worker", "make-tiny-model", engine, str(work / f"tiny-{engine}")], check=True,
                       capture_output=True)
    failures = 0
    with contextlib.ExitStack() as stack:
        workers = {engine: stack.enter_context(worker(engine, work / f"tiny-{engine}",
                                                      stack.enter_context(open(logs / f"{engine}-worker.log", "w"))))
                   for engine in ("chat", "wan")}
        for case in cases():
            if args.only not in case.function:
                continue
            tree = work / "trees" / ERAS[case.era].replace("^", "-parent")
            if not tree.exists():
                export_tree(args.backend_git_dir, ERAS[case.era], tree)
            ok, detail = run_case(case, tree, workers, logs)
            failures += not ok
            print(f"{'PASS' if ok else 'FAIL'}  {case.era:24} {case.function:18} {detail}", flush=True)
    print(f"logs: {logs}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
