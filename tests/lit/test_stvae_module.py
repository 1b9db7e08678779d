"""STVAEModule: tiny fits on the demo shards, resume, init_from, finite-loss guard, strategy checks."""

from __future__ import annotations

import copy
import math
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lavinkit.lit import STVAEModule
from lavinkit.lit.callbacks import EMA, MediaLogger, StepTimer
from lavinkit.lit.utils import check_manual_optimization_strategy
from lavinkit.losses import AdversarialLoss, KLLoss, ReconstructionLoss
from lavinkit.models.io import load_pretrained
from lavinkit.models.stvae import STVAEConfig
from lavinkit.models.stvae.discriminator import NLayerDiscriminator, PatchDiscriminator
from tests.conftest import run_distributed_script

HERE = Path(__file__).parent


def make_module(disc_start: int = 1, video: bool = False, **kwargs) -> STVAEModule:
    torch.manual_seed(0)
    disc = PatchDiscriminator(
        image=NLayerDiscriminator(2, base_channels=8, num_layers=2),
        video=NLayerDiscriminator(3, base_channels=8, num_layers=2) if video else None,
    )
    return STVAEModule(
        "tiny",
        ReconstructionLoss(l1_weight=1.0, l2_weight=1.0),
        KLLoss(1e-6),
        adversarial=AdversarialLoss(disc, disc_start=disc_start, generator_weight=0.1),
        optimizer=partial(torch.optim.AdamW, lr=1e-3, betas=(0.5, 0.9)),
        disc_optimizer=partial(torch.optim.AdamW, lr=1e-3, betas=(0.5, 0.9)),
        scheduler=partial(torch.optim.lr_scheduler.LinearLR, start_factor=0.5, total_iters=10),
        **kwargs,
    )


def make_data(root: Path, steps_per_epoch: int = 2):
    from lavinkit.data import ImagePairDataModule

    return ImagePairDataModule(
        train_urls=str(root / "train" / "images-*.tar"), val_urls=str(root / "val" / "images-*.tar"),
        batch_size=1, num_context=0, steps_per_epoch=steps_per_epoch, val_batches=1, shuffle_buffer=8, seed=0,
    )


def make_trainer(root: Path, max_steps: int, callbacks=(), **kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, default_root_dir=str(root),
        logger=pl.loggers.TensorBoardLogger(str(root), name="tb", version=""), callbacks=list(callbacks),
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1,
        **kwargs,
    )


@pytest.fixture(scope="module")
def stage1_run(demo_data, tmp_path_factory):
    """A 3-step fit (discriminator on from step 1) with EMA; returns (trainer, module, ema, checkpoint path)."""
    root = tmp_path_factory.mktemp("stage1")
    module, ema = make_module(disc_start=1), EMA(decay=0.5)
    trainer = make_trainer(root, max_steps=3, callbacks=[ema, StepTimer(), MediaLogger()], limit_val_batches=1)
    trainer.fit(module, make_data(demo_data, steps_per_epoch=3))
    ckpt = root / "stage1.ckpt"
    trainer.save_checkpoint(ckpt)
    return trainer, module, ema, ckpt


def test_tiny_fit_logs_finite_losses_and_psnr(stage1_run):
    trainer, module, ema, _ = stage1_run
    assert trainer.global_step == 3  # generator updates only: the discriminator's steps are not counted
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == 3
    logged = {k: float(v) for k, v in trainer.logged_metrics.items()}
    for key in ("train/loss", "train/rec_l1", "train/rec_l2", "train/kl", "train/g_adv", "train/d_loss",
                "train/adaptive_weight", "train/skipped_nonfinite", "val/psnr", "val/ssim", "train/step_time"):
        assert key in logged and math.isfinite(logged[key]), key
    assert logged["train/skipped_nonfinite"] == 0
    assert 0.0 < logged["val/psnr"] < 60.0
    # the discriminator was trained
    assert trainer.optimizers[1].state, "discriminator optimizer never stepped"
    # reconstruction grid written to TensorBoard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(trainer.logger.log_dir)
    events.Reload()
    assert "val/reconstruction/0" in events.Tags()["images"]


