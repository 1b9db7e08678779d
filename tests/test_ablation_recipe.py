"""The attention ablation recipe builds (``run=False``) for every variant its script trains."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lavinkit.cli import build_cli

ABLATION = Path(__file__).resolve().parents[1] / "recipes" / "ablation"


def _variants() -> dict[str, str]:
    script = (ABLATION / "run.sh").read_text()
    base = re.search(r'^BASE="(.*)"$', script, re.M).group(1)
    block = re.search(r"VARIANTS=\(\n(.*?)\n\)", script, re.S).group(1)
    out = {}
    for line in block.splitlines():
        name, _, extra = line.strip().strip('"').partition("=")
        out[name] = "{" + base + (", " + extra if extra else "") + "}"
    return out


def test_script_lists_the_variants():
    assert set(_variants()) == {"sdpa", "pair_local", "factorized", "infini", "infini_delta", "diffussm"}


@pytest.mark.parametrize(("name", "overrides"), list(_variants().items()))
def test_recipe_builds_each_variant(name, overrides, tmp_path, monkeypatch):
    from lavinkit.models.stvae import STVAE, STVAEConfig

    monkeypatch.chdir(tmp_path)
    vae = tmp_path / "vae.safetensors"
    STVAE(STVAEConfig.from_name("demo")).save_pretrained(vae)
    cli = build_cli(["--config", str(ABLATION / "attention.yaml"), "--model.init_args.vae", str(vae),
                     "--data.init_args.vae", str(vae), "--trainer.logger", "false",
                     "--model.init_args.dit_overrides", overrides], run=False)
    cli.model.configure_model()
    block = cli.model.dit.blocks[0]
    if name == "diffussm":
        assert block.mixer is not None and block.core is None
    else:
        assert block.core.name == ("full" if name == "sdpa" else name.split("_delta")[0])
    if name == "infini_delta":
        assert block.core.update == "delta"
    assert cli.trainer.max_steps == 400
