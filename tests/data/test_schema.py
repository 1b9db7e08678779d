"""Sample schema: make_sample -> shard -> WebDataset -> decode_pair round trips, conversions and errors."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from lavinkit.data.media import decode_image, decode_mp4, encode_mp4
from lavinkit.data.pack import PairShardWriter
from lavinkit.data.schema import (
    SampleError,
    decode_pair,
    key_problem,
    make_sample,
    sanitize_key,
    validate_key,
)


def _photo(t: int = 1, h: int = 32, w: int = 48, seed: int = 0) -> np.ndarray:
    """A smooth, moving, real-looking uint8 clip [T, H, W, 3] (crops of skimage's astronaut)."""
    import skimage.data

    img = skimage.data.astronaut()
    return np.stack([img[100 + 2 * i : 100 + 2 * i + h, 150 + i : 150 + i + w] for i in range(t)])


def _png(arr, mode=None) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(buf, "PNG")
    return buf.getvalue()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _roundtrip(tmp_path, samples):
    import webdataset as wds

    with PairShardWriter(tmp_path, "rt") as writer:
        for s in samples:
            writer.write(s)
    urls = sorted(str(p) for p in tmp_path.glob("rt-*.tar"))
    return [decode_pair(s) for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]


def _as_thwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 3, 0).numpy()


def test_png_roundtrip_is_pixel_exact(tmp_path):
    inp, tgt = _photo(h=32, w=48), _photo(h=32, w=48, seed=1)[:, ::-1]
    [pair] = _roundtrip(tmp_path, [make_sample("a-1", "flip", inp, tgt, meta={"source": "astronaut"})])
    assert pair["key"] == "a-1" and pair["task"] == "flip" and pair["url"].endswith("rt-000000.tar")
    assert pair["input"].dtype == torch.uint8 and pair["input"].shape == (3, 1, 32, 48)
    np.testing.assert_array_equal(_as_thwc(pair["input"]), inp)
    np.testing.assert_array_equal(_as_thwc(pair["target"]), tgt)
    assert pair["meta"] == {
        "task": "flip",
        "modality": "image",
        "frames": 1,
        "height": 32,
        "width": 48,
        "source": "astronaut",
    }


def test_clip_roundtrip_npy_exact_and_mp4_close(tmp_path):
    clip = _photo(t=9, h=32, w=32)
    pairs = _roundtrip(
        tmp_path,
        [
            make_sample("n", "t", clip, clip[::-1], clip_ext="npy"),
            make_sample("m", "t", clip, clip[::-1], clip_ext="mp4"),
        ],
    )
    by_key = {p["key"]: p for p in pairs}
    np.testing.assert_array_equal(_as_thwc(by_key["n"]["input"]), clip)
    np.testing.assert_array_equal(_as_thwc(by_key["n"]["target"]), clip[::-1])
    mp4 = by_key["m"]
    assert mp4["input"].shape == (3, 9, 32, 32) and mp4["meta"]["modality"] == "video"
    assert _psnr(_as_thwc(mp4["input"]), clip) > 32.0
    assert _psnr(_as_thwc(mp4["target"]), clip[::-1]) > 32.0


def test_torch_inputs_and_jpg(tmp_path):
    img = _photo(h=32, w=32)
    chw = torch.from_numpy(img[0]).permute(2, 0, 1)
    [pair] = _roundtrip(tmp_path, [make_sample("j", "t", chw, chw.unsqueeze(1), image_ext="jpg")])
    assert pair["input"].shape == (3, 1, 32, 32)
    assert _psnr(_as_thwc(pair["input"]), img) > 30.0


def test_mp4_encoding_is_reproducible():
    clip = _photo(t=9, h=32, w=32)
    assert len({encode_mp4(clip) for _ in range(5)}) == 1


@pytest.mark.parametrize(
    "key,ok", [("a-b_C9", True), ("a.b", False), ("a/b", False), ("", False), ("a b", False)]
)
def test_key_rules(key, ok):
    assert (key_problem(key) is None) == ok
    if not ok:
        with pytest.raises(ValueError):
            validate_key(key)
    assert key_problem(sanitize_key(key)) is None


def test_make_sample_rejects_bad_input():
    img = _photo()
    with pytest.raises(ValueError, match="contains a dot"):
        make_sample("a.b", "t", img, img)
    with pytest.raises(ValueError, match="differ"):
        make_sample("k", "t", img, _photo(h=16))
    with pytest.raises(ValueError, match="not valid for video"):
        make_sample("k", "t", _photo(t=5), _photo(t=5), clip_ext="png")
    with pytest.raises(ValueError, match="uint8"):
        make_sample("k", "t", img.astype(np.float32), img)


def _raw(key="k", **members):
    sample = {"__key__": key, "__url__": "shard-0.tar"}
    sample.update({k.replace("_", "."): v for k, v in members.items()})
    return sample


