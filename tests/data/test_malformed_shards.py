"""Malformed members and truncated shards: reported by ``validate`` with shard and key, and costing only their own
sample in the streams (the shared reader yields the sample with its problems and reads on)."""

from __future__ import annotations

import io
import json
import re
import tarfile

import numpy as np
import pytest

from lavinkit.data import ImagePairDataModule, make_sample
from lavinkit.data.pipeline import PixelDecoder, checked_pairs
from lavinkit.data.schema import SampleError
from lavinkit.data.shards import PairShardWriter, SkipLog, TarFormatError, raw_samples, shard_samples, write_index
from lavinkit.data.validate import validate_shards

RNG = np.random.default_rng(0)


def _members(key: str, task: str = "t") -> list[tuple[str, bytes]]:
    """The three members of one good 16x16 image pair, in the order the writers use."""
    x = RNG.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    sample = make_sample(key, task, x[0], x[1])
    return [(f"{key}.{suffix}", data) for suffix, data in sample.items() if suffix != "__key__"]


def _tar(path, members: list[tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return str(path)


def _good(n: int, prefix: str = "s") -> list[list[tuple[str, bytes]]]:
    return [_members(f"{prefix}{i}") for i in range(n)]


def _one_pass(url: str) -> tuple[list[str], SkipLog]:
    """Keys of the pairs a stream keeps over one pass of ``url``, and its skip log."""
    log = SkipLog()
    keys = [pair.key for pair in checked_pairs(raw_samples([{"url": url}], log), log)]
    return keys, log


# ------------------------------------------------------------------------------------------- malformed members


def test_duplicate_member_costs_only_its_sample(tmp_path):
    samples = _good(8)
    samples[3].insert(2, samples[3][2])  # s3.json written twice in a row (a writer bug seen in practice)
    shard = _tar(tmp_path / "pairs-000000.tar", [m for s in samples for m in s])

    report = validate_shards(shard)
    assert [(p.url, p.key, p.kind) for p in report.problems] == [(shard, "s3", "duplicate-member")]
    assert "'s3.json' appears more than once" in report.problems[0].message
    assert report.samples == 8 and not report.ok

    keys, log = _one_pass(shard)
    assert keys == [f"s{i}" for i in range(8) if i != 3]  # the rest of the shard is still read
    assert log.count == 1 and log.by_shard == {shard: 1}
    assert log.last[:2] == (shard, "s3") and "appears more than once" in log.last[2]

    dm = ImagePairDataModule(shard, batch_size=2, num_context=1, steps_per_epoch=16, seed=0)
    seen = {k for batch in dm.train_dataloader() for row in batch["keys"] for k in row}
    assert seen == set(keys)  # all seven good samples train, not just the ones before the bad member
    assert tuple(dm.last_skipped[:2]) == (shard, "s3") and set(dm.skipped_by_shard) == {shard}

    val = ImagePairDataModule(val_urls=shard, batch_size=1, num_context=0)
    assert sorted(k for batch in val.val_dataloader() for row in batch["keys"] for k in row) == keys


def test_validation_loader_error_names_the_bad_member(tmp_path):
    samples = _good(3)
    samples[1].append(samples[1][-1])
    shard = _tar(tmp_path / "val-000000.tar", [m for s in samples for m in s])
    dm = ImagePairDataModule(val_urls=shard, batch_size=1, num_context=2)
    with pytest.raises(ValueError, match=r"no rank can form one batch.*1 bad sample\(s\) skipped, last: shard "
                                         r".*val-000000.tar, key 's1': member 's1\.\w+' appears more than once"):
        dm.val_dataloader()


def _write_mixed(path, bad: list[tuple[str, bytes]], *, after: list[tuple[str, bytes]] = ()) -> str:
    """good s0, s1, the ``bad`` members, good s2, s3, then ``after``."""
    good = _good(4)
    return _tar(path, [*good[0], *good[1], *bad, *good[2], *good[3], *after])


def _kinds(report, key: str) -> list[str]:
    return sorted(p.kind for p in report.problems if p.key == key)


def test_unknown_extension_no_extension_and_empty_member(tmp_path):
    img = _members("x")
    bmp = [("b.input.bmp", img[0][1]), ("b.target.png", img[1][1]), ("b.json", img[2][1])]
    extra = [*_members("e"), ("e.txt", b"a note")]
    empty = [("z.input.png", b""), ("z.target.png", img[1][1]), ("z.json", img[2][1])]
    shard = _write_mixed(tmp_path / "m-000000.tar", [*bmp, *extra, ("README", b"hello"), *empty])

    report = validate_shards(shard)
    assert _kinds(report, "b") == ["bad-extension"]
    assert _kinds(report, "e") == ["unknown-member"]
    assert _kinds(report, "README") == ["no-extension"]
    assert _kinds(report, "z") == ["empty-member"]  # not also undecodable or missing
    assert "z.input.png is empty (0 bytes)" in str(next(p for p in report.problems if p.key == "z"))
    assert {p.key for p in report.problems} == {"b", "e", "README", "z"} and report.samples == 7

    keys, log = _one_pass(shard)
    # an extra member does not make a pair unusable; b's bmp input is found when the stream decodes it
    assert keys == ["s0", "s1", "b", "e", "s2", "s3"]
    assert log.count == 2 and log.last[:2] == (shard, "z")
    pair = next(p for p in checked_pairs(raw_samples([{"url": shard}], log), log) if p.key == "b")
    with pytest.raises(SampleError, match=r"m-000000.tar, key 'b': input.bmp"):
        PixelDecoder()(pair)


def test_non_adjacent_members_and_repeated_key(tmp_path):
    k = _members("k")
    d = _members("d")
    shard = _write_mixed(tmp_path / "m-000000.tar", [k[0], k[2], *d], after=[k[1], *d])

    report = validate_shards(shard, decode=False)
    assert _kinds(report, "k") == ["missing-member", "non-adjacent"]
    split = next(p for p in report.problems if p.kind == "non-adjacent")
    assert split.url == shard and "k.target.png" not in split.message and "['target.png']" in split.message
    assert _kinds(report, "d") == ["duplicate-key"]
    assert report.samples == 6  # k counted once, d once

    keys, log = _one_pass(shard)
    assert keys == ["s0", "s1", "d", "s2", "s3"] and log.count == 3


# ------------------------------------------------------------------------------------------------- truncation


@pytest.fixture
def indexed(tmp_path):
    """An 8-sample shard written by the kit's writer with its index.json, and the byte offsets of its samples."""
    with PairShardWriter(tmp_path, "pairs") as w:
        for i in range(8):
            x = RNG.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
            w.write(make_sample(f"s{i}", "t", x[0], x[1]))
    write_index(tmp_path, w.shards.values())
    shard = tmp_path / "pairs-000000.tar"
    with tarfile.open(shard) as tf:
        members = tf.getmembers()
    # end of each member's padded data
    ends = {m.name: m.offset_data + ((m.size + 511) & ~511) for m in members}
    return shard, shard.read_bytes(), ends, members


def _cut(shard, data: bytes, at: int) -> str:
    shard.write_bytes(data[:at])
    return str(shard)


@pytest.mark.parametrize("where, match, key", [
    ("sample-boundary", "without the end-of-archive marker", "s4"),
    ("last-member", "without the end-of-archive marker", "s7"),
    ("half-marker", "end-of-archive marker is cut short", "s7"),
    ("header", r"cut inside a tar header \(100 of 512 bytes\) after member 's4\.target", "s4"),
    ("data", r"cut inside member 's5\.input\.png' \(\d+ of \d+ bytes\)", "s5"),
])
def test_truncation_of_every_kind_is_reported(indexed, where, match, key):
    shard, data, ends, members = indexed
    last = members[-1].name
    at = {
        "sample-boundary": ends[members[14].name],  # after s4's last member: s0-s3 complete, s4 maybe not
        "last-member": ends[last],
        "half-marker": ends[last] + 512,
        "header": ends["s4.target.png"] + 100,
        "data": next(m.offset_data for m in members if m.name == "s5.input.png") + 20,
    }[where]
    url = _cut(shard, data, at)
    report = validate_shards(url)
    truncated = [p for p in report.problems if p.kind == "truncated"]
    assert len(truncated) == 1 and truncated[0].url == url and truncated[0].key == key
    assert re.search(match, truncated[0].message), truncated[0].message
    expected = int(key[1:])  # the samples before the one being read at the cut are complete and checked
    assert report.samples == expected
    mismatch = [p for p in report.problems if p.kind == "index-mismatch"]
    assert len(mismatch) == 1 and f"records 8 samples and {len(data)} bytes, the shard has {expected} samples and " \
        f"{at} bytes" in mismatch[0].message

    keys, log = _one_pass(url)  # the stream keeps the complete samples and counts the shard once
    assert keys == [f"s{i}" for i in range(expected)]
    assert log.count == 1 and log.last[:2] == (url, key) and "truncated" in log.last[2]


def test_reader_raises_on_a_tar_without_end_marker(tmp_path):
    shard = _tar(tmp_path / "a.tar", _members("a"))
    data = open(shard, "rb").read()
    cut = data[: (len(data.rstrip(b"\0")) + 511) & ~511]  # the members, without the zero blocks that end the tar
    with pytest.raises(TarFormatError, match="without the end-of-archive marker") as info:
        list(shard_samples(shard, io.BytesIO(cut)))
    assert info.value.kind == "truncated" and info.value.key == "a"
    assert [s["__key__"] for s in shard_samples(shard, io.BytesIO(data))] == ["a"]


def test_truncated_gzip_shard(tmp_path):
    import gzip

    raw = open(_tar(tmp_path / "x.tar", [m for s in _good(4) for m in s]), "rb").read()
    shard = tmp_path / "x-000000.tar.gz"
    packed = gzip.compress(raw)
    shard.write_bytes(packed[: len(packed) * 3 // 4])
    report = validate_shards(str(shard))
    assert [p.kind for p in report.problems] == ["truncated"] and 0 < report.samples < 4


def test_index_lists_a_missing_shard_and_a_wrong_size(indexed, tmp_path):
    shard, data, _, _ = indexed
    index = json.loads((tmp_path / "index.json").read_text())
    index["shards"].append({**index["shards"][0], "url": "pairs-000001.tar"})
    index["shards"][0]["bytes"] += 512
    (tmp_path / "index.json").write_text(json.dumps(index))
    report = validate_shards(str(tmp_path))
    found = sorted((p.url.rsplit("/", 1)[-1], p.kind) for p in report.problems)
    assert found == [("pairs-000000.tar", "index-mismatch"), ("pairs-000001.tar", "missing-shard")]
    assert f"records {len(data) + 512} bytes, the shard has {len(data)} bytes" in report.format()


# ------------------------------------------------------------------------------------------------------- CLI


def test_cli_lists_problems_and_writes_the_same_report(tmp_path, capsys):
    from lavinkit.cli import main

    samples = _good(3)
    samples[2].append(samples[2][0])
    shard = _tar(tmp_path / "p-000000.tar", [m for s in samples for m in s])
    good = _tar(tmp_path / "q-000000.tar", [m for s in _good(2, "q") for m in s])
    assert main(["data", "validate", good]) == 0
    assert main(["data", "validate", shard, "--report", str(tmp_path / "r.json")]) == 1
    out = capsys.readouterr().out
    assert f"{shard} [s2]: duplicate-member: member 's2.input.png' appears more than once" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["ok"] is False and report["samples"] == 3
    assert report["problems"] == [{"url": shard, "key": "s2", "kind": "duplicate-member",
                                   "message": "member 's2.input.png' appears more than once; only the first copy "
                                              "was read"}]


# ------------------------------------------------------------------------------------------ latent shards


@pytest.fixture(scope="module")
def latent_dir(tmp_path_factory):
    """Latent shards written by the real ``lavinkit encode`` (tiny ST-VAE) from 6 pixel pairs of 2 tasks."""
    import torch

    from lavinkit.cli import main
    from lavinkit.models.stvae import STVAE, STVAEConfig

    root = tmp_path_factory.mktemp("latent")
    torch.manual_seed(0)
    STVAE(STVAEConfig.from_name("tiny")).save_pretrained(root / "vae.safetensors")
    rng = np.random.default_rng(1)
    with PairShardWriter(root / "pixels", "images") as w:
        for i in range(6):
            x = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
            w.write(make_sample(f"p{i}", ("denoise", "flip")[i % 2], x[0], x[1]))
    write_index(root / "pixels", w.shards.values())
    assert main(["encode", "--data", str(root / "pixels"), "--out", str(root / "latents"), "--vae",
                 str(root / "vae.safetensors"), "--progress", "false"]) == 0
    return root / "latents"


def test_validate_accepts_latent_shards_from_encode(latent_dir, capsys):
    from lavinkit.cli import main

    report = validate_shards(str(latent_dir))
    assert report.ok, report.format()
    assert report.samples == 6 and dict(report.tasks) == {"denoise": 3, "flip": 3}
    assert main(["data", "validate", str(latent_dir)]) == 0
    assert capsys.readouterr().out.strip().endswith("1 shard(s), 6 sample(s), 2 task(s): OK")


def test_validate_reports_bad_latents(latent_dir, tmp_path):
    with tarfile.open(next(latent_dir.glob("latents-*.tar"))) as tf:
        members = [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]

    def npy(arr) -> bytes:
        buf = io.BytesIO()
        np.save(buf, arr)
        return buf.getvalue()

    z = np.zeros((16, 1, 4, 4), np.float16)
    bad = {"p0.input.npy": npy(np.full_like(z, np.inf)),       # float16 overflow
           "p1.target.npy": npy(np.zeros((16, 1, 2, 2), np.float16)),
           "p2.input.npy": npy(np.zeros((8, 1, 4, 4), np.float16)),
           "p3.input.npy": b"not an npy file"}
    shard = _tar(tmp_path / "latents-000000.tar", [(n, bad.get(n, d)) for n, d in members])
    report = validate_shards(shard)
    found = sorted((p.key, p.kind) for p in report.problems)
    assert found == [("p0", "non-finite"), ("p1", "size-mismatch"), ("p2", "meta-mismatch"),
                     ("p2", "meta-mismatch"), ("p2", "size-mismatch"), ("p3", "undecodable")], report.format()
    assert "input latents hold 256 NaN/Inf values" in report.format()

    from lavinkit.data import LatentPairDataModule

    dm = LatentPairDataModule(shard, batch_size=1, num_context=0, steps_per_epoch=12, seed=0)
    seen = {k for batch in dm.train_dataloader() for row in batch["keys"] for k in row}
    assert seen == {"p4", "p5"} and dm.skipped >= 4  # the bad latents are skipped, never trained on


def test_latent_shards_in_inspect_and_pixel_readers(latent_dir):
    from lavinkit.data.inspect import inspect_shards
    from lavinkit.data.schema import decode_pair

    result = inspect_shards(str(latent_dir))
    assert not result.errors and result.samples == 6
    assert {t: (s.count, s.modalities, s.sizes) for t, s in result.summaries.items()} == {
        "denoise": (3, {"image latents"}, {(32, 32)}), "flip": (3, {"image latents"}, {(32, 32)})}
    sample = next(raw_samples([{"url": str(next(latent_dir.glob("*.tar")))}], SkipLog()))
    with pytest.raises(SampleError, match=r"latents-000000.tar, key 'p\d': holds latents") as info:
        decode_pair(sample)  # a pixel reader (encode, eval) given latents says so
    assert info.value.kind == "latents"
    assert decode_pair(sample, latents=True)["input"].shape == (16, 1, 4, 4)