def test_media_panels_images_and_clip_strips():
    from lavinkit.lit.callbacks import media_panels

    imgs = [torch.zeros(3, 3, 1, 8, 8), torch.ones(3, 3, 1, 8, 8)]
    grid = media_panels(imgs, max_samples=2)[""]
    assert grid.dtype == torch.uint8 and grid.shape[0] == 3 and grid.shape[1] == 2 * 8 + 3 * 2  # 2 rows
    clips = [torch.zeros(2, 3, 5, 8, 8), torch.ones(2, 3, 5, 8, 8)]
    strips = media_panels(clips, video=False)
    assert set(strips) == {"/0", "/1"} and strips["/0"].shape == (3, 2 * 8 + 3, 5 * 8 + 6)
    video = media_panels(clips, video=True)[""]
    assert video.shape == (2, 5, 3, 8, 16)


def test_checkpoint_holds_raw_weights_ema_and_loads_weights_only(stage1_run):
    trainer, module, ema, ckpt = stage1_run
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    block = checkpoint["lavinkit"]
    assert block["kind"] == "stvae" and block["prefix"] == "vae." and block["config"]["name"] == "tiny"
    raw = {k: v for k, v in module.vae.state_dict().items()}
    _, _, loaded_raw = load_pretrained(ckpt, use_ema=False)
    _, _, loaded_ema = load_pretrained(ckpt, use_ema=True)
    for k, v in raw.items():
        torch.testing.assert_close(loaded_raw[k], v, rtol=0, atol=0)
    ema_state = ema.ema_state_dict()
    for k, v in ema_state.items():
        torch.testing.assert_close(loaded_ema[k], v, rtol=0, atol=0)
    assert any(not torch.equal(ema_state[k], raw[k]) for k in raw if raw[k].is_floating_point())
    assert len(checkpoint["optimizer_states"]) == 2
    assert any(k.startswith("adversarial.discriminator.") for k in checkpoint["state_dict"])


def test_checkpoint_during_ema_validation_keeps_raw_weights(stage1_run, tmp_path):
    trainer, module, ema, _ = stage1_run
    raw = {k: v.clone() for k, v in module.vae.state_dict().items()}
    ema_state = {k: v.clone() for k, v in ema.ema_state_dict().items()}
    ema._swap(module)  # as during validation with EMA weights
    try:
        for k, v in module.vae.state_dict().items():
            torch.testing.assert_close(v, ema_state[k], rtol=0, atol=0)
        trainer.save_checkpoint(tmp_path / "during_val.ckpt")
    finally:
        ema._swap(module)
    checkpoint = torch.load(tmp_path / "during_val.ckpt", map_location="cpu", weights_only=True)
    for k, v in raw.items():
        torch.testing.assert_close(checkpoint["state_dict"]["vae." + k], v, rtol=0, atol=0)
        torch.testing.assert_close(checkpoint["lavinkit"]["ema_state_dict"][k], ema_state[k], rtol=0, atol=0)
        torch.testing.assert_close(module.vae.state_dict()[k], v, rtol=0, atol=0)


class _Snapshot(Callback):
    """Records the restored training state when fitting (re)starts."""

    def on_train_start(self, trainer, pl_module):
        self.step = trainer.global_step
        self.vae = {k: v.clone() for k, v in pl_module.vae.state_dict().items()}
        self.disc = {k: v.clone() for k, v in pl_module.adversarial.discriminator.state_dict().items()}
        self.opt = [copy.deepcopy(o.state_dict()) for o in trainer.optimizers]
        ema = next(c for c in trainer.callbacks if isinstance(c, EMA))
        self.ema = {k: v.clone() for k, v in (ema.ema_state_dict() or {}).items()}


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def _assert_same_optimizer(a: dict, b: dict) -> None:
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        for name, v in a["state"][i].items():
            torch.testing.assert_close(v, b["state"][i][name], rtol=0, atol=0)
    assert [g["lr"] for g in a["param_groups"]] == [g["lr"] for g in b["param_groups"]]


