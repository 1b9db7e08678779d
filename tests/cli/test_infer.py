"""``lavinkit infer`` end to end on CPU with tiny random models and a synthetic task folder."""

import json

import numpy as np
import pytest
import torch

from lavinkit.cli import main as cli_main
from lavinkit.commands.infer import find_pairs, main, parse_size
from lavinkit.data import media


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from lavinkit.models.jdit import JDiT, JDiTConfig
    from lavinkit.models.stvae import STVAE, STVAEConfig

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    STVAE(STVAEConfig.from_name("tiny", latent_channels=8)).save_pretrained(root / "vae.safetensors")
    dit = JDiT(JDiTConfig.from_name("tiny", in_channels=8))
    dit.init_weights()
    dit.save_pretrained(root / "dit.safetensors")
    return root / "vae.safetensors", root / "dit.safetensors"


def _png(path, rng, size=(24, 40)):
    path.write_bytes(media.encode_image(rng.integers(0, 256, (*size, 3), dtype=np.uint8), "png"))


@pytest.fixture
def task(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "task"
    folder.mkdir()
    for i in range(4):
        _png(folder / f"ex{i}_input.png", rng)
        _png(folder / f"ex{i}_target.png", rng)
    queries = tmp_path / "queries"
    queries.mkdir()
    _png(queries / "a.png", rng)
    _png(queries / "b.jpg", rng, size=(30, 30))
    return folder, queries


def _args(models, task, out, *extra):
    vae, dit = models
    folder, queries = task
    return ["--vae", str(vae), "--dit", str(dit), "--task-folder", str(folder), "--query", str(queries),
            "--out", str(out), "--size", "32x32", "--steps", "4", "--grid", "uniform", "--num-pairs", "2", *extra]


def test_batch_mode_outputs_and_logged_pairs(models, task, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(["infer", *_args(models, task, out, "--seed", "7")]) == 0
    printed = capsys.readouterr().out
    for stem, seed in (("a", 7), ("b", 8)):
        record = json.loads((out / f"{stem}.json").read_text())
        assert record["seed"] == seed and len(record["pairs"]) == len(set(record["pairs"])) == 2
        assert str(record["pairs"]) in printed and record["nfe"] == 3
        result = media.decode_image((out / f"{stem}_result.png").read_bytes())
        grid = media.decode_image((out / f"{stem}_grid.png").read_bytes())
        assert result.shape == (3, 32, 32) and grid.shape == (3, 32, 32 * 6)  # query | 2 pairs | result
    # the same seed gives the same pairs and pixels
    again = tmp_path / "again"
    args = _args(models, task, again, "--seed", "7")
    args[args.index("--query") + 1] = str(task[1] / "a.png")
    assert main(args) == 0
    assert json.loads((again / "a.json").read_text())["pairs"] == json.loads((out / "a.json").read_text())["pairs"]
    assert (again / "a_result.png").read_bytes() == (out / "a_result.png").read_bytes()
    # --ensemble-size: the mean of several answers, said in the output and the record (as is --residual-transfer)
    ensemble = tmp_path / "ensemble"
    args[args.index("--out") + 1] = str(ensemble)
    capsys.readouterr()
    assert main([*args, "--ensemble-size", "3", "--residual-transfer", "true"]) == 0
    printed = capsys.readouterr().out
    assert "mean of 3 answers, residual gain R/G/B " in printed
    record, plain = (json.loads((folder / "a.json").read_text()) for folder in (ensemble, again))
    assert record["ensemble_size"] == 3 and record["residual_transfer"] is True
    assert len(record["residual_gain"]) == 3 and all(-1 <= g <= 1 for g in record["residual_gain"])
    assert plain["ensemble_size"] == 1 and plain["residual_transfer"] is False and "residual_gain" not in plain
    assert (ensemble / "a_result.png").read_bytes() != (again / "a_result.png").read_bytes()


def test_pairs_drawn_without_replacement_and_query_excluded(models, task, tmp_path):
    folder, _ = task
    out = tmp_path / "out"
    args = _args(models, task, out, "--num-pairs", "3")
    args[args.index("--query") + 1] = str(folder / "ex0_input.png")
    assert main(args) == 0
    pairs = json.loads((out / "ex0_input.json").read_text())["pairs"]
    assert sorted(pairs) == ["ex1", "ex2", "ex3"]  # all others, each once, never the query's own pair


def test_video_query_writes_mp4(models, task, tmp_path):
    folder, _ = task
    clip = np.random.default_rng(1).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    (tmp_path / "clip.npy").write_bytes(media.encode_npy(clip))
    out = tmp_path / "out"
    args = _args(models, task, out, "--num-pairs", "1")
    args[args.index("--query") + 1] = str(tmp_path / "clip.npy")
    assert main(args) == 0
    record = json.loads((out / "clip.json").read_text())
    assert record["frames"] == 5  # cut to 1 + 4k
    frames = media.decode_mp4((out / "clip_result.mp4").read_bytes())
    assert frames.shape == (5, 32, 32, 3)
    assert media.decode_mp4((out / "clip_grid.mp4").read_bytes()).shape == (5, 32, 32 * 4, 3)


@pytest.mark.parametrize("change,message", [
    (("--num-pairs", "9"), "--num-pairs 9 requested but only 4 pairs"),
    (("--size", "30x32"), "multiples of 16"),
    (("--steps", "25", "--grid", "official"), "--steps 25"),
    (("--ensemble-size", "0"), "--ensemble-size must be >= 1"),
    (("--vae", "nowhere.safetensors"), "--vae nowhere.safetensors: no such file"),
    (("--query", "nowhere.png"), "--query nowhere.png"),
    (("--dtype", "float16", "--vae", "BF16"), "bfloat16"),
])  # fmt: skip
def test_errors_name_the_option(models, task, tmp_path, capsys, change, message):
    args = _args(models, task, tmp_path / "out")
    change = list(change)
    if "BF16" in change:  # fp16 requested for bf16-stored weights
        from lavinkit.models.stvae import STVAE

        bf16 = tmp_path / "vae_bf16.safetensors"
        STVAE.from_pretrained(models[0]).to(torch.bfloat16).save_pretrained(bf16)
        change[change.index("BF16")] = str(bf16)
    for key, value in zip(change[::2], change[1::2]):
        if key in args:
            args[args.index(key) + 1] = value
        else:
            args += [key, value]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_unpaired_names_listed(task, tmp_path):
    folder, _ = task
    (folder / "ex1_target.png").unlink()
    _png(folder / "lonely_target.png", np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\['ex1_input.png', 'lonely_target.png'\]"):
        find_pairs(folder)


def test_parse_size_and_help(capsys):
    assert parse_size("48x32") == (48, 32) and parse_size("64") == (64, 64)
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--task-folder" in capsys.readouterr().out


def test_checkpoint_brings_dit_and_recorded_vae(models, task, tmp_path):
    from lavinkit.models.jdit import JDiT

    vae, dit_file = models
    dit = JDiT.from_pretrained(dit_file)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"dit.{k}": v for k, v in dit.state_dict().items()},
                "lavinkit": {"kind": "jdit", "config": dit.config.to_dict(), "prefix": "dit.", "vae": str(vae),
                             "ema_state_dict": None}}, ckpt)  # fmt: skip
    out = tmp_path / "out"
    args = _args(models, task, out, "--num-pairs", "1", "--checkpoint", str(ckpt))
    for key in ("--vae", "--dit"):
        i = args.index(key)
        del args[i : i + 2]
    args[args.index("--query") + 1] = str(task[1] / "a.png")
    assert main(args) == 0
    record = json.loads((out / "a.json").read_text())
    assert record["vae"] == str(vae) and record["dit"] == str(ckpt)
    assert main([*args, "--dit", str(dit_file)]) == 2  # --checkpoint and --dit are exclusive


