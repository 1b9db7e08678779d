"""The `lavinkit` dispatcher: help, version, unknown commands, console script."""

from __future__ import annotations

import subprocess
import sys

from lavinkit.cli import TOOL_COMMANDS, TRAINER_COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in (*TRAINER_COMMANDS, *TOOL_COMMANDS):
        assert name in out


def test_unknown_command_names_it(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_unknown_bench_target_names_it(capsys):
    assert main(["bench", "nope"]) == 2
    assert "unknown target 'nope'" in capsys.readouterr().err


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "lavinkit.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("lavinkit ")


def test_fit_help_shows_lightning_options(capsys):
    import pytest

    with pytest.raises(SystemExit) as exc:
        main(["fit", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--model" in out and "--data" in out and "--trainer" in out


def test_fit_runs_to_the_end_and_returns_zero(demo_data, tmp_path, monkeypatch):
    """``lavinkit fit`` exits 0 after a finished run (the quickstart script runs under ``set -e``)."""
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "stvae" / "tiny_stage1.yaml"
    monkeypatch.chdir(tmp_path)
    code = main(["fit", "--config", str(recipe), "--trainer.max_steps", "2", "--trainer.logger", "false",
                 "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false",
                 "--trainer.enable_progress_bar", "false",
                 "--data.init_args.train_urls", str(demo_data / "train" / "images-*.tar"),
                 "--data.init_args.val_urls", str(demo_data / "val" / "images-*.tar"),
                 "--data.init_args.size", "32", "--data.init_args.val_batches", "1"])
    assert code == 0