def test_resume_mid_run_matches_uninterrupted(demo_data, tmp_path):
    # uninterrupted: 4 steps; a checkpoint after step 2 (mid-epoch: 3 batches per epoch)
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpts", every_n_train_steps=2, save_top_k=-1, save_last=True)
    full_module, full_ema = make_module(disc_start=1), EMA(decay=0.5)
    full = make_trainer(tmp_path / "full", 4, [full_ema, ckpt_cb], limit_val_batches=0)
    full.fit(full_module, make_data(demo_data, steps_per_epoch=3))
    mid = tmp_path / "ckpts" / "epoch=0-step=2.ckpt"
    assert mid.is_file() and (tmp_path / "ckpts" / "last.ckpt").is_file()
    saved = torch.load(mid, map_location="cpu", weights_only=True)

    snap, resumed_ema = _Snapshot(), EMA(decay=0.5)
    resumed_module = make_module(disc_start=1)
    resumed = make_trainer(tmp_path / "resumed", 4, [resumed_ema, snap], limit_val_batches=0)
    resumed.fit(resumed_module, make_data(demo_data, steps_per_epoch=3), ckpt_path=str(mid))

    # restored exactly what was saved
    assert snap.step == saved["global_step"] == 2
    _assert_same_state(snap.vae, {k[4:]: v for k, v in saved["state_dict"].items() if k.startswith("vae.")})
    _assert_same_state(snap.disc, {k[len("adversarial.discriminator."):]: v for k, v in saved["state_dict"].items()
                                   if k.startswith("adversarial.discriminator.")})
    _assert_same_state(snap.ema, saved["lavinkit"]["ema_state_dict"])
    for got, want in zip(snap.opt, saved["optimizer_states"], strict=True):
        _assert_same_optimizer(got, want)
    # and continued like the uninterrupted run
    assert resumed.global_step == full.global_step == 4
    torch.testing.assert_close(resumed_module.vae.state_dict(), full_module.vae.state_dict())
    torch.testing.assert_close(resumed_module.adversarial.discriminator.state_dict(),
                               full_module.adversarial.discriminator.state_dict())
    torch.testing.assert_close(resumed_ema.ema_state_dict(), full_ema.ema_state_dict())
    for a, b in zip(resumed.optimizers, full.optimizers, strict=True):
        _assert_same_optimizer(a.state_dict(), b.state_dict())


def _attach_trainer(module: STVAEModule, **kwargs) -> pl.Trainer:
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, **kwargs)
    module.trainer = trainer
    return trainer


def test_init_from_checkpoint_and_safetensors_loads_weights_only(stage1_run, tmp_path):
    _, trained, ema, ckpt = stage1_run
    module = make_module(init_from=str(ckpt), init_use_ema=False)
    _attach_trainer(module)
    module.setup("fit")
    _assert_same_state(module.vae.state_dict(), trained.vae.state_dict())
    # EMA weights by default; from a safetensors export too
    module = make_module(init_from=str(ckpt))
    _attach_trainer(module)
    module.setup("fit")
    _assert_same_state(module.vae.state_dict(), ema.ema_state_dict())
    weights = trained.vae.save_pretrained(tmp_path / "vae.safetensors")
    module = make_module(init_from=str(weights))
    _attach_trainer(module)
    module.setup("fit")
    _assert_same_state(module.vae.state_dict(), trained.vae.state_dict())
    # the discriminator is not taken from the file (weights only, fresh GAN)
    fresh = make_module()
    _assert_same_state(module.adversarial.discriminator.state_dict(), fresh.adversarial.discriminator.state_dict())


def test_missing_init_from_is_a_clear_error(tmp_path):
    missing = tmp_path / "stage1" / "last.ckpt"
    module = make_module(init_from=str(missing))
    _attach_trainer(module)
    with pytest.raises(FileNotFoundError, match=r"init_from=.*stage1/last.ckpt.*--ckpt_path"):
        module.setup("fit")


def test_init_from_other_architecture_is_rejected(stage1_run):
    _, _, _, ckpt = stage1_run
    module = STVAEModule("tiny", ReconstructionLoss(), KLLoss(), vae_overrides={"latent_channels": 8},
                         init_from=str(ckpt))
    _attach_trainer(module)
    with pytest.raises((ValueError, RuntimeError), match="init_from"):
        module.setup("fit")


class _NaNOnce(torch.nn.Module):
    """Reconstruction loss that returns NaN on its `at`-th training call."""

    def __init__(self, at: int):
        super().__init__()
        self.inner, self.at, self.calls = ReconstructionLoss(), at, 0

    def forward(self, x_hat, x):
        terms = self.inner(x_hat, x)
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.at:
                terms["rec_l1"] = terms["rec_l1"] * float("nan")
        return terms


