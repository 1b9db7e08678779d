"""``trainer.default_root_dir`` is a run's one output folder: logs, the saved config and checkpoints move with it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lavinkit.cli import main

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
TRAINING_RECIPES = sorted(p for p in RECIPES.rglob("*.yaml") if "logger" in yaml.safe_load(p.read_text())["trainer"])


@pytest.mark.parametrize("recipe", TRAINING_RECIPES, ids=lambda p: str(p.relative_to(RECIPES)))
def test_recipes_name_their_output_folder_once(recipe):
    """No recipe repeats the folder in the logger or the checkpoint callback: both follow ``default_root_dir``."""
    trainer = yaml.safe_load(recipe.read_text())["trainer"]
    assert trainer["default_root_dir"].startswith("runs/")
    logger = trainer["logger"]["init_args"]
    assert "save_dir" not in logger and logger["name"] == "" and logger["version"] == ""
    for callback in trainer.get("callbacks") or []:
        assert "dirpath" not in (callback.get("init_args") or {}), callback["class_path"]


def test_default_root_dir_on_the_command_line_moves_logs_and_checkpoints(demo_data, tmp_path, monkeypatch):
    """A short ``lavinkit fit`` of the tiny ST-VAE recipe (only its step counts shortened) with
    ``--trainer.default_root_dir`` writes the TensorBoard events, ``config.yaml`` and ``checkpoints/last.ckpt``
    there, and nothing under the recipe's own ``runs/`` folder."""
    recipe = yaml.safe_load((RECIPES / "stvae" / "tiny_stage1.yaml").read_text())
    recipe["trainer"].update(max_steps=2, enable_progress_bar=False)
    for callback in recipe["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"]["every_n_train_steps"] = 2
    recipe["model"]["init_args"]["adversarial"]["init_args"]["disc_start"] = 1
    recipe["data"]["init_args"].update(train_urls=str(demo_data / "train" / "images-*.tar"),
                                       val_urls=str(demo_data / "val" / "images-*.tar"),
                                       size=32, batch_size=2, steps_per_epoch=2, val_batches=1)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "elsewhere" / "run1"
    monkeypatch.chdir(tmp_path)

    assert main(["fit", "--config", str(path), "--trainer.default_root_dir", str(out)]) == 0

    assert list(out.glob("events.out.tfevents.*")), sorted(p.name for p in out.iterdir())
    assert (out / "config.yaml").is_file() and (out / "hparams.yaml").is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "runs").exists()