def test_gray_rgba_16bit_palette_converted_to_rgb():
    gray = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) % 256
    g16 = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)
    rgba = np.dstack([_photo(h=32, w=32)[0], np.full((32, 32), 7, np.uint8)])
    meta = json.dumps({"task": "t"}).encode()
    for data, check in [
        (_png(gray.astype(np.uint8)), lambda x: np.array_equal(x[0], gray) and np.array_equal(x[0], x[2])),
        (_png(g16), lambda x: np.array_equal(x[1], ((g16.astype(np.int64) * 255 + 32767) // 65535))),
        (_png(rgba), lambda x: np.array_equal(x.permute(1, 2, 0).numpy(), rgba[..., :3])),
        (_png_palette(), lambda x: x.shape == (3, 32, 32)),
    ]:
        img = decode_image(data)
        assert img.dtype == torch.uint8 and img.shape[0] == 3 and check(img)
        pair = decode_pair(_raw(input_png=data, target_png=data, json=meta))
        assert pair["input"].shape == (3, 1, 32, 32)


def _png_palette() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_photo(h=32, w=32)[0]).convert("P").save(buf, "PNG")
    return buf.getvalue()


def test_16bit_extremes_scale_to_8bit():
    g16 = np.array([[0, 257, 65535, 32896]] * 4, dtype=np.uint16)
    assert decode_image(_png(g16))[0, 0].tolist() == [0, 1, 255, 128]


def _sample_error(sample, **kw) -> SampleError:
    with pytest.raises(SampleError) as info:
        decode_pair(sample, **kw)
    err = info.value
    assert err.url == "shard-0.tar" and "shard-0.tar" in str(err) and repr(err.key) in str(err)
    return err


def test_decode_pair_errors_name_shard_and_key():
    img = _png(_photo(h=32, w=32)[0])
    meta = json.dumps({"task": "t"}).encode()
    assert _sample_error(_raw(target_png=img, json=meta)).kind == "missing-member"
    assert _sample_error(_raw(input_png=img, json=meta)).kind == "missing-member"
    assert _sample_error(_raw(input_png=img, target_png=img)).kind == "missing-member"
    assert (
        _sample_error(_raw(input_png=img, input_jpg=img, target_png=img, json=meta)).kind
        == "duplicate-member"
    )
    assert _sample_error(_raw(input_png=img, target_png=img, json=b'{"x": 1}')).kind == "missing-task"
    assert _sample_error(_raw(input_png=img, target_png=img, json=b"{not json")).kind == "bad-json"
    assert _sample_error(_raw(input_png=b"garbage", target_png=img, json=meta)).kind == "undecodable"
    assert _sample_error(_raw(input_mp4=b"\x00" * 64, target_mp4=b"x", json=meta)).kind == "undecodable"
    assert _sample_error(_raw(key="a.b", input_png=img, target_png=img, json=meta)).kind == "bad-key"


def test_decode_pair_shape_checks_are_a_flag():
    meta = json.dumps({"task": "t"}).encode()
    from lavinkit.data.media import encode_npy

    four = encode_npy(_photo(t=4, h=32, w=32))
    assert _sample_error(_raw(input_npy=four, target_npy=four, json=meta)).kind == "frames"
    odd = _png(_photo(h=24, w=40)[0])
    assert _sample_error(_raw(input_png=odd, target_png=odd, json=meta)).kind == "size-multiple"
    assert decode_pair(_raw(input_png=odd, target_png=odd, json=meta), check_shape=False)["input"].shape == (
        3,
        1,
        24,
        40,
    )
    assert (
        decode_pair(_raw(input_npy=four, target_npy=four, json=meta), check_shape=False)["input"].shape[1]
        == 4
    )
    other = _png(_photo(h=32, w=48)[0])
    err = _sample_error(
        _raw(input_png=_png(_photo(h=32, w=32)[0]), target_png=other, json=meta), check_shape=False
    )
    assert err.kind == "size-mismatch"


def test_decode_pair_accepts_predecoded_members():
    clip = _photo(t=5, h=32, w=32)
    pair = decode_pair(_raw(input_npy=clip, target_npy=clip, json={"task": "t"}))
    np.testing.assert_array_equal(_as_thwc(pair["input"]), clip)


def test_decode_mp4_rejects_garbage():
    with pytest.raises(ValueError, match="cannot decode video|no decodable frames|empty"):
        decode_mp4(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 40)


def test_decode_mp4_vectorised_rgb_matches_swscale():
    """Whole-clip BT.601 conversion: within 3 levels of PyAV's rgb24 and no farther from the source."""
    import io

    import av

    t, h, w = 5, 32, 48
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    frames = np.stack(
        [np.stack([xx, yy, (xx + yy + i / t) % 1], -1) * 255 for i in range(t)]
    ).round().astype(np.uint8)
    data = encode_mp4(frames)
    ours = decode_mp4(data)
    with av.open(io.BytesIO(data)) as c:
        ref = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert ours.shape == ref.shape == (t, h, w, 3) and ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - ref).max() <= 3

    def psnr(a):
        return 10 * np.log10(255**2 / np.mean((a.astype(float) - frames) ** 2))

    assert psnr(ours) >= psnr(ref) - 0.05
