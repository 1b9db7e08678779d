"""Images and clips are decoded as a viewer shows them: EXIF orientation, video display matrix, square pixels.

Every input is made here: an upright picture is stored transformed (as a phone camera stores its sensor image)
together with the metadata that tells a viewer how to turn it back upright.
"""

from __future__ import annotations

import io
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from lavinkit.data import media
from lavinkit.data.pack import PairShardWriter, pack_task_folders, pack_videos, read_index
from lavinkit.data.schema import decode_pair
from lavinkit.data.shards import SkipLog, index_urls, raw_samples

ORIENTATION_TAG = 0x0112


def _upright(h: int = 64, w: int = 96, shift: int = 0) -> np.ndarray:
    """A smooth, asymmetric real picture, uint8 [H, W, 3] (a crop of skimage's astronaut)."""
    import skimage.data

    return np.ascontiguousarray(skimage.data.astronaut()[100 + shift:100 + shift + h, 150 + shift:150 + shift + w])


def _stored(upright: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores with EXIF ``orientation`` for a picture displayed as ``upright``.

    From the EXIF meaning of each value (where the stored 0th row and 0th column lie in the displayed picture),
    written out with numpy rather than with Pillow's own table.
    """
    return np.ascontiguousarray({
        1: upright,                               # top, left
        2: upright[:, ::-1],                      # top, right
        3: upright[::-1, ::-1],                   # bottom, right
        4: upright[::-1],                         # bottom, left
        5: upright.transpose(1, 0, 2),            # left, top
        6: np.rot90(upright, 1),                  # right, top: the displayed right side is stored as row 0
        7: np.rot90(upright, 1)[:, ::-1],         # right, bottom
        8: np.rot90(upright, -1),                 # left, bottom
    }[orientation])


def _image_bytes(pixels: np.ndarray, fmt: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    buf = io.BytesIO()
    quality = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    Image.fromarray(pixels).save(buf, fmt, exif=exif, **quality)
    return buf.getvalue()


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# ------------------------------------------------------------------------------------------------- images


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_decode_image_applies_exif_orientation(fmt, orientation):
    upright = _upright()
    data = _image_bytes(_stored(upright, orientation), fmt, orientation)
    decoded = media.decode_image(data).permute(1, 2, 0).numpy()  # [H, W, 3]
    assert _mad(decoded, upright) < 4  # lossless formats give 0; jpeg/webp at quality 95 ~2
    assert media.image_display_size(data) == upright.shape[:2]
    if orientation != 1 and _stored(upright, orientation).shape == upright.shape:
        # the same file read without its orientation is far from the upright picture
        assert _mad(_stored(upright, orientation), upright) > 20


def test_png_xmp_orientation_is_applied():
    upright = _upright()
    xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp)
    buf = io.BytesIO()
    Image.fromarray(_stored(upright, 6)).save(buf, "PNG", pnginfo=info)
    assert _mad(media.decode_image(buf.getvalue()).permute(1, 2, 0).numpy(), upright) == 0
    assert media.image_display_size(buf.getvalue()) == (64, 96)


def _phone_task_folder(root: Path) -> np.ndarray:
    """root/rot/NAME_input.jpg (stored 96x64 with orientation 6) + NAME_target.png (upright 64x96, no EXIF)."""
    upright = _upright()
    folder = root / "rot"
    folder.mkdir(parents=True)
    for i in range(2):
        (folder / f"p{i}_input.jpg").write_bytes(_image_bytes(_stored(upright, 6), "JPEG", 6))
        (folder / f"p{i}_target.png").write_bytes(media.encode_image(upright, "png"))
    return upright


def _packed_pairs(index_path: Path) -> list[dict]:
    log = SkipLog()
    pairs = [decode_pair(s) for s in raw_samples(({"url": u} for u in index_urls(index_path)), log)]
    assert log.count == 0
    return pairs


@pytest.mark.parametrize("size", [None, 64])
def test_pack_keeps_phone_jpeg_aligned_with_upright_target(tmp_path, size):
    _phone_task_folder(tmp_path / "tasks")
    index = pack_task_folders(tmp_path / "tasks", tmp_path / "out", size=size)
    pairs = _packed_pairs(index)
    assert len(pairs) == 2
    for pair in pairs:
        inp, tgt = pair["input"][:, 0].permute(1, 2, 0).numpy(), pair["target"][:, 0].permute(1, 2, 0).numpy()
        assert inp.shape == ((64, 96, 3) if size is None else (64, 64, 3))
        assert _mad(inp, tgt) < 4  # rotated, they differ by ~60 levels


def _phone_shard(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A shard (not made by lavinkit) whose input member is an orientation-6 jpeg and target the upright png."""
    upright = _upright()
    writer = PairShardWriter(tmp_path / "shards", "phone")
    with writer:
        for i in range(2):
            writer.write({"__key__": f"rot-{i}", "input.jpg": _image_bytes(_stored(upright, 6), "JPEG", 6),
                          "target.png": media.encode_image(upright, "png"),
                          "json": json.dumps({"task": "rot"}).encode()})
    return tmp_path / "shards" / "phone-000000.tar", upright


def test_shard_decode_validate_and_inspect_see_the_upright_image(tmp_path):
    from lavinkit.data.inspect import inspect_shards
    from lavinkit.data.validate import validate_shards

    shard, upright = _phone_shard(tmp_path)
    report = validate_shards(str(shard), use_index=False)
    assert report.ok, report.format()  # rotated, input 96x64 and target 64x96 would be a size-mismatch
    inspection = inspect_shards(str(shard))
    assert not inspection.errors and inspection.summaries["rot"].sizes == {(64, 96)}
    for pair in inspection.summaries["rot"].examples:
        assert _mad(pair["input"][:, 0].permute(1, 2, 0).numpy(), upright) < 4


def test_infer_and_eval_load_the_upright_image(tmp_path):
    from lavinkit.commands.infer import load_media
    from lavinkit.evaluation.data import tasks_from_folders, tasks_from_shards

    upright = _phone_task_folder(tmp_path / "tasks")
    loaded = load_media(tmp_path / "tasks" / "rot" / "p0_input.jpg", (64, 96))
    assert _mad(loaded.uint8[0], upright) < 4
    for tasks in (tasks_from_folders(tmp_path / "tasks"), tasks_from_shards(str(_phone_shard(tmp_path)[0]))):
        inp, tgt = tasks["rot"].pair(tasks["rot"].names[0], (64, 96))
        assert _mad(inp[0], tgt[0]) < 4


# ------------------------------------------------------------------------------------------------- videos


def _clip(t: int = 5, h: int = 32, w: int = 48) -> np.ndarray:
    """A moving real picture, uint8 [T, H, W, 3]."""
    return np.stack([_upright(h, w, shift=2 * i) for i in range(t)])


def _video_bytes(stored: np.ndarray, *, fmt: str = "mp4", fps: int = 8, rotation: int | None = None,
                 hflip: bool = False, matrix: list[int] | None = None, sar: Fraction | None = None) -> bytes:
    """H.264 video of ``stored`` frames whose container carries a display matrix (counter-clockwise
    ``rotation``, then a left-right mirror) or a sample aspect ratio."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = stored.shape[2], stored.shape[1], "yuv420p"
        stream.options = {"crf": "12"}
        if rotation is not None:
            stream.set_display_rotation(rotation, hflip=hflip)
        if matrix is not None:
            stream.set_display_matrix(matrix)
        if sar is not None:
            stream.codec_context.sample_aspect_ratio = sar
        for frame in stored:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


def _displayed(stored: np.ndarray, rotation: int, hflip: bool) -> np.ndarray:
    """What a player shows for ``stored`` [T, H, W, 3]: counter-clockwise rotation, then the mirror."""
    out = np.rot90(stored, rotation // 90, axes=(1, 2))
    return np.ascontiguousarray(out[:, :, ::-1] if hflip else out)


@pytest.mark.parametrize("hflip", [False, True])
@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
def test_clips_are_decoded_upright(tmp_path, rotation, hflip):
    stored = _clip()
    data = _video_bytes(stored, rotation=rotation, hflip=hflip)
    want = _displayed(stored, rotation, hflip)
    clip = media.decode_clip(data, "mp4")  # [3, T, H, W]
    from_bytes = clip.permute(1, 2, 3, 0).numpy()
    (tmp_path / "v.mp4").write_bytes(data)
    from_file = media.read_video_file(tmp_path / "v.mp4")
    assert _mad(from_bytes, want) < 4 and _mad(from_file, want) < 4
    assert clip.is_contiguous() and from_file.flags.c_contiguous
    if (rotation, hflip) != (0, False) and want.shape == stored.shape:
        assert _mad(want, stored) > 20  # the check can tell a wrong orientation
    half = media.read_video_file(tmp_path / "v.mp4", short_side=16)
    assert half.shape[1:3] == (want.shape[1] // 2, want.shape[2] // 2)


@pytest.mark.parametrize("fmt", ["mov", "matroska"])
def test_display_matrix_of_other_containers(fmt):
    stored = _clip()
    got = media.decode_clip(_video_bytes(stored, fmt=fmt, rotation=270)).permute(1, 2, 3, 0).numpy()
    assert _mad(got, _displayed(stored, 270, False)) < 4


def test_non_right_angle_rotation_is_refused():
    c, s = int(0.7071 * 65536), int(0.7071 * 65536)
    data = _video_bytes(_clip(), matrix=[c, -s, 0, s, c, 0, 0, 0, 1 << 30])
    with pytest.raises(ValueError, match=r"rotates by -?45\.0 degrees; only multiples of 90"):
        media.decode_clip(data)


def test_non_square_pixels_are_made_square(tmp_path):
    wide = _clip(h=32, w=96)
    stored = np.ascontiguousarray(wide[:, :, ::2])  # [T, 32, 48, 3]: every other column, shown 2:1 wide
    data = _video_bytes(stored, sar=Fraction(2, 1))
    got = media.decode_clip(data).permute(1, 2, 3, 0).numpy()
    assert got.shape == wide.shape
    assert _mad(got, wide) < 8  # the missing columns are interpolated; a squashed frame cannot even compare
    (tmp_path / "v.mp4").write_bytes(data)
    assert media.read_video_file(tmp_path / "v.mp4", short_side=16).shape == (5, 16, 48, 3)


def test_pack_videos_keeps_rotated_input_aligned(tmp_path):
    stored = _clip(t=9)
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "walk_input.mp4").write_bytes(_video_bytes(np.ascontiguousarray(np.rot90(stored, -1, axes=(1, 2))),
                                                         rotation=90))  # stored on its side, shown upright
    (videos / "walk_target.mp4").write_bytes(_video_bytes(stored))
    index = pack_videos(videos, tmp_path / "out", task="phone", frames=9, size=None, clip_ext="npy")
    assert read_index(index)["num_samples"] == 1
    (pair,) = _packed_pairs(index)
    inp, tgt = pair["input"].permute(1, 2, 3, 0).numpy(), pair["target"].permute(1, 2, 3, 0).numpy()
    assert inp.shape == (9, 32, 48, 3) and _mad(inp, tgt) < 4


def test_datamodule_batches_hold_the_upright_image(tmp_path):
    from lavinkit.data import ImagePairDataModule

    shard, _ = _phone_shard(tmp_path)
    dm = ImagePairDataModule(val_urls=str(shard), batch_size=1, num_context=1)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch["input"].shape == (1, 2, 3, 1, 64, 96)  # [B, N, C, T, H, W]
    assert float((batch["input"] - batch["target"]).abs().mean()) * 127.5 < 4
