"""JDiTModule: training on demo pairs with a tiny random ST-VAE, exact resume, CFG context dropout, bad inputs."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lavinkit.flow import build_cfg_batch, null_context
from lavinkit.lit.callbacks import EMA
from lavinkit.lit.incontext import build_context, drop_context, encode_pairs
from lavinkit.lit.jdit_module import JDiTModule
from lavinkit.models.jdit import JDiT
from lavinkit.models.stvae import STVAE, STVAEConfig


def _adamw(lr: float = 1e-3):
    return lambda params: torch.optim.AdamW(params, lr=lr)


def _datamodule(demo_data: Path, **kwargs):
    from lavinkit.data import ImagePairDataModule

    args = dict(batch_size=2, num_context=1, steps_per_epoch=3, val_batches=1, seed=0, shuffle_buffer=8)
    args.update(kwargs)
    return ImagePairDataModule(str(demo_data / "train" / "images-*.tar"), str(demo_data / "val" / "images-*.tar"), **args)


def _first_batch(demo_data: Path, num_context: int = 2) -> dict:
    dm = _datamodule(demo_data, num_context=num_context)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


class _Losses(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def _trainer(tmp_path: Path, max_steps: int, callbacks: list, **kwargs) -> pl.Trainer:
    args = dict(
        accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=tmp_path,
        deterministic=True,
    )  # fmt: skip
    args.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **args)


def test_loss_finite_and_falls_on_fixed_batch(demo_data, tiny_vae):
    torch.manual_seed(0)
    batch = _first_batch(demo_data)
    assert batch["input"].shape[1] == 3  # k = 2 examples + the query
    module = JDiTModule(dit="tiny", vae=str(tiny_vae), context_dropout=0.1, optimizer=_adamw(3e-3))
    module.configure_model()
    module.setup("fit")
    # the VAE is frozen: encode the fixed batch once (first step on pixels, the rest on its latents)
    lat_in, lat_tgt = encode_pairs(module.vae, batch["input"], batch["target"])
    latent_batch = dict(batch, input=lat_in, target=lat_tgt, latents=True)
    optimizer = module.configure_optimizers()
    losses = []
    for step in range(40):
        module._batch_idx = step  # a fresh draw of time and noise per step
        loss = module.flow_loss(batch if step == 0 else latent_batch, dropout=module.context_dropout)["loss"]
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, losses


def test_training_validation_checkpoint_and_exact_resume(demo_data, tiny_vae, tmp_path):
    def make():
        torch.manual_seed(0)
        return JDiTModule(dit="tiny", vae=str(tiny_vae), context_dropout=0.5, optimizer=_adamw(), seed=3,
                          val_samples_per_task=1, sampler=None)

    # uninterrupted: 4 steps
    full = _Losses()
    module = make()
    trainer = _trainer(tmp_path / "full", 4, [full, EMA(decay=0.9)])
    trainer.fit(module, datamodule=_datamodule(demo_data, steps_per_epoch=4))
    assert len(full.losses) == 4 and all(map(lambda v: v == v, full.losses))

    # interrupted after 2 steps (mid-epoch), checkpoint, resume for the last 2
    part = _Losses()
    ckpt_cb = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_train_steps=2)
    first = make()
    t1 = _trainer(tmp_path / "part", 2, [part, EMA(decay=0.9), ckpt_cb])
    t1.fit(first, datamodule=_datamodule(demo_data, steps_per_epoch=4))
    ckpt = next((tmp_path / "ckpt").glob("*step=2*.ckpt"))

    rest = _Losses()
    ema = EMA(decay=0.9)
    second = make()
    t2 = _trainer(tmp_path / "part", 4, [rest, ema])
    t2.fit(second, datamodule=_datamodule(demo_data, steps_per_epoch=4), ckpt_path=str(ckpt))
    assert t2.global_step == 4
    assert part.losses == pytest.approx(full.losses[:2], rel=1e-6, abs=1e-7)
    assert rest.losses == pytest.approx(full.losses[2:], rel=1e-5, abs=1e-6)

    # same weights, optimizer state and EMA as the uninterrupted run
    for (name, a), b in zip(module.state_dict().items(), second.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    s_full, s_res = trainer.optimizers[0].state_dict()["state"], t2.optimizers[0].state_dict()["state"]
    for i in s_full:
        torch.testing.assert_close(s_full[i]["exp_avg_sq"], s_res[i]["exp_avg_sq"], rtol=1e-5, atol=1e-9)
    full_ema = trainer.callbacks[[type(c) for c in trainer.callbacks].index(EMA)].ema_state_dict()
    for k, v in full_ema.items():
        torch.testing.assert_close(v, ema.ema_state_dict()[k], rtol=1e-5, atol=1e-6, msg=k)

    # `lavinkit validate --ckpt_path`: the EMA weights are restored without a fit and used for validation
    val_ema = EMA(decay=0.9)
    t3 = _trainer(tmp_path / "val", 4, [val_ema], limit_val_batches=1)
    t3.validate(make(), datamodule=_datamodule(demo_data, steps_per_epoch=4), ckpt_path=str(ckpt))
    assert val_ema.average is not None and torch.isfinite(t3.callback_metrics["val/loss"])

    # the checkpoint rebuilds the J-DiT alone (EMA by default), records the VAE and holds no VAE weights
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    block = state["lavinkit"]
    assert block["kind"] == "jdit" and block["prefix"] == "dit." and block["vae"] == str(tiny_vae)
    assert block["ema_state_dict"] is not None
    assert all(k.startswith("dit.") for k in state["state_dict"])
    dit_ema = JDiT.from_pretrained(ckpt)
    dit_raw = JDiT.from_pretrained(ckpt, use_ema=False)
    for k, v in dit_ema.state_dict().items():
        torch.testing.assert_close(v, block["ema_state_dict"][k])
        torch.testing.assert_close(dit_raw.state_dict()[k], state["state_dict"]["dit." + k])


def test_validation_logs_per_task_pixel_metrics(demo_data, tiny_vae, tmp_path):
    from lavinkit.flow import EulerSampler

    module = JDiTModule(dit="tiny", vae=str(tiny_vae), sampler=EulerSampler(num_steps=4, grid="uniform"),
                        val_samples_per_task=1)
    trainer = _trainer(tmp_path, 1, [], limit_val_batches=2, logger=pl.loggers.TensorBoardLogger(tmp_path))
    trainer.validate(module, datamodule=_datamodule(demo_data, batch_size=4))
    metrics = trainer.callback_metrics
    assert "val/loss" in metrics and torch.isfinite(metrics["val/loss"])
    per_task = [k for k in metrics if k.startswith("val/") and k.endswith("/psnr") and k != "val/psnr"]
    assert per_task and all(torch.isfinite(metrics[k]) for k in per_task)
    assert any(k.endswith("/ssim") for k in metrics)
    assert list(Path(tmp_path).rglob("events.out.tfevents*"))

    # `lavinkit test`: every example of the loader sampled, a per-task table
    dm = _datamodule(demo_data, batch_size=4)
    dm.setup("validate")
    module.test_samples_per_task = None
    results = trainer.test(module, dataloaders=dm.val_dataloader())[0]
    assert any(k.startswith("test/") and k.endswith("/psnr") for k in results) and "test/ssim" in results


def test_context_dropout_is_the_inference_null_context(demo_data, tiny_vae):
    torch.manual_seed(0)
    lat_in, lat_tgt = torch.randn(2, 2, 2, 16, 1, 4, 4).unbind(0)  # [B=2, N=2, C, t, h, w] each
    context, x1 = build_context(lat_in, lat_tgt)  # [B, 16, 3, 4, 4]
    assert context.shape == (2, 16, 3, 4, 4) and torch.equal(context[:, :, 2], lat_in[:, -1, :, 0])
    dropped, lengths = drop_context(context, 1, torch.tensor([True, False]))
    # what batched CFG feeds its unconditional rows at inference
    x = torch.randn_like(x1)
    t = torch.rand(2)
    _, _, ctx2, len2 = build_cfg_batch(x, t, context, query_frames=1)
    torch.testing.assert_close(dropped[0], ctx2[2], rtol=0, atol=0)
    assert int(lengths[0]) == int(len2[2]) == 2 and int(lengths[1]) == 3
    torch.testing.assert_close(dropped[1], context[1], rtol=0, atol=0)

    # the J-DiT sees the dropped row exactly as the (unpadded) official null condition
    module = JDiTModule(dit="tiny", vae=None)
    dit = module._require_dit()
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(0.02 * torch.randn_like(p))
        v_drop = dit(x, t, dropped, context_lengths=lengths)[0]
        v_null = dit(x[:1], t[:1], null_context(context[:1], 1))[0]
    torch.testing.assert_close(v_drop, v_null, rtol=1e-4, atol=1e-5)


def test_variable_num_context_and_latent_batches(tiny_vae):
    module = JDiTModule(dit="tiny", vae=None, context_dropout=0.5)
    for k in (1, 3):
        batch = {"input": torch.randn(2, k + 1, 16, 1, 4, 4), "target": torch.randn(2, k + 1, 16, 1, 4, 4),
                 "task": ["a", "b"], "keys": [["x"] * (k + 1)] * 2, "num_context": k, "latents": True}
        context, x1 = module.latents(batch)
        assert context.shape == (2, 16, 2 * k + 1, 4, 4) and x1.shape == (2, 16, 1, 4, 4)
        terms = module.flow_loss(batch, dropout=0.5)
        assert torch.isfinite(terms["loss"]) and {"loss", "mse", "l1"} <= set(terms)


def test_bad_inputs_fail_clearly(tiny_vae, tmp_path):
    other = tmp_path / "vae8.safetensors"
    STVAE(STVAEConfig.from_name("tiny", latent_channels=8)).save_pretrained(other)
    module = JDiTModule(dit="tiny", vae=str(other))
    with pytest.raises(ValueError, match="8-channel latents.*in_channels=16"):
        module.setup("fit")

    module = JDiTModule(dit="tiny", vae=str(tiny_vae))
    mismatch = {"input": torch.zeros(1, 2, 3, 1, 32, 32), "target": torch.zeros(1, 2, 3, 1, 16, 16),
                "task": ["a"], "keys": [["x", "y"]], "num_context": 1}
    with pytest.raises(ValueError, match="context/target mismatch"):
        module.flow_loss(mismatch, dropout=0.0)
    no_examples = {"input": torch.zeros(1, 1, 3, 1, 32, 32), "target": torch.zeros(1, 1, 3, 1, 32, 32),
                   "task": ["a"], "keys": [["x"]], "num_context": 0}
    with pytest.raises(ValueError, match="num_context"):
        module.flow_loss(no_examples, dropout=0.0)
    pixels_without_vae = dict(mismatch, target=mismatch["input"])
    with pytest.raises(ValueError, match="no ST-VAE"):
        JDiTModule(dit="tiny", vae=None).flow_loss(pixels_without_vae, dropout=0.0)
    with pytest.raises(FileNotFoundError, match="vae="):
        JDiTModule(dit="tiny", vae=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="context_dropout"):
        JDiTModule(dit="tiny", context_dropout=1.0)
    # a query_residual J-DiT's velocity is not defined at t = 1, where full Heun's last corrector evaluates it
    from lavinkit.flow import HeunSampler

    with pytest.raises(ValueError, match="query_residual.*final_step='euler'"):
        JDiTModule(dit="tiny", dit_overrides={"query_residual": True}, sampler=HeunSampler(20))
    JDiTModule(dit="tiny", dit_overrides={"query_residual": True}, sampler=HeunSampler(20, final_step="euler"))


def test_nonfinite_loss_skips_the_step_then_stops(demo_data, tiny_vae, tmp_path):
    def nan_first(module):
        original, calls = module.flow_loss, []

        def patched(batch, *, dropout):
            terms = original(batch, dropout=dropout)
            calls.append(1)
            if len(calls) == 1:
                terms["loss"] = terms["loss"] * float("nan")
            return terms

        module.flow_loss = patched
        return module

    module = nan_first(JDiTModule(dit="tiny", vae=str(tiny_vae), optimizer=_adamw()))
    trainer = _trainer(tmp_path / "a", 1, [])
    trainer.fit(module, datamodule=_datamodule(demo_data, steps_per_epoch=4))
    assert trainer.global_step == 1 and module.nonfinite_steps == 1
    assert all(torch.isfinite(p).all() for p in module.parameters())

    module = nan_first(JDiTModule(dit="tiny", vae=str(tiny_vae), optimizer=_adamw(), max_nonfinite_steps=0))
    with pytest.raises(FloatingPointError, match="max_nonfinite_steps=0"):
        _trainer(tmp_path / "b", 1, []).fit(module, datamodule=_datamodule(demo_data, steps_per_epoch=4))


class _GatesBeforeStep(pl.Callback):
    """The gates the model holds when the step's loss (and its logs) were computed: before the optimizer step."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.gates = pl_module.dit.attention_metrics()


def test_infini_memory_gates_are_logged_while_training(demo_data, tiny_vae, tmp_path):
    module = JDiTModule(dit="tiny", vae=str(tiny_vae), optimizer=_adamw(0.05),
                        dit_overrides={"depth": 2, "attention_core": "infini"})
    seen = _GatesBeforeStep()
    trainer = _trainer(tmp_path, 4, [seen], log_every_n_steps=1, logger=pl.loggers.CSVLogger(tmp_path, name="csv"))
    trainer.fit(module, datamodule=_datamodule(demo_data))
    logged = {k: float(v) for k, v in trainer.logged_metrics.items() if k.startswith("attention/")}
    heads = module.dit.config.num_heads
    assert sorted(logged) == sorted(f"attention/blocks.{i}.gate/h{h}" for i in range(2) for h in range(heads))
    assert logged == pytest.approx({f"attention/{k}": v for k, v in seen.gates.items()}, abs=1e-6)
    # the gates are learned: sigmoid(beta) left its initial 0.5
    assert any(abs(v - 0.5) > 1e-3 for v in module.dit.attention_metrics().values())
