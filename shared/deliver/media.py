"""Turning model outputs into the files the backend serves: PNG, MP4 (H.264), WEBP thumbnails."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Sequence

import numpy as np
from PIL import Image

THUMBNAIL_SIDE = 256


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # level 1: fast, and these are large
    return buffer.getvalue()


def thumbnail_webp(image: Image.Image, side: int = THUMBNAIL_SIDE) -> bytes:
    """WEBP whose longest side is `side` pixels (never upscaled)."""
    thumb = image.convert("RGB")
    thumb.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    thumb.save(buffer, format="WEBP", quality=80, method=4)
    return buffer.getvalue()


def fit_image(image: Image.Image, width: int, height: int, policy: str) -> Image.Image:
    """The reference at the job's size: `cover` crops the overflow, `contain` pads, `stretch` distorts."""
    if image.size == (width, height):
        return image
    if policy == "stretch":
        return image.resize((width, height), Image.Resampling.LANCZOS)
    scale = (max if policy == "cover" else min)(width / image.width, height / image.height)
    resized = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                           Image.Resampling.LANCZOS)
    if policy == "cover":
        left, top = (resized.width - width) // 2, (resized.height - height) // 2
        return resized.crop((left, top, left + width, top + height))
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    canvas.paste(resized, ((width - resized.width) // 2, (height - resized.height) // 2))
    return canvas


def frames_to_uint8(frames: Sequence[Image.Image] | np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 from PIL frames or a float [0, 1] / uint8 array."""
    if isinstance(frames, np.ndarray):
        array = frames
        if array.dtype != np.uint8:
            array = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        return array
    return np.stack([np.asarray(f.convert("RGB")) for f in frames])


def mp4_bytes(frames: Sequence[Image.Image] | np.ndarray, fps: int) -> bytes:
    """H.264, yuv420p (plays everywhere), faststart (playable while it downloads)."""
    import imageio_ffmpeg

    array = frames_to_uint8(frames)
    count, height, width = array.shape[:3]
    if count == 0:
        raise ValueError("a video needs at least one frame")
    # yuv420p needs even sides: pad by one edge pixel rather than rescale.
    pad_h, pad_w = height % 2, width % 2
    if pad_h or pad_w:
        array = np.pad(array, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        height, width = height + pad_h, width + pad_w
    fd, path = tempfile.mkstemp(suffix=".mp4")
    os.close(fd)
    try:
        writer = imageio_ffmpeg.write_frames(
            path,
            (width, height),
            fps=fps,
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            quality=None,
            bitrate=None,
            macro_block_size=1,
            ffmpeg_log_level="error",
            output_params=["-crf", "20", "-preset", "veryfast", "-movflags", "+faststart"],
        )
        writer.send(None)
        for frame in array:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


def middle_frame(frames: Sequence[Image.Image] | np.ndarray) -> Image.Image:
    array = frames_to_uint8(frames)
    return Image.fromarray(array[len(array) // 2])


def probe_mp4(data: bytes) -> dict:
    """Frame count, fps and size of an MP4, read back by decoding it (used by tests and doctor)."""
    import imageio_ffmpeg

    fd, path = tempfile.mkstemp(suffix=".mp4")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        reader = imageio_ffmpeg.read_frames(path)
        meta = next(reader)
        frames = sum(1 for _ in reader)
        return {"frames": frames, "fps": meta["fps"], "size": tuple(meta["size"]), "codec": meta.get("codec")}
    finally:
        os.unlink(path)
