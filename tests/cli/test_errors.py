"""Every command: a missing file or a bad option ends in one line naming it and exit code 2, never a traceback."""

from __future__ import annotations

import pytest

from lavinkit.cli import main

MISSING = "no_such_dir/missing"


def _commands(tmp):
    m = f"{tmp}/{MISSING}"
    return {
        "fit": ["fit", "--config", f"{m}.yaml"],
        "validate": ["validate", "--config", f"{m}.yaml"],
        "test": ["test", "--config", f"{m}.yaml"],
        "predict": ["predict", "--config", f"{m}.yaml"],
        "data pack": ["data", "pack", "--task-folders", m, "--out", f"{tmp}/o"],
        "data inspect": ["data", "inspect", f"{m}.tar"],
        "data demo": ["data", "demo", "--out", f"{tmp}/o", "--image-size", "15"],
        "encode": ["encode", "--data", f"{m}.tar", "--out", f"{tmp}/o", "--vae", f"{m}.safetensors"],
        "convert": ["convert", f"{m}.safetensors", f"{tmp}/o.safetensors", "--kind", "jdit"],
        "infer": ["infer", "--task-folder", m, "--dit", f"{m}.safetensors", "--out", f"{tmp}/o"],
        "eval": ["eval", "--task-folder", m, "--dit", f"{m}.safetensors", "--out", f"{tmp}/o"],
    }


@pytest.mark.parametrize("name", list(_commands("x")))
def test_missing_file_is_one_line_and_exit_2(name, tmp_path, capsys):
    assert main(_commands(tmp_path)[name]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert "error" in last.lower() and ("missing" in last or "image_size" in last.replace("-", "_")), last


def test_unknown_option_exit_2(capsys):
    assert main(["encode", "--data", "x", "--out", "y", "--vae", "z", "--frobnicate", "1"]) == 2
    assert "frobnicate" in capsys.readouterr().err