def test_nonfinite_loss_skips_the_step_and_counts_it(demo_data, tmp_path):
    module = make_module(disc_start=0)
    module.reconstruction = _NaNOnce(at=2)
    before = {}

    class Watch(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 1:
                before["vae"] = {k: v.clone() for k, v in pl_module.vae.state_dict().items()}
                before["step"] = trainer.global_step

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 1:
                before["after_step"] = trainer.global_step
                _assert_same_state({k: v for k, v in pl_module.vae.state_dict().items()}, before["vae"])

    trainer = make_trainer(tmp_path, 3, [Watch()], limit_val_batches=0)
    trainer.fit(module, make_data(demo_data, steps_per_epoch=4))
    assert before["after_step"] == before["step"]  # no optimisation step for the NaN batch
    assert int(module.skipped_nonfinite) == 1
    assert float(trainer.logged_metrics["train/skipped_nonfinite"]) == 1.0
    assert trainer.global_step == 3 and trainer.fit_loop.epoch_loop.batch_progress.total.completed == 4
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_unsupported_strategies_and_precision_are_rejected():
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    for cls, name in ((DeepSpeedStrategy, "deepspeed"), (FSDPStrategy, "fsdp")):
        fake = SimpleNamespace(strategy=cls.__new__(cls), precision_plugin=SimpleNamespace(precision="32-true"))
        with pytest.raises(ValueError, match=f"strategy={name}"):
            check_manual_optimization_strategy(fake, "STVAEModule")
    module = make_module()
    module.trainer = SimpleNamespace(strategy=DeepSpeedStrategy.__new__(DeepSpeedStrategy),
                                     precision_plugin=SimpleNamespace(precision="bf16-mixed"))
    with pytest.raises(ValueError, match="two"):
        module.setup("fit")
    fake = SimpleNamespace(strategy=object(), precision_plugin=SimpleNamespace(precision="16-mixed"))
    with pytest.raises(ValueError, match="precision=16-mixed.*bf16-mixed"):
        check_manual_optimization_strategy(fake, "STVAEModule")


def test_adaptive_weight_stays_fp32_under_bf16_autocast():
    module = make_module(disc_start=0)
    x = torch.rand(2, 3, 1, 32, 32) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g_terms, d_terms, stats, _ = module.compute_losses(x, step=0)
    assert stats["adaptive_weight"].dtype == torch.float32 and torch.isfinite(stats["adaptive_weight"])
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in {**g_terms, **d_terms}.values())


def test_bf16_mixed_fit_with_gradient_checkpointing(demo_data, tmp_path):
    module = make_module(disc_start=0, gradient_checkpointing=True)
    assert module.vae.config.gradient_checkpointing and module.vae.decoder.gradient_checkpointing
    trainer = make_trainer(tmp_path, 2, precision="bf16-mixed", limit_val_batches=0)
    trainer.fit(module, make_data(demo_data, steps_per_epoch=2))
    assert trainer.global_step == 2 and int(module.skipped_nonfinite) == 0
    logged = trainer.logged_metrics
    assert logged["train/adaptive_weight"].dtype == torch.float32 and torch.isfinite(logged["train/adaptive_weight"])
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in module.parameters())


@pytest.mark.parametrize("measure", [True, False])
def test_latent_stats_measured_on_validation_and_saved(demo_data, tmp_path, measure):
    module = make_module(disc_start=10, measure_latent_stats=measure)
    trainer = make_trainer(tmp_path, 2, limit_val_batches=2)
    data = make_data(demo_data, steps_per_epoch=2)
    trainer.fit(module, data)
    # the same statistics computed directly over the validation batches the module saw (posterior means)
    zs = []
    with torch.no_grad():
        for i, batch in enumerate(data.val_dataloader()):
            if i == 2:
                break
            zs.append(module.vae.encode(module.clips(batch)).mode().flatten())
    z = torch.cat(zs).double()
    logged = trainer.logged_metrics
    assert float(logged["val/latent_mean"]) == pytest.approx(float(z.mean()), rel=1e-4, abs=1e-6)
    assert float(logged["val/latent_std"]) == pytest.approx(float(z.std()), rel=1e-4)
    cfg = module.vae.config
    if measure:
        assert cfg.latent_shift == pytest.approx(float(z.mean()), rel=1e-4, abs=1e-6)
        assert cfg.latent_scale == pytest.approx(1.0 / float(z.std()), rel=1e-4)
        normalised = module.vae.normalize_latents(z.float())
        assert abs(float(normalised.mean())) < 1e-3 and float(normalised.std()) == pytest.approx(1.0, rel=1e-3)
    else:
        preset = STVAEConfig.from_name("tiny")
        assert (cfg.latent_shift, cfg.latent_scale) == (preset.latent_shift, preset.latent_scale)
    ckpt = tmp_path / "stats.ckpt"
    trainer.save_checkpoint(ckpt)
    _, saved, _ = load_pretrained(ckpt)
    assert (saved["latent_shift"], saved["latent_scale"]) == (cfg.latent_shift, cfg.latent_scale)
    if measure:  # a resumed module restores the measured values before its next validation
        fresh = make_module(disc_start=10, measure_latent_stats=True)
        fresh.on_load_checkpoint(torch.load(ckpt, weights_only=True))
        assert fresh.vae.config.latent_shift == cfg.latent_shift


