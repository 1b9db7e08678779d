"""The long demo recipes build (``run=False``) with the settings the demo relies on: images and clips in both
stages, the J-DiT on the same VAE's latents, and the script's stages in order ending with both evaluations."""

from __future__ import annotations

from pathlib import Path

import yaml

from lavinkit.cli import build_cli

DEMO = Path(__file__).resolve().parents[2] / "recipes" / "demo"


def test_stvae_recipe_trains_the_demo_vae_on_images_and_clips(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = build_cli(["--config", str(DEMO / "stvae.yaml")], run=False)
    assert cli.model.vae.config.name == "demo" and cli.model.measure_latent_stats
    data = yaml.safe_load((DEMO / "stvae.yaml").read_text())["data"]["init_args"]
    assert data["image_weight"] > 0 and data["video_weight"] > 0 and "videos" in data["video_train_urls"]
    assert cli.trainer.max_steps % cli.datamodule.steps_per_epoch == 0
    schedule = yaml.safe_load((DEMO / "stvae.yaml").read_text())["model"]["init_args"]["scheduler"]
    assert schedule["init_args"]["total_steps"] == cli.trainer.max_steps


def test_jdit_recipe_reads_image_and_clip_latents_of_the_demo_vae(tmp_path, monkeypatch):
    from lavinkit.models.stvae import STVAE, STVAEConfig

    monkeypatch.chdir(tmp_path)
    vae = tmp_path / "vae.safetensors"
    STVAE(STVAEConfig.from_name("demo")).save_pretrained(vae)
    cli = build_cli(["--config", str(DEMO / "jdit.yaml"), "--model.init_args.vae", str(vae),
                     "--data.init_args.vae", str(vae), "--trainer.logger", "false"], run=False)
    raw = yaml.safe_load((DEMO / "jdit.yaml").read_text())
    data = raw["data"]["init_args"]
    assert "images" in data["image_train_urls"] and "clips" in data["video_train_urls"]
    assert raw["model"]["init_args"]["vae"] == data["vae"] == "runs/demo_stvae/checkpoints/last.ckpt"
    module = cli.model
    module.configure_model()
    assert module.dit.config.pair_embedding and module.dit.config.query_residual
    assert raw["model"]["init_args"]["lr_scheduler"]["init_args"]["total_steps"] == cli.trainer.max_steps


def test_script_runs_the_stages_in_order_and_evaluates_images_and_clips():
    script = (DEMO / "run.sh").read_text()
    stages = ["data demo", "fit --config recipes/demo/stvae.yaml", "encode", "fit --config recipes/demo/jdit.yaml",
              "eval --checkpoint runs/demo_jdit/"]
    positions = [script.index(f'"$LAVINKIT" {stage}') for stage in stages]
    assert positions == sorted(positions)
    assert '--shards "demo_data/val/videos-*.tar"' in script and "--task-folder demo_data/tasks" in script
    for kind in ("images", "clips"):
        for split in ("train", "val"):
            assert f"runs/demo_latents/{kind}/$split" in script
