"""``lavinkit export``: consolidated weights from a training checkpoint, EMA or raw, errors that name the problem."""

from __future__ import annotations

import torch
from safetensors import safe_open

from lavinkit.cli import main
from lavinkit.models.jdit import JDiT, JDiTConfig


def _checkpoint(path, ema: bool):
    torch.manual_seed(0)
    dit = JDiT(JDiTConfig.from_name("tiny"))
    raw = dit.state_dict()
    ema_state = {k: v + 1 if v.is_floating_point() else v for k, v in raw.items()} if ema else None
    torch.save({"state_dict": {"dit." + k: v for k, v in raw.items()},
                "lavinkit": {"kind": "jdit", "config": dit.config.to_dict(), "prefix": "dit.",
                             "ema_state_dict": ema_state}}, path)
    return raw, ema_state


def test_export_ema_and_raw_load_back(tmp_path, capsys):
    raw, ema = _checkpoint(tmp_path / "run.ckpt", ema=True)
    for weights, want in (("ema", ema), ("raw", raw)):
        out = tmp_path / f"{weights}.safetensors"
        assert main(["export", str(tmp_path / "run.ckpt"), "--out", str(out), "--weights", weights]) == 0
        with safe_open(str(out), framework="pt") as f:
            assert f.metadata()["lavinkit_weights"] == weights
        model = JDiT.from_pretrained(out)  # what `lavinkit infer --dit` and `eval` load
        for k, v in model.state_dict().items():
            torch.testing.assert_close(v, want[k], rtol=0, atol=0)
    out = tmp_path / "bf16.safetensors"
    assert main(["export", str(tmp_path / "run.ckpt"), "--out", str(out), "--dtype", "bfloat16"]) == 0
    assert JDiT.from_pretrained(out).final.linear.weight.dtype == torch.bfloat16


def test_export_errors_name_the_problem(tmp_path, capsys):
    _checkpoint(tmp_path / "raw_only.ckpt", ema=False)
    assert main(["export", str(tmp_path / "raw_only.ckpt"), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "--weights raw" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "missing.ckpt" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    assert main(["export", str(tmp_path / "folder"), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "meta.pt" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "raw_only.ckpt"), "--out", str(tmp_path / "x.pt")]) == 2
    assert ".safetensors" in capsys.readouterr().err
