"""Paired videos (NAME_input / NAME_target) are packed only when their frames correspond in time."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from lavinkit.cli import main
from lavinkit.data.media import VideoTiming, encode_mp4, read_video_file, video_timing
from lavinkit.data.pack import PackOptionError, PairMismatchError, pack_videos, read_index
from lavinkit.data.schema import decode_pair
from lavinkit.data.shards import SkipLog, index_urls, raw_samples


def _scene(t: int) -> np.ndarray:
    """``t`` frames of a moving real picture, uint8 [T, 32, 48, 3]."""
    import skimage.data

    img = skimage.data.astronaut()
    return np.stack([img[100 + 2 * i:132 + 2 * i, 150 + i:198 + i] for i in range(t)])


def _pair(folder: Path, name: str, inp: np.ndarray, inp_fps: int, tgt: np.ndarray, tgt_fps: int) -> tuple[Path, Path]:
    folder.mkdir(exist_ok=True)
    paths = folder / f"{name}_input.mp4", folder / f"{name}_target.mp4"
    paths[0].write_bytes(encode_mp4(inp, fps=inp_fps))
    paths[1].write_bytes(encode_mp4(tgt, fps=tgt_fps))
    return paths


def test_video_timing_reads_count_rate_and_duration(tmp_path):
    inp, _ = _pair(tmp_path / "v", "clip", _scene(16), 16, _scene(8), 8)
    timing = video_timing(inp)
    assert (timing.frames, timing.fps, timing.duration) == (16, Fraction(16), pytest.approx(1.0))
    assert timing.describe() == f"{inp}: 16 frames at 16 fps (1.00 s)"


def test_video_timing_of_matroska_from_its_timestamps(tmp_path):
    import av

    path = tmp_path / "clip.mkv"  # Matroska stores no per-stream duration
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for frame in _scene(10):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    assert video_timing(path).describe() == f"{path}: 10 frames at 8 fps (1.25 s)"


def test_timing_match_rules():
    base = VideoTiming(Path("a.mp4"), 30, Fraction(30000, 1001), 1.001)
    assert base.matches(VideoTiming(Path("b.mp4"), 30, Fraction(2997, 100), 1.001))  # rates 0.001 % apart
    assert not base.matches(VideoTiming(Path("b.mp4"), 29, Fraction(30000, 1001), 0.968))  # one frame short
    assert not base.matches(VideoTiming(Path("b.mp4"), 30, Fraction(25), 1.2))  # another rate
    assert not base.matches(VideoTiming(Path("b.mp4"), 30, Fraction(30000, 1001), 1.1))  # stretched timestamps
    assert base.matches(VideoTiming(Path("b.mp4"), 30, Fraction(30000, 1001), 1.001 + 0.01))  # < half a frame


def test_pack_refuses_the_same_scene_at_another_frame_rate(tmp_path):
    scene = _scene(16)
    inp, tgt = _pair(tmp_path / "v", "clip", scene, 16, scene[::2], 8)  # same second, half the frames
    with pytest.raises(PairMismatchError) as err:
        pack_videos(tmp_path / "v", tmp_path / "out", task="t", frames=5, size=32)
    assert f"{inp}: 16 frames at 16 fps (1.00 s) vs {tgt}: 8 frames at 8 fps (1.00 s)" in str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_pack_refuses_a_target_missing_its_first_frame(tmp_path):
    scene = _scene(17)
    _pair(tmp_path / "v", "good", scene, 8, scene, 8)
    inp, tgt = _pair(tmp_path / "v", "late", scene, 8, scene[1:], 8)
    with pytest.raises(PairMismatchError, match=r"late_input\.mp4: 17 frames at 8 fps \(2\.12 s\) vs "
                                                r".*late_target\.mp4: 16 frames at 8 fps \(2\.00 s\)") as err:
        pack_videos(tmp_path / "v", tmp_path / "out", task="t", frames=5, size=32)
    assert "good_" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_corresponding_pairs_are_packed(tmp_path):
    scene = _scene(9)
    _pair(tmp_path / "v", "walk", scene, 8, scene[:, ::-1].copy(), 8)
    index = read_index(pack_videos(tmp_path / "v", tmp_path / "out", task="mirror", frames=5, stride=4, size=None))
    assert index["tasks"]["mirror"]["count"] == 2


def test_cli_exits_2_with_one_line_naming_both_files(tmp_path, capsys):
    scene = _scene(16)
    inp, tgt = _pair(tmp_path / "v", "clip", scene, 16, scene[::2], 8)
    out = tmp_path / "out"
    assert main(["data", "pack", "--videos", str(tmp_path / "v"), "--task", "t", "--frames", "5",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(inp) in err and str(tgt) in err
    assert "16 frames at 16 fps (1.00 s)" in err and "8 frames at 8 fps (1.00 s)" in err
    assert not out.exists()


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_read_video_file_resamples_to_the_frame_on_screen(tmp_path):
    scene = _scene(16)
    path = tmp_path / "v.mp4"
    path.write_bytes(encode_mp4(scene, fps=16))
    full = read_video_file(path)
    assert _mad(read_video_file(path, fps=8), full[::2]) == 0  # every other frame, bit for bit
    assert _mad(read_video_file(path, fps=32), np.repeat(full, 2, axis=0)) == 0  # each frame shown twice
    assert _mad(read_video_file(path, fps=5), full[[0, 3, 6, 9, 12]]) == 0  # at 0, 0.2, 0.4, 0.6, 0.8 s
    assert read_video_file(path, fps=8, max_frames=3).shape[0] == 3


def test_fps_option_packs_the_same_scene_at_two_rates_aligned(tmp_path):
    scene = _scene(16)
    _pair(tmp_path / "v", "clip", scene, 16, scene[::2], 8)
    index = pack_videos(tmp_path / "v", tmp_path / "out", task="t", frames=5, stride=3, size=None, fps=8,
                        clip_ext="npy")
    log = SkipLog()
    pairs = [decode_pair(s) for s in raw_samples(({"url": u} for u in index_urls(index)), log)]
    assert [p["key"] for p in pairs] == ["t-clip-000000", "t-clip-000003"]  # 8 frames: windows at 0 and 3
    for pair in pairs:
        assert _mad(pair["input"].numpy(), pair["target"].numpy()) < 4  # frames one step apart differ by ~10
    shifted = pairs[0]["input"][:, 1:].numpy(), pairs[0]["target"][:, :-1].numpy()
    assert _mad(*shifted) > 4 * _mad(pairs[0]["input"].numpy(), pairs[0]["target"].numpy())


def test_fps_option_still_refuses_different_durations(tmp_path, capsys):
    scene = _scene(17)
    inp, tgt = _pair(tmp_path / "v", "late", scene, 8, scene[1:], 8)
    out = tmp_path / "out"
    assert main(["data", "pack", "--videos", str(tmp_path / "v"), "--task", "t", "--frames", "5", "--fps", "8",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "even resampled to 8 fps" in err and f"{inp}: 17 frames" in err and f"{tgt}: 16 frames" in err
    assert not out.exists()
    with pytest.raises(PackOptionError, match="--fps must be a positive number, got 0"):
        pack_videos(tmp_path / "v", out, task="t", fps=0)