def test_latent_batches_are_rejected():
    with pytest.raises(ValueError, match="latent batch"):
        make_module().clips({"input": torch.zeros(1, 1, 16, 1, 4, 4), "target": torch.zeros(1, 1, 16, 1, 4, 4),
                             "latents": True})


def test_pair_sides_selects_the_training_images():
    batch = {"input": torch.zeros(2, 1, 3, 1, 4, 4), "target": torch.ones(2, 1, 3, 1, 4, 4)}
    both = make_module().clips(batch)
    assert both.shape == (4, 3, 1, 4, 4) and float(both.sum()) == 2 * 3 * 16
    targets = make_module(pair_sides="target").clips(batch)
    assert targets.shape == (2, 3, 1, 4, 4) and bool((targets == 1).all())
    with pytest.raises(ValueError, match="pair_sides"):
        make_module(pair_sides="inputs")


DDP_SCRIPT = r"""
import sys
from functools import partial

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from lavinkit.lit import STVAEModule
from lavinkit.lit.callbacks import EMA, MediaLogger, StepTimer
from lavinkit.losses import AdversarialLoss, KLLoss, ReconstructionLoss
from lavinkit.models.stvae.discriminator import NLayerDiscriminator, PatchDiscriminator


class Alternating(IterableDataset):
    # image batches and 5-frame clip batches, alternating (batches are homogeneous in modality)
    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        for i in range(8):
            t = 1 if i % 2 == 0 else 5
            x = torch.rand(1, 1, 3, t, 16, 16, generator=g) * 2 - 1
            yield {"input": x, "target": x.flip(-1), "task": ["t"], "keys": [["k"]], "num_context": 0}


class NaNOnRank1(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner, self.calls = ReconstructionLoss(), 0

    def forward(self, x_hat, x):
        terms = self.inner(x_hat, x)
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls == 4 and torch.distributed.get_rank() == 1:
                terms["rec_l1"] = terms["rec_l1"] * float("nan")
        return terms


def main(root):
    torch.manual_seed(0)
    disc = PatchDiscriminator(image=NLayerDiscriminator(2, base_channels=8, num_layers=1),
                              video=NLayerDiscriminator(3, base_channels=8, num_layers=1))
    module = STVAEModule("tiny", NaNOnRank1(), KLLoss(1e-6),
                         adversarial=AdversarialLoss(disc, disc_start=2, generator_weight=0.1),
                         optimizer=partial(torch.optim.AdamW, lr=1e-3), disc_optimizer=partial(torch.optim.AdamW, lr=1e-3))
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=5, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=root, callbacks=[EMA(decay=0.5)])
    trainer.fit(module, train_dataloaders=DataLoader(Alternating(), batch_size=None))
    assert trainer.global_step == 5, trainer.global_step
    assert int(module.skipped_nonfinite) == 1, int(module.skipped_nonfinite)  # on BOTH ranks
    # replicas stayed identical
    flat = torch.cat([p.detach().flatten() for p in module.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(2)]
    torch.distributed.all_gather(gathered, flat)
    assert torch.equal(gathered[0], gathered[1])
    if trainer.global_rank == 0:
        print("DDP-OK", flush=True)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()  # orderly gloo shutdown before the interpreter exits


if __name__ == "__main__":
    main(sys.argv[1])
"""


@pytest.mark.distributed
def test_ddp_two_processes_image_and_clip_batches(tmp_path):
    """2-process gloo DDP: discriminator off then on, image and clip batches (unused-parameter safety), a NaN on
    rank 1 only skips the step on both ranks without a hang."""
    script = tmp_path / "stvae_ddp_smoke.py"
    script.write_text(DDP_SCRIPT)
    proc = run_distributed_script(script, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "DDP-OK" in proc.stdout
