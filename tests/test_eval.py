"""``lavinkit eval`` and ``lavinkit.evaluation.evaluate`` on CPU with tiny random models and 32x32 pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from lavinkit.cli import main as cli_main
from lavinkit.commands.eval import main
from lavinkit.data import media
from lavinkit.evaluation import (
    EvalError,
    default_partners,
    evaluate,
    format_task_table,
    reference_answer,
)
from lavinkit.evaluation.data import EvalTask

SIZE = 32
FAST = ["--size", f"{SIZE}x{SIZE}", "--steps", "3", "--grid", "uniform", "--num-pairs", "2", "--progress", "false"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny ST-VAE (8 latent channels), a J-DiT whose output depends on its context, a J-DiT training checkpoint
    that records the VAE, and a 16-channel VAE that does not fit the J-DiT."""
    from lavinkit.models.jdit import JDiT, JDiTConfig
    from lavinkit.models.stvae import STVAE, STVAEConfig

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    STVAE(STVAEConfig.from_name("tiny", latent_channels=8)).save_pretrained(root / "vae.safetensors")
    STVAE(STVAEConfig.from_name("tiny")).save_pretrained(root / "vae16.safetensors")
    dit = JDiT(JDiTConfig.from_name("tiny", in_channels=8))
    dit.init_weights()
    with torch.no_grad():  # zero-initialised gates and final layer would make the context irrelevant
        for p in dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    dit.save_pretrained(root / "dit.safetensors")
    torch.save({"state_dict": {f"dit.{k}": v for k, v in dit.state_dict().items()},
                "hyper_parameters": {"vae": str(root / "vae.safetensors")},
                "lavinkit": {"kind": "jdit", "config": dit.config.to_dict(), "prefix": "dit.", "ema_state_dict": None,
                             "vae": str(root / "vae.safetensors")}}, root / "jdit.ckpt")  # fmt: skip
    return root


def _png(path, array):
    path.write_bytes(media.encode_image(np.ascontiguousarray(array), "png"))


