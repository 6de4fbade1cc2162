"""`ourvidz-worker fetch-models`: the production models onto the models volume, resumable.

Hub repositories go through huggingface_hub (resumable, checksummed, with progress bars). A
checkpoint given by URL (a fine-tuned SDXL) streams into `NAME.part`, resumes with an HTTP Range
request after an interruption, and is checked against `--sdxl-sha256` before it takes its name.
Without network it says so in one line and exits 1.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from urllib.parse import urlparse

import httpx

MODELS = {
    "sdxl": ("stabilityai/stable-diffusion-xl-base-1.0", "sdxl-base-1.0"),
    "wan": ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "Wan2.1-T2V-1.3B-Diffusers"),
    "chat": ("Qwen/Qwen2.5-7B-Instruct", "Qwen2.5-7B-Instruct"),
}
# For a single-file SDXL checkpoint only the architecture and tokenizers are needed from the hub.
SDXL_CONFIG_ONLY = ["model_index.json", "*/config.json", "scheduler/*", "tokenizer/*", "tokenizer_2/*"]


class FetchError(RuntimeError):
    pass


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_url(url: str, dest_dir: Path, sha256: str | None = None, client: httpx.Client | None = None) -> Path:
    """Resumable download of one file; verified against `sha256` when given."""
    from tqdm import tqdm

    name = Path(urlparse(url).path).name or "model.safetensors"
    final, part = dest_dir / name, dest_dir / (name + ".part")
    dest_dir.mkdir(parents=True, exist_ok=True)
    if final.exists() and (sha256 is None or sha256_of(final) == sha256):
        return final
    client = client or httpx.Client(timeout=httpx.Timeout(60.0, connect=15.0), follow_redirects=True)
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with client.stream("GET", url, headers=headers) as response:
            if response.status_code == 200 and have:
                have = 0  # the server ignored the range: start over
            elif response.status_code not in (200, 206):
                raise FetchError(f"{urlparse(url).hostname} answered {response.status_code} for {name}")
            total = have + int(response.headers.get("Content-Length", 0)) or None
            with part.open("ab" if have else "wb") as out, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                                 desc=name, disable=not sys.stderr.isatty()) as bar:
                for chunk in response.iter_bytes(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except httpx.TransportError as exc:
        raise FetchError(f"cannot reach {urlparse(url).hostname} ({type(exc).__name__}); offline? "
                         f"{part.name} keeps what arrived and the next run resumes") from exc
    if sha256 is not None:
        actual = sha256_of(part)
        if actual != sha256.lower():
            part.unlink()
            raise FetchError(f"{name}: sha256 {actual} does not match the expected {sha256}; the download was removed")
    part.rename(final)
    return final


def download_repo(repo_id: str, dest: Path, allow_patterns: list[str] | None = None) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_dir=dest, allow_patterns=allow_patterns))
    except Exception as exc:  # offline, refused, not found: one line, not a traceback
        raise FetchError(f"cannot fetch {repo_id} from the Hugging Face hub ({type(exc).__name__}); offline, or "
                         f"HF_TOKEN missing for a gated model?") from exc


def fetch_models(dest: str, only: list[str], sdxl: str | None = None, sdxl_sha256: str | None = None) -> dict[str, str]:
    root = Path(dest)
    fetched = {}
    for name in only:
        repo_id, folder = MODELS[name]
        if name == "sdxl" and sdxl and sdxl.startswith(("http://", "https://")):
            fetched["sdxl_checkpoint"] = str(download_url(sdxl, root / "sdxl", sdxl_sha256))
            fetched["sdxl_config"] = str(download_repo(repo_id, root / folder, SDXL_CONFIG_ONLY))
            continue
        if name == "sdxl" and sdxl:
            repo_id = sdxl  # another hub repository in diffusers layout
        fetched[name] = str(download_repo(repo_id, root / folder))
    return fetched