def test_held_out_queries_of_several_tasks(models, tmp_path, capsys):
    rng = np.random.default_rng(1)
    root = tmp_path / "tasks"
    for task_name in ("alpha", "beta"):
        (root / task_name).mkdir(parents=True)
        for i in range(4):
            _png(root / task_name / f"p{i}_input.png", rng)
            _png(root / task_name / f"p{i}_target.png", rng)
    vae, dit = models
    out = tmp_path / "out"
    args = ["--vae", str(vae), "--dit", str(dit), "--task-folder", str(root), "--out", str(out), "--size", "32x32",
            "--steps", "4", "--grid", "uniform", "--num-pairs", "2", "--queries-per-task", "1"]
    assert main(args) == 0
    for task_name in ("alpha", "beta"):
        record = json.loads((out / f"{task_name}_p3_input.json").read_text())
        assert "p3" not in record["pairs"] and record["target"].endswith("p3_target.png")
        grid = media.decode_image((out / f"{task_name}_p3_input_grid.png").read_bytes())
        assert grid.shape == (3, 32, 32 * 7)  # query | 2 pairs | result | target
    sheet = media.decode_image((out / "results_grid.png").read_bytes())
    assert sheet.shape[1] == 2 * 32  # one row per task
    # too few pairs for held-out queries plus examples names the folder
    assert main([*args[:-1], "3"]) == 2
    assert "cannot give 3 held-out queries" in capsys.readouterr().err
    assert main([*args, "--tasks", "[gamma]"]) == 2
    assert "no such task folder" in capsys.readouterr().err
