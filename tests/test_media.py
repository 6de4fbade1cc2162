import io

import numpy as np
from PIL import Image

from shared.deliver.media import mp4_bytes, probe_mp4, thumbnail_webp
from workers.sim import draw_frame


def test_mp4_is_h264_with_the_frames_and_fps_asked_for():
    frames = np.stack([draw_frame(3, 96, 64, t / 16) for t in range(17)])
    data = mp4_bytes(frames, fps=16)
    info = probe_mp4(data)
    assert info == {"frames": 17, "fps": 16.0, "size": (96, 64), "codec": info["codec"]}
    assert "h264" in info["codec"]
    assert data.index(b"moov") < data.index(b"mdat")  # faststart: playable while downloading


def test_odd_sizes_are_padded_to_even_for_yuv420p():
    info = probe_mp4(mp4_bytes(np.zeros((3, 63, 65, 3), np.uint8), fps=8))
    assert info["frames"] == 3 and info["size"] == (66, 64)


def test_thumbnail_longest_side_is_256_and_webp():
    thumb = Image.open(io.BytesIO(thumbnail_webp(Image.new("RGB", (480, 832)))))
    assert thumb.format == "WEBP" and max(thumb.size) == 256 and thumb.size[0] < thumb.size[1]


def test_sim_frames_depend_only_on_seed_size_and_time():
    assert np.array_equal(draw_frame(5, 32, 16), draw_frame(5, 32, 16))
    assert not np.array_equal(draw_frame(5, 32, 16), draw_frame(6, 32, 16))
    assert not np.array_equal(draw_frame(5, 32, 16, 0.0), draw_frame(5, 32, 16, 0.5))
    assert draw_frame(5, 32, 16).shape == (16, 32, 3)
