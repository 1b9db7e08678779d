"""Packing task folders / videos into shards, and validate reporting every kind of bad input."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from lavinkit.data.media import encode_image, encode_mp4, encode_npy
from lavinkit.data.pack import (
    PackError,
    PairShardWriter,
    pack_task_folders,
    pack_videos,
    read_index,
    write_index,
)
from lavinkit.data.schema import make_sample
from lavinkit.data.validate import validate_shards


def _img(h=32, w=32, seed=0) -> np.ndarray:
    import skimage.data

    img = skimage.data.astronaut()
    return np.ascontiguousarray(img[60 + 7 * seed: 60 + 7 * seed + h, 200: 200 + w])


def _clip(t=9, h=32, w=32) -> np.ndarray:
    import skimage.data

    img = skimage.data.coffee()
    return np.stack([img[100 + i: 100 + i + h, 200 + 2 * i: 200 + 2 * i + w] for i in range(t)])


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(buf, "PNG")
    return buf.getvalue()


def _tar(path, members: list[tuple[str, bytes]]):
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return str(path)


def _meta(task="denoising", **kw) -> bytes:
    return json.dumps({"task": task, **kw}).encode()


# ------------------------------------------------------------------------------------------------ validate


def test_validate_reports_every_problem_with_shard_and_key(tmp_path):
    good = _png(_img())
    gray = _png(_img()[..., 0])
    rgba = _png(np.dstack([_img(), np.full((32, 32), 9, np.uint8)]))
    g16 = _png((np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16))
    four = encode_npy(_clip(t=4))
    odd = _png(_img(h=24, w=40))
    shard = _tar(tmp_path / "bad-000000.tar", [
        ("ok.input.png", good), ("ok.json", _meta()), ("ok.target.png", good),
        ("gray.input.png", gray), ("gray.json", _meta()), ("gray.target.png", gray),
        ("rgba.input.png", rgba), ("rgba.json", _meta()), ("rgba.target.png", g16),
        ("noinput.json", _meta()), ("noinput.target.png", good),
        ("notarget.input.png", good), ("notarget.json", _meta()),
        ("dot.ted.input.png", good), ("dot.ted.json", _meta()), ("dot.ted.target.png", good),
        ("badimg.input.png", b"not a png"), ("badimg.json", _meta()), ("badimg.target.png", good),
        ("badvid.input.mp4", b"\x00" * 100), ("badvid.json", _meta()), ("badvid.target.mp4", encode_mp4(_clip())),
        ("frames.input.npy", four), ("frames.json", _meta()), ("frames.target.npy", four),
        ("mismatch.input.png", good), ("mismatch.json", _meta()), ("mismatch.target.png", _png(_img(h=48))),
        ("odd.input.png", odd), ("odd.json", _meta()), ("odd.target.png", odd),
        ("stranger.input.png", good), ("stranger.json", _meta("juggling")), ("stranger.target.png", good),
        ("notask.input.png", good), ("notask.json", b'{"modality": "image"}'), ("notask.target.png", good),
    ])
    empty = _tar(tmp_path / "empty-000000.tar", [])
    truncated = tmp_path / "trunc-000000.tar"
    full = _tar(tmp_path / "full.tar", [("a.input.png", good), ("a.json", _meta()), ("a.target.png", good),
                                        ("b.input.png", good), ("b.json", _meta()), ("b.target.png", good)])
    data = open(full, "rb").read()
    truncated.write_bytes(data[:data.index(good, data.index(b"b.target.png")) + len(good) // 2])  # cut in b
    garbage = tmp_path / "garbage-000000.tar"
    garbage.write_bytes(b"\x13\x37" * 2000)
    missing = str(tmp_path / "nope-000000.tar")

    report = validate_shards([shard, empty, str(truncated), str(garbage), missing],
                             tasks=["denoising", "deblurring"])
    found = {(p.url.rsplit("/", 1)[-1], p.key, p.kind) for p in report.problems}
    expected = {
        ("bad-000000.tar", "noinput", "missing-member"),
        ("bad-000000.tar", "notarget", "missing-member"),
        ("bad-000000.tar", "dot.ted", "bad-key"),
        ("bad-000000.tar", "badimg", "undecodable"),
        ("bad-000000.tar", "badvid", "undecodable"),
        ("bad-000000.tar", "frames", "frames"),
        ("bad-000000.tar", "mismatch", "size-mismatch"),
        ("bad-000000.tar", "odd", "size-multiple"),
        ("bad-000000.tar", "stranger", "unknown-task"),
        ("bad-000000.tar", "notask", "missing-task"),
        ("empty-000000.tar", None, "empty-shard"),
        ("trunc-000000.tar", "b", "truncated"),  # cut inside sample b
        ("garbage-000000.tar", None, "corrupt-tar"),
        ("nope-000000.tar", None, "missing-shard"),
    }
    assert expected <= found, expected - found
    # grayscale, RGBA and 16-bit PNGs are converted, not reported; nothing is reported twice
    assert not {k for _, k, _ in found} & {"ok", "gray", "rgba"}
    assert len(found) == len(report.problems)
    assert not report.ok and report.tasks["denoising"] >= 3
    text = report.format()
    assert "bad-000000.tar [dot.ted]: bad-key" in text and "nope-000000.tar: missing-shard" in text
    # the samples before the damage are still read and checked
    assert report.samples_per_shard[str(truncated)] == 1


def test_validate_shape_check_flag_and_index_tasks(tmp_path):
    odd = _img(h=24, w=40)
    with PairShardWriter(tmp_path, "s") as w:
        w.write(make_sample("odd", "denoising", odd, odd))
        w.write(make_sample("x", "elsewhere", _img(), _img()))
    write_index(tmp_path, [{**r, "tasks": {"denoising": 1}} for r in w.shards.values()])
    report = validate_shards(str(tmp_path))
    kinds = {(p.key, p.kind) for p in report.problems}
    assert ("odd", "size-multiple") in kinds and ("x", "unknown-task") in kinds
    assert {p.kind for p in validate_shards(str(tmp_path), check_shape=False, tasks=["denoising", "elsewhere"])
            .problems} == set()


def test_validate_index_mismatch(tmp_path):
    with PairShardWriter(tmp_path, "s") as w:
        w.write(make_sample("a", "t", _img(), _img()))
    records = list(w.shards.values())
    records[0]["samples"] = 5
    write_index(tmp_path, records)
    assert [p.kind for p in validate_shards(str(tmp_path / "index.json")).problems] == ["index-mismatch"]


# ---------------------------------------------------------------------------------------------------- pack


def _task_folders(root, sizes=((32, 32),) * 3):
    for task in ("denoise", "flip"):
        folder = root / task
        folder.mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            img = _img(h=h, w=w, seed=i)
            (folder / f"ex{i}.v2_input.png").write_bytes(_png(img))
            (folder / f"ex{i}.v2_target.png").write_bytes(_png(img[:, ::-1] if task == "flip" else img))
    return root


def test_pack_task_folders_roundtrip(tmp_path):
    import webdataset as wds

    from lavinkit.data.schema import decode_pair

    root = _task_folders(tmp_path / "tasks")
    index_path = pack_task_folders(root, tmp_path / "out", maxcount=4)
    index = read_index(index_path)
    assert index["num_samples"] == 6 and {t: v["count"] for t, v in index["tasks"].items()} == {"denoise": 3, "flip": 3}
    assert [s["samples"] for s in index["shards"]] == [4, 2]
    assert index["shards"][0]["tasks"] == {"denoise": 2, "flip": 2}  # round-robin over tasks
    urls = [str(tmp_path / "out" / s["url"]) for s in index["shards"]]
    pairs = {p["key"]: p for p in map(decode_pair, wds.WebDataset(urls, shardshuffle=False, empty_check=False))}
    flip = pairs["flip-ex1_v2"]  # dots in file names become underscores in keys
    np.testing.assert_array_equal(flip["target"][:, 0].permute(1, 2, 0).numpy(), _img(seed=1)[:, ::-1])
    assert validate_shards(str(tmp_path / "out")).ok


def test_tiff_task_folders_pack_infer_and_eval(tmp_path):
    """TIFF sources (8-bit RGB and 16-bit grey, as scanners and microscopes write them) pack losslessly, into png
    or tiff members, and are read by infer and eval."""
    import webdataset as wds

    from lavinkit.commands.infer import load_media
    from lavinkit.data.schema import decode_pair
    from lavinkit.evaluation.data import tasks_from_folders

    folder = tmp_path / "tasks" / "grey"
    folder.mkdir(parents=True)
    rgb = _img()
    grey16 = (rgb[..., 0].astype(np.uint16) * 257)  # 8-bit values scaled to the full 16-bit range
    for i in range(3):
        Image.fromarray(grey16).save(folder / f"p{i}_input.tif")  # mode I;16
        Image.fromarray(rgb).save(folder / f"p{i}_target.tiff")
    expected_input = np.repeat(rgb[..., :1], 3, axis=-1)
    assert Image.open(folder / "p0_input.tif").mode == "I;16"
    for ext in ("png", "tiff"):
        index = pack_task_folders(tmp_path / "tasks", tmp_path / ext, image_ext=ext)
        assert validate_shards(str(index)).ok
        samples = list(wds.WebDataset(str(tmp_path / ext / "images-000000.tar"), shardshuffle=False,
                                      empty_check=False))
        assert {k for k in samples[0] if not k.startswith("__")} == {f"input.{ext}", f"target.{ext}", "json"}
        pair = decode_pair(samples[0])
        np.testing.assert_array_equal(pair["input"][:, 0].permute(1, 2, 0).numpy(), expected_input)
        np.testing.assert_array_equal(pair["target"][:, 0].permute(1, 2, 0).numpy(), rgb)
    loaded = load_media(folder / "p0_input.tif", (32, 32))
    np.testing.assert_array_equal(loaded.uint8[0], expected_input)
    task = tasks_from_folders(tmp_path / "tasks")["grey"]
    assert task.modality == "image" and len(task.names) == 3


def test_pack_task_folders_errors(tmp_path):
    root = _task_folders(tmp_path / "tasks")
    (root / "flip" / "lonely_input.png").write_bytes(_png(_img()))
    with pytest.raises(PackError, match="lonely_input.png has no matching lonely_target"):
        pack_task_folders(root, tmp_path / "out")
    root2 = _task_folders(tmp_path / "tasks2", sizes=((32, 32), (24, 40)))
    with pytest.raises(PackError, match=r"(?s)--size.*ex1\.v2_input\.png 24x40"):
        pack_task_folders(root2, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()  # checked before writing anything
    index = read_index(pack_task_folders(root2, tmp_path / "out3", size=16))
    assert index["tasks"]["flip"]["sizes"] == [[16, 16]]
    with pytest.raises(PackError, match="not found"):
        pack_task_folders(tmp_path / "missing", tmp_path / "out4")


def test_pack_videos_with_transform_and_pairs(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    clip = _clip(t=20, h=48, w=64)
    (videos / "walk.mp4").write_bytes(encode_mp4(clip))
    index = read_index(pack_videos(videos, tmp_path / "a", transform="video_deblurring", frames=5, stride=4, size=32))
    assert index["tasks"] == {"video_deblurring": {"count": 4, "frames": [5], "modality": "video", "sizes": [[32, 32]]}}
    index = read_index(pack_videos(videos, tmp_path / "b", transform="frame_prediction", frames=5, size=32,
                                   clip_ext="npy"))
    assert index["tasks"]["frame_prediction"]["count"] == 3  # each window needs 5 + 2 frames
    assert validate_shards(str(tmp_path / "a")).ok and validate_shards(str(tmp_path / "b")).ok

    paired = tmp_path / "paired"
    paired.mkdir()
    (paired / "x_input.mp4").write_bytes(encode_mp4(clip[:, :, ::-1]))
    (paired / "x_target.mp4").write_bytes(encode_mp4(clip))
    index = read_index(pack_videos(paired, tmp_path / "c", task="mirror", frames=9, size=None))
    assert index["tasks"]["mirror"]["count"] == 2 and index["tasks"]["mirror"]["sizes"] == [[48, 64]]
    with pytest.raises(PackError, match="--task"):
        pack_videos(paired, tmp_path / "d")
    with pytest.raises(PackError, match="unknown --transform"):
        pack_videos(videos, tmp_path / "e", transform="nope")
    with pytest.raises(PackError, match="1 \\+ 4k"):
        pack_videos(videos, tmp_path / "f", transform="video_deblurring", frames=8)


def test_shards_are_byte_reproducible(tmp_path):
    for name in ("a", "b"):
        with PairShardWriter(tmp_path / name, "s") as w:
            w.write(make_sample("k", "t", _img(), _img(seed=1)))
            w.write(make_sample("c", "t", _clip(), _clip(), clip_ext="mp4"))
    assert (tmp_path / "a" / "s-000000.tar").read_bytes() == (tmp_path / "b" / "s-000000.tar").read_bytes()
    with tarfile.open(tmp_path / "a" / "s-000000.tar") as tf:  # plain ustar headers, no pax record per member
        assert all(m.pax_headers == {} and m.mtime == 946684800 for m in tf.getmembers())


def test_writer_leaves_no_empty_shard(tmp_path):
    with PairShardWriter(tmp_path / "none", "s") as w:
        pass
    assert w.shards == {} and not (tmp_path / "none").exists()
    assert encode_image(_img(), "jpg")[:2] == b"\xff\xd8"