@pytest.fixture(scope="module")
def task_root(tmp_path_factory):
    """Four image tasks of four pairs: two demo restoration tasks, horizontal_flip, and a task with no reference."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("tasks")
    for task in ("denoising", "horizontal_flip", "inpainting", "mytask"):
        (root / task).mkdir()
        for i in range(4):
            x = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            if task == "horizontal_flip":
                x, y = x, x[:, ::-1]
            else:
                y = x
                x = np.clip(x.astype(int) + rng.integers(-40, 40, x.shape), 0, 255).astype(np.uint8)
            _png(root / task / f"p{i}_input.png", x)
            _png(root / task / f"p{i}_target.png", y)
    return root


def _pipe(models):
    from lavinkit.pipeline import InContextPipeline

    return InContextPipeline.from_checkpoints(models / "vae.safetensors", models / "dit.safetensors", num_steps=3,
                                              grid="uniform", device="cpu")


def _unit(path):
    """A PNG as float [1, 3, H, W] in [0, 1], read without lavinkit."""
    from PIL import Image

    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].float() / 255


def test_cli_report_files_and_identical_json(models, task_root, tmp_path, capsys):
    args = ["--checkpoint", str(models / "jdit.ckpt"), "--task-folder", str(task_root), *FAST,
            "--seeds", "[0, 1]"]
    assert cli_main(["eval", *args, "--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    assert all(task in printed for task in ("denoising", "horizontal_flip", "inpainting", "mytask"))
    assert "prediction beats identity on" in printed and "identity PSNR" in printed and "swap shift dB" in printed
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    first = (tmp_path / "a" / "eval.json").read_text()
    assert first == (tmp_path / "b" / "eval.json").read_text()  # seeded: the same command, the same numbers

    report = json.loads(first)
    assert report["settings"]["vae"] == str(models / "vae.safetensors")  # recorded in the checkpoint
    assert report["settings"]["partners"] == {"denoising": "inpainting", "horizontal_flip": "mytask",
                                              "inpainting": "denoising", "mytask": "horizontal_flip"}
    for name, task in report["tasks"].items():
        assert task["queries"] == ["p3"] and task["count"] == 2
        assert [r["seed"] for r in task["records"]] == [0, 1]
        for record in task["records"]:
            assert "p3" not in record["pairs"] and len(set(record["pairs"])) == 2  # queries are never examples
            assert "p3" not in record["partner_pairs"]
            assert record["swap_abs_change"] > 0  # the partner's examples change the answer
        assert task["means"]["beats_identity_db"] == pytest.approx(
            task["means"]["psnr"] - task["means"]["identity_psnr"])
    assert report["tasks"]["horizontal_flip"]["records"][0]["swap_shift_db"] is None  # mytask has no reference
    assert report["summary"]["tasks"] == 4 and report["summary"]["text"] in printed

    markdown = (tmp_path / "a" / "eval.md").read_text()
    assert "| task |" in markdown and "| mytask |" in markdown and report["summary"]["text"] in markdown
    grid = media.decode_image((tmp_path / "a" / "eval_grid.png").read_bytes())
    # 4 rows of 32 px tiles (+2 px padding) enlarged 3x, under a 16 px header; 9 columns beside a label band
    assert grid.shape[1] == 16 + 3 * (2 + 4 * 34) and grid.shape[2] == 170 + 3 * (2 + 9 * 34)


def test_identity_ceiling_and_swap_reference_numbers(models, task_root):
    pipe = _pipe(models)
    report = evaluate(pipe, task_folder=task_root, tasks=["mytask", "denoising"], size=(SIZE, SIZE), num_pairs=2,
                      swap_with={"mytask": "horizontal_flip"}, progress=False)
    assert list(report.tasks) == ["mytask", "denoising"] and report.tasks["denoising"].partner == "mytask"
    vae = pipe.vae
    for name, task in report.tasks.items():
        (record,) = task.records
        query, target = _unit(task_root / name / "p3_input.png"), _unit(task_root / name / "p3_target.png")
        # the identity baseline is torchmetrics on the files themselves
        assert record["identity_psnr"] == pytest.approx(float(peak_signal_noise_ratio(query, target, data_range=1.0)),
                                                        abs=1e-5)
        assert record["identity_ssim"] == pytest.approx(
            float(structural_similarity_index_measure(query, target, data_range=1.0)), abs=1e-5)
        # the ceiling is the VAE round trip of the target (posterior mean)
        with torch.no_grad():
            recon = (vae.decode(vae.encode(target[:, :, None] * 2 - 1).mean) / 2 + 0.5).clamp(0, 1)[:, :, 0]
        assert record["ceiling_psnr"] == pytest.approx(float(peak_signal_noise_ratio(recon, target, data_range=1.0)),
                                                       abs=1e-3)
        # the prediction is reproducible from the recorded seed and pairs
        pairs = [(_unit(task_root / name / f"{n}_input.png")[:, :, None] * 2 - 1,
                  _unit(task_root / name / f"{n}_target.png")[:, :, None] * 2 - 1) for n in record["pairs"]]
        pred = pipe(query[:, :, None] * 2 - 1, pairs, seed=record["pipeline_seed"]).images[:, :, 0]
        assert record["psnr"] == pytest.approx(float(peak_signal_noise_ratio(pred, target, data_range=1.0)), abs=1e-4)
        if name == "mytask":  # partner horizontal_flip: its reference answer is the mirrored query
            flipped = query.flip(-1)
            assert record["pred_ref_psnr"] == pytest.approx(
                float(peak_signal_noise_ratio(pred, flipped, data_range=1.0)), abs=1e-4)
            assert record["swap_shift_db"] == pytest.approx(record["swap_ref_psnr"] - record["pred_ref_psnr"])
        else:  # partner mytask: no reference, the change is reported instead
            assert record["swap_shift_db"] is None and record["swap_change_psnr"] > 0
    assert "lpips" not in record and "LPIPS" not in report.to_markdown()  # LPIPS needs local weights
    assert report.summary().startswith("prediction beats identity on ")
    assert "mean swap shift" in report.summary()
    assert report.to_dict()["tasks"]["denoising"]["means"]["swap_shift_db"] is None
    assert report.to_markdown().count("\n| ") == 3  # header + 2 task rows (the separator starts with |-)


def test_ensemble_answers_are_scored_and_recorded(models, task_root):
    """An ensemble pipeline's averaged answer (here with the residual transfer) is what eval scores, and the report
    says how many were averaged and that the residual was transferred."""
    pipe = _pipe(models)
    pipe.ensemble_size, pipe.residual_transfer = 3, True
    report = evaluate(pipe, task_folder=task_root, tasks=["denoising"], size=(SIZE, SIZE), num_pairs=2,
                      progress=False)
    (record,) = report.tasks["denoising"].records
    query = _unit(task_root / "denoising" / "p3_input.png")[:, :, None] * 2 - 1
    target = _unit(task_root / "denoising" / "p3_target.png")
    pairs = [(_unit(task_root / "denoising" / f"{n}_input.png")[:, :, None] * 2 - 1,
              _unit(task_root / "denoising" / f"{n}_target.png")[:, :, None] * 2 - 1) for n in record["pairs"]]
    answer = pipe(query, pairs, seed=record["pipeline_seed"]).images[:, :, 0]
    assert record["psnr"] == pytest.approx(float(peak_signal_noise_ratio(answer, target, data_range=1.0)), abs=1e-4)
    pipe.ensemble_size, pipe.residual_transfer = 1, False
    single = pipe(query, pairs, seed=record["pipeline_seed"]).images[:, :, 0]
    assert not torch.allclose(single, answer)
    assert report.settings["ensemble_size"] == 3 and "3 answers averaged per query" in report.to_markdown()
    assert report.settings["residual_transfer"] and "residual transferred" in report.to_markdown()


def test_reference_answers():
    q = np.random.default_rng(0).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
    assert np.array_equal(reference_answer("horizontal_flip", q), q[:, :, ::-1])
    assert reference_answer("denoising", q) is q and reference_answer("video_colorization", q) is q
    assert reference_answer("frame_prediction", q) is None and reference_answer("my_own_task", q) is None
    from lavinkit.data.demo import t_edge_detection

    assert np.array_equal(reference_answer("edge_detection", q), t_edge_detection(q, None)[1])


def test_default_partners_by_modality_and_order():
    task = lambda name, modality: EvalTask(name, modality, "-", {})  # noqa: E731
    tasks = [task("c", "image"), task("a", "image"), task("v", "video"), task("b", "image")]
    assert default_partners(tasks) == {"c": "a", "a": "b", "b": "c", "v": None}
    four = [task(n, "image") for n in "abcd"]
    assert default_partners(four) == {"a": "c", "b": "d", "c": "a", "d": "b"}


def test_shards_with_images_and_clips(models, tmp_path):
    from lavinkit.data.pack import PairShardWriter
    from lavinkit.data.schema import make_sample

    rng = np.random.default_rng(1)
    with PairShardWriter(tmp_path / "shards", "pairs", maxcount=7) as writer:
        for task, frames, n in (("denoising", 1, 3), ("horizontal_flip", 1, 3), ("video_denoising", 5, 3)):
            for i in range(n):
                x = rng.integers(0, 256, (frames, SIZE, SIZE, 3), dtype=np.uint8)
                y = x[:, :, ::-1] if task == "horizontal_flip" else x
                writer.write(make_sample(f"{task}-{i}", task, x, np.ascontiguousarray(y), clip_ext="npy"))
    report = evaluate(models / "jdit.ckpt", shards=str(tmp_path / "shards"), size=f"{SIZE}x{SIZE}", num_pairs=2,
                      num_steps=3, grid="uniform", device="cpu", progress=False, out=tmp_path / "out")
    video = report.tasks["video_denoising"]
    assert video.modality == "video" and video.partner is None and video.queries == ["video_denoising-2"]
    assert "swap_psnr" not in video.records[0] and video.records[0]["psnr"] > 0
    assert report.tasks["denoising"].partner == "horizontal_flip"
    rows = json.loads((tmp_path / "out" / "eval.json").read_text())["tasks"]
    assert sorted(rows["horizontal_flip"]["records"][0]["pairs"]) == ["horizontal_flip-0", "horizontal_flip-1"]
    assert (tmp_path / "out" / "eval_grid.png").is_file()


def test_lpips_only_with_local_weights(models, task_root, tmp_path):
    import torchvision

    torch.manual_seed(0)
    weights = tmp_path / "squeezenet.pth"
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), weights)
    report = evaluate(_pipe(models), task_folder=task_root, tasks=["denoising", "inpainting"], size=(SIZE, SIZE),
                      num_pairs=2, lpips_weights=weights, lpips_net="squeeze", progress=False)
    record = report.tasks["denoising"].records[0]
    assert all(np.isfinite(record[k]) for k in ("lpips", "identity_lpips", "ceiling_lpips", "swap_lpips"))
    assert "LPIPS" in report.to_markdown()
    with pytest.raises(EvalError, match="--lpips-weights: LPIPS weights .*nope.pth: no such file"):
        evaluate(_pipe(models), task_folder=task_root, size=(SIZE, SIZE), num_pairs=2,
                 lpips_weights=tmp_path / "nope.pth")


@pytest.fixture(scope="module")
def mixed_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    (root / "mixed").mkdir()
    rng = np.random.default_rng(2)
    for i in range(3):
        x = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        _png(root / "mixed" / f"p{i}_input.png", x)
        _png(root / "mixed" / f"p{i}_target.png", x)
    clip = rng.integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
    (root / "mixed" / "clip_input.npy").write_bytes(media.encode_npy(clip))
    (root / "mixed" / "clip_target.npy").write_bytes(media.encode_npy(clip))
    return root


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--dit": "vae.safetensors"}, "J-DiT {models}/vae.safetensors: holds an ST-VAE model, not a J-DiT"),
        ({"--vae": "dit.safetensors"}, "ST-VAE {models}/dit.safetensors: holds a J-DiT model, not an ST-VAE"),
        ({"--vae": "vae16.safetensors"}, "ST-VAE {models}/vae16.safetensors makes 16-channel latents but J-DiT "
                                         "{models}/dit.safetensors expects in_channels=8"),
        ({"--num-pairs": "3", "--queries-per-task": "2"}, "4 pairs cannot give 2 queries and --num-pairs 3"),
        ({"--tasks": "[denoising, nope]"}, "--tasks ['nope']: no such task in --task-folder {tasks} (available: "
                                           "['denoising', 'horizontal_flip', 'inpainting', 'mytask'])"),
        ({"--task-folder": "{mixed}"}, "mixes images (p0_input.png, ...) and clips (clip_input.npy, ...)"),
        ({"--task-folder": "{tasks}/missing"}, "--task-folder {tasks}/missing: no such directory"),
        ({"--dit": "missing.safetensors"}, "--dit {models}/missing.safetensors: no such file"),
        ({"--vae": "missing.safetensors"}, "--vae {models}/missing.safetensors: no such file"),
        ({"--task-folder": None, "--shards": "{tasks}/none-*.tar"}, "--shards: glob"),
        ({"--swap-with": "{mytask: elsewhere}"}, "--swap-with mytask: elsewhere: no task 'elsewhere'"),
        ({"--size": "30x30"}, "--size '30x30': height and width must be positive multiples of 16"),
        ({"--ensemble-size": "0"}, "--ensemble-size must be >= 1 (answers averaged per query), got 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(models, task_root, mixed_root, tmp_path, capsys, change, message):
    values = {"--dit": "dit.safetensors", "--vae": "vae.safetensors", "--task-folder": str(task_root)}
    values.update(change)
    args = [*FAST, "--out", str(tmp_path / "out")]
    for key, value in values.items():
        if value is None:
            continue
        if key in ("--dit", "--vae"):
            value = str(models / value)
        args += [key, value.replace("{tasks}", str(task_root)).replace("{mixed}", str(mixed_root))]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("lavinkit eval: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert message.replace("{models}", str(models)).replace("{tasks}", str(task_root)) in err


def test_wrong_kind_training_checkpoint(models, task_root, tmp_path, capsys):
    from lavinkit.models.stvae import STVAE

    vae = STVAE.from_pretrained(models / "vae.safetensors")
    ckpt = tmp_path / "stvae.ckpt"
    torch.save({"state_dict": {f"vae.{k}": v for k, v in vae.state_dict().items()},
                "lavinkit": {"kind": "stvae", "config": vae.config.to_dict(), "prefix": "vae.", "ema_state_dict": None}},
               ckpt)  # fmt: skip
    args = ["--checkpoint", str(ckpt), "--vae", str(models / "vae.safetensors"), "--task-folder", str(task_root),
            *FAST, "--out", str(tmp_path / "out")]
    assert main(args) == 2
    assert f"J-DiT {ckpt}: holds an ST-VAE model, not a J-DiT" in capsys.readouterr().err


def test_format_task_table():
    rows = {"a": {"count": 2, "psnr": 20.0, "identity_psnr": 18.5, "beats_identity_db": 1.5, "partner": "b|c",
                  "swap_shift_db": float("nan")}}
    md = format_task_table(rows)
    assert md.splitlines()[0] == "| task | n | PSNR | identity PSNR | beats identity dB | swap partner | swap shift dB |"
    assert md.splitlines()[2] == "| a | 2 | 20.00 | 18.50 | +1.50 | b\\|c | - |"
    text = format_task_table(rows, markdown=False)
    assert text.splitlines()[0].startswith("task  n   PSNR") and "+1.50" in text


def test_test_epoch_logs_markdown_table_to_tensorboard(models, tmp_path, caplog):
    import lightning.pytorch as pl
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lavinkit.flow import EulerSampler
    from lavinkit.lit.jdit_module import JDiTModule

    module = JDiTModule(dit="tiny", dit_overrides={"in_channels": 8}, vae=str(models / "vae.safetensors"),
                        sampler=EulerSampler(num_steps=3, grid="uniform"))
    g = torch.Generator().manual_seed(0)
    pixels = lambda: torch.rand(2, 2, 3, 1, SIZE, SIZE, generator=g) * 2 - 1  # noqa: E731  [B, N = k + 1, 3, T, H, W]
    batches = [{"input": pixels(), "target": pixels(), "task": ["alpha", "beta"], "keys": [["a0", "a1"], ["b0", "b1"]],
                "num_context": 1}]
    logger = pl.loggers.TensorBoardLogger(tmp_path, name="tb")
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=logger, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    with caplog.at_level("INFO"):
        results = trainer.test(module, dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))[0]
    target = batches[0]["target"][:, -1, :, 0]
    query = batches[0]["input"][:, -1, :, 0]
    expected = float(peak_signal_noise_ratio((query[0] + 1) / 2, (target[0] + 1) / 2, data_range=1.0))
    assert results["test/alpha/identity_psnr"] == pytest.approx(expected, abs=1e-4)
    assert "identity_psnr" in caplog.text  # the printed table
    events = EventAccumulator(str(logger.log_dir), size_guidance={"tensors": 0}).Reload()
    (tag,) = [t for t in events.Tags()["tensors"] if t.startswith("test/tasks")]
    text = events.Tensors(tag)[0].tensor_proto.string_val[0].decode()
    assert "| task | n | PSNR | SSIM | identity PSNR | beats identity dB |" in text and "| alpha | 1 |" in text
    # one query | prediction | target row per task, through the media path the ST-VAE uses (lit.callbacks.log_media)
    assert {"test/alpha", "test/beta"} <= set(events.Tags()["images"])
    grid = events.Images("test/alpha")[0]
    assert (grid.width, grid.height) == (3 * SIZE + 4 * 2, SIZE + 2 * 2)  # three tiles, make_grid padding 2


def test_clip_tasks_log_their_frames(models, tmp_path):
    """A clip task's rows keep every frame: one frame strip per sample (rows query, prediction, target; columns
    frames) without moviepy, a video with it."""
    import importlib.util

    import lightning.pytorch as pl
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lavinkit.flow import EulerSampler
    from lavinkit.lit.jdit_module import JDiTModule

    module = JDiTModule(dit="tiny", dit_overrides={"in_channels": 8}, vae=str(models / "vae.safetensors"),
                        sampler=EulerSampler(num_steps=2, grid="uniform"))
    g = torch.Generator().manual_seed(0)
    clips = lambda: torch.rand(1, 2, 3, 5, SIZE, SIZE, generator=g) * 2 - 1  # noqa: E731  [B, N, 3, T = 5, H, W]
    batches = [{"input": clips(), "target": clips(), "task": ["gamma"], "keys": [["g0", "g1"]], "num_context": 1}]
    logger = pl.loggers.TensorBoardLogger(tmp_path, name="tb")
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=logger, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.test(module, dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    events = EventAccumulator(str(logger.log_dir)).Reload()
    if importlib.util.find_spec("moviepy") is None:
        strip = events.Images("test/gamma/0")[0]
        assert (strip.width, strip.height) == (5 * SIZE + 6, 3 * SIZE + 4)  # 5 frames x 3 rows, padding 1
    else:
        assert "test/gamma" in events.Tags()["images"]  # add_video writes an animated image summary
