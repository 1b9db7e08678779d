"""The quickstart recipes build (``run=False``) with the settings the quickstart relies on, and the script runs
its stages in order and ends with ``lavinkit eval``."""

from __future__ import annotations

from pathlib import Path

import yaml

from lavinkit.cli import build_cli

QUICKSTART = Path(__file__).resolve().parents[2] / "recipes" / "quickstart"


def test_stvae_recipe_builds_the_demo_vae(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = build_cli(["--config", str(QUICKSTART / "stvae.yaml")], run=False)
    vae = cli.model.vae
    assert vae.config.name == "demo" and vae.config.spatial_compression == 4
    assert cli.model.measure_latent_stats and cli.model.pair_sides == "target"
    assert cli.model.adversarial is None
    assert cli.trainer.max_steps % cli.datamodule.steps_per_epoch == 0  # validation (latent stats) at the end
    schedule = yaml.safe_load((QUICKSTART / "stvae.yaml").read_text())["model"]["init_args"]["scheduler"]
    assert schedule["init_args"]["total_steps"] == cli.trainer.max_steps


def test_jdit_recipe_builds_on_the_demo_vae_latents(tmp_path, monkeypatch):
    from lavinkit.models.stvae import STVAE, STVAEConfig

    monkeypatch.chdir(tmp_path)
    vae = tmp_path / "vae.safetensors"
    STVAE(STVAEConfig.from_name("demo")).save_pretrained(vae)
    cli = build_cli(["--config", str(QUICKSTART / "jdit.yaml"), "--model.init_args.vae", str(vae),
                     "--data.init_args.vae", str(vae), "--trainer.logger", "false"], run=False)
    module = cli.model
    module.configure_model()
    assert module.dit.config.in_channels == STVAEConfig.from_name("demo").latent_channels
    assert module.objective.time_sampler.mean < 0  # flow times lean to the noise side (see the recipe)
    assert module.dit.config.pair_embedding  # the task is visible at every token (see the recipe)
    raw = yaml.safe_load((QUICKSTART / "jdit.yaml").read_text())
    assert raw["model"]["init_args"]["lr_scheduler"]["init_args"]["total_steps"] == cli.trainer.max_steps
    assert cli.trainer.max_steps == cli.datamodule.steps_per_epoch


def test_script_runs_the_stages_in_order_and_ends_with_eval():
    script = (QUICKSTART / "run.sh").read_text()
    stages = ["data demo", "fit --config recipes/quickstart/stvae.yaml", "encode",
              "fit --config recipes/quickstart/jdit.yaml", "eval --checkpoint runs/quickstart_jdit/"]
    positions = [script.index(f'"$LAVINKIT" {stage}') for stage in stages]
    assert positions == sorted(positions)
    assert "--task-folder demo_data/tasks" in script and "--out runs/quickstart" in script
