"""`lavinkit data demo|pack|validate|inspect` end to end through lavinkit.cli.main."""

from __future__ import annotations

import io
import shutil

import numpy as np
from PIL import Image

from lavinkit.cli import main


def test_help_and_usage_errors(capsys):
    assert main(["data", "--help"]) == 0
    assert "validate" in capsys.readouterr().out
    assert main(["data", "validate", "--help"]) == 0
    assert main(["data", "frobnicate"]) == 2
    assert main(["data", "demo", "--image-size", "notanint", "--out", "x"]) == 2
    assert "image_size" in capsys.readouterr().err.replace("-", "_")
    assert main(["data", "pack", "--out", "x"]) == 2
    assert "--task-folders" in capsys.readouterr().err


def test_demo_validate_inspect(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["data", "demo", "--out", str(out), "--image-size", "16", "--clip-frames", "5",
                 "--image-pairs-per-task", "2", "--clip-pairs-per-task", "1"]) == 0
    assert "train:" in capsys.readouterr().out
    assert main(["data", "validate", str(out / "train"), str(out / "val")]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["data", "validate", str(out / "train"), "--tasks", "denoising,deblurring"]) == 1
    assert "unknown-task" in capsys.readouterr().out
    assert main(["data", "validate", str(tmp_path / "nope.tar"), "--report", str(tmp_path / "r.json")]) == 1
    assert "nope.tar: missing-shard" in capsys.readouterr().out and (tmp_path / "r.json").is_file()
    sheet = tmp_path / "sheet.png"
    assert main(["data", "inspect", str(out / "val"), "--out", str(sheet)]) == 0
    assert "colorization" in capsys.readouterr().out
    assert Image.open(sheet).size[0] > 100


def test_pack_task_folders_and_config(tmp_path, capsys):
    root = tmp_path / "tasks"
    for task in ("denoise", "flip"):
        (root / task).mkdir(parents=True)
        for i in range(2):
            img = np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)
            for role in ("input", "target"):
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, "PNG")
                (root / task / f"n{i}_{role}.png").write_bytes(buf.getvalue())
    config = tmp_path / "pack.yaml"
    config.write_text(f"task_folders: {root}\nout: {tmp_path / 'shards'}\nmaxcount: 3\n")
    assert main(["data", "pack", "--config", str(config)]) == 0
    assert "packed 4 pairs into 2 shard(s)" in capsys.readouterr().out
    assert main(["data", "validate", str(tmp_path / "shards" / "images-{000000..000001}.tar")]) == 0

    (root / "flip" / "n1_target.png").unlink()
    assert main(["data", "pack", "--task-folders", str(root), "--out", str(tmp_path / "o2")]) == 1
    err = capsys.readouterr().err
    assert "n1_input.png has no matching n1_target" in err and "Traceback" not in err
    shutil.rmtree(root / "flip")
    assert main(["data", "pack", "--task-folders", str(tmp_path / "absent"), "--out", str(tmp_path / "o3")]) == 2
    assert "absent" in capsys.readouterr().err


def test_pack_videos(tmp_path, capsys):
    from lavinkit.data.media import encode_mp4

    videos = tmp_path / "videos"
    videos.mkdir()
    frames = np.stack([np.roll(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8), i, axis=1)
                       for i in range(12)])
    (videos / "pan.mp4").write_bytes(encode_mp4(frames))
    out = tmp_path / "out"
    assert main(["data", "pack", "--videos", str(videos), "--transform", "video_denoising", "--frames", "5",
                 "--size", "32", "--out", str(out)]) == 0
    assert "packed 2 pairs" in capsys.readouterr().out
    assert main(["data", "validate", str(out), "--decode", "false"]) == 0
    assert main(["data", "pack", "--videos", str(videos), "--transform", "video_denoising", "--frames", "6",
                 "--out", str(tmp_path / "o2")]) == 2
    assert "--frames must be 1 + 4k" in capsys.readouterr().err
