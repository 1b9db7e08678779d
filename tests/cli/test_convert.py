"""``lavinkit convert`` end to end on the parity weights (both directions, both kinds, errors)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from lavinkit.cli import main
from lavinkit.models.jdit import JDiT
from lavinkit.nn.embed import unpatchify
from tests.conftest import PARITY, load_parity

MANIFEST = json.loads((PARITY / "manifest.json").read_text())
JDIT_KW = json.dumps(MANIFEST["files"]["jdit_weights.safetensors"]["constructor_kwargs"])
VAE_KW = json.dumps(MANIFEST["files"]["vae_weights.safetensors"]["constructor_kwargs"])


def _err(capsys) -> str:
    return capsys.readouterr().err


def test_jdit_both_ways(tmp_path):
    ours = tmp_path / "dit.safetensors"
    assert main(["convert", str(PARITY / "jdit_weights.safetensors"), str(ours), "--kind", "jdit",
                 "--official_kwargs", JDIT_KW]) == 0
    assert all(v.dtype == torch.float16 for v in load_file(str(ours)).values())  # dtype kept
    model = JDiT.from_pretrained(ours, dtype=torch.float32).eval()
    ref = load_parity("jdit_forward")
    with torch.no_grad():
        out = model(unpatchify(ref["x"], (2, 2), 8), ref["t"], unpatchify(ref["cond"], (2, 2), 8))
    torch.testing.assert_close(out, ref["out"], atol=1e-4, rtol=1e-4)

    back = tmp_path / "official.safetensors"
    assert main(["convert", str(ours), str(back), "--kind", "jdit", "--to", "official", "--dtype", "float32"]) == 0
    exported, original = load_file(str(back)), load_file(str(PARITY / "jdit_weights.safetensors"))
    assert exported.keys() == original.keys()
    for k in original:
        assert exported[k].dtype == torch.float32
        torch.testing.assert_close(exported[k], original[k].float(), atol=0, rtol=0)


def test_stvae_both_ways_with_torch_file(tmp_path):
    state = load_file(str(PARITY / "vae_weights.safetensors"))
    pt = tmp_path / "stvae.pt"
    torch.save({"state_dict": state}, pt)
    ours = tmp_path / "vae.safetensors"
    assert main(["convert", str(pt), str(ours), "--kind", "stvae", "--official-kwargs", VAE_KW]) == 0
    back = tmp_path / "back.pt"
    assert main(["convert", str(ours), str(back), "--kind", "stvae", "--to", "official"]) == 0
    exported = torch.load(back, weights_only=True)["state_dict"]
    assert exported.keys() == state.keys()
    for k in state:
        torch.testing.assert_close(exported[k].float(), state[k].float(), atol=0, rtol=0)


def test_missing_file(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope.safetensors"), str(tmp_path / "o.safetensors"), "--kind", "jdit"]) == 2
    assert "no such checkpoint file" in _err(capsys)


def test_wrong_kind(tmp_path, capsys):
    args = ["convert", str(PARITY / "vae_weights.safetensors"), str(tmp_path / "o.safetensors"), "--kind", "jdit"]
    assert main(args) == 2
    assert "use --kind stvae" in _err(capsys)
    ours = tmp_path / "dit.safetensors"
    main(["convert", str(PARITY / "jdit_weights.safetensors"), str(ours), "--kind", "jdit", "--official_kwargs", JDIT_KW])
    assert main(["convert", str(ours), str(tmp_path / "x.pt"), "--kind", "stvae", "--to", "official"]) == 2
    assert "holds a 'jdit' model but --kind is 'stvae'" in _err(capsys)
    assert main(["convert", str(ours), str(tmp_path / "y.safetensors"), "--kind", "jdit"]) == 2
    assert "already a lavinkit weights file" in _err(capsys)


def test_key_mismatch_lists_keys(tmp_path, capsys):
    state = load_file(str(PARITY / "jdit_weights.safetensors"))
    state.pop("blocks.1.x_mlp.up_proj.weight")
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    assert main(["convert", str(bad), str(tmp_path / "o.safetensors"), "--kind", "jdit", "--official_kwargs", JDIT_KW]) == 2
    assert "missing (1): blocks.1.x_mlp.up_proj.weight" in _err(capsys)
    # default kwargs (the official 3B preset) against the small parity weights: shape mismatches are listed
    assert main(["convert", str(PARITY / "jdit_weights.safetensors"), str(tmp_path / "o.safetensors"), "--kind", "jdit"]) == 2
    assert "shape mismatch" in _err(capsys)


def test_fp16_for_bf16_weights_is_refused(tmp_path, capsys):
    bf16 = tmp_path / "bf16.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(str(PARITY / "jdit_weights.safetensors")).items()}, str(bf16))
    out = tmp_path / "o.safetensors"
    assert main(["convert", str(bf16), str(out), "--kind", "jdit", "--official_kwargs", JDIT_KW, "--dtype", "float16"]) == 2
    assert "float16 requested for bfloat16 weights" in _err(capsys) and not out.exists()
    assert main(["convert", str(bf16), str(out), "--kind", "jdit", "--official_kwargs", JDIT_KW]) == 0
    assert all(v.dtype == torch.bfloat16 for v in load_file(str(out)).values())


def test_bad_official_kwargs(tmp_path, capsys):
    src, dst = str(PARITY / "jdit_weights.safetensors"), str(tmp_path / "o.safetensors")
    assert main(["convert", src, dst, "--kind", "jdit", "--official_kwargs", "{not json"]) == 2
    assert "not valid JSON" in _err(capsys)
    assert main(["convert", src, dst, "--kind", "jdit", "--official_kwargs", "huge"]) == 2
    assert "unknown J-DiT preset 'huge'" in _err(capsys)
    assert main(["convert", src, dst, "--kind", "jdit", "--official_kwargs", '{"layers": 2}']) == 2
    assert "layers" in _err(capsys)


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["convert", "--help"])
    assert exc.value.code == 0
    assert "--official_kwargs" in capsys.readouterr().out


def test_progress_bar_follows_the_source_bytes(tmp_path, capsys):
    """The bar (on by default) counts the source file's bytes to 100 % with an ETA; ``--progress false`` hides it."""
    src = PARITY / "jdit_weights.safetensors"
    size = src.stat().st_size
    assert main(["convert", str(src), str(tmp_path / "a.safetensors"), "--kind", "jdit", "--official_kwargs", JDIT_KW]) == 0
    err = _err(capsys)
    bar = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("lavinkit convert:")]
    assert bar and "100%" in bar[-1] and "<" in bar[-1], err  # elapsed<remaining: tqdm's ETA
    from tqdm import tqdm

    assert tqdm.format_sizeof(size, divisor=1024) in bar[-1]  # the whole file, in the bar's unit
    assert main(["convert", str(src), str(tmp_path / "b.safetensors"), "--kind", "jdit", "--official_kwargs", JDIT_KW,
                 "--progress", "false"]) == 0
    assert "lavinkit convert:" not in _err(capsys).replace("lavinkit convert: error", "")
