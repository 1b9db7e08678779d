"""Both LightningModules rebuild from a checkpoint alone: ``Module.load_from_checkpoint(path)``."""

from __future__ import annotations

from functools import partial

import lightning.pytorch as pl
import torch

from lavinkit.data import ImagePairDataModule
from lavinkit.flow import ClassifierFreeGuidance, FlowMatchingObjective, HeunSampler
from lavinkit.lit import JDiTModule, STVAEModule
from lavinkit.losses import AdversarialLoss, KLLoss, ReconstructionLoss
from lavinkit.models.stvae import STVAE, STVAEConfig
from lavinkit.models.stvae.discriminator import NLayerDiscriminator, PatchDiscriminator


def _fit_one_step(module, demo_data, path):
    dm = ImagePairDataModule(str(demo_data / "train" / "images-*.tar"), batch_size=1, num_context=1,
                             steps_per_epoch=1, shuffle_buffer=4)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                         default_root_dir=path.parent)
    trainer.fit(module, dm)
    trainer.save_checkpoint(path)
    assert torch.load(path, weights_only=True, map_location="cpu")["hyper_parameters"]


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_stvae_module_load_from_checkpoint(demo_data, tmp_path):
    torch.manual_seed(0)
    disc = PatchDiscriminator(image=NLayerDiscriminator(dims=2, base_channels=8, num_layers=1))
    module = STVAEModule("tiny", ReconstructionLoss(l1_weight=1.0, l2_weight=0.5), KLLoss(weight=1e-5),
                         adversarial=AdversarialLoss(disc, disc_start=0, generator_weight=0.2),
                         optimizer=partial(torch.optim.SGD, lr=0.01), vae_overrides={"latent_scale": 2.0})
    path = tmp_path / "stvae.ckpt"
    _fit_one_step(module, demo_data, path)
    restored = STVAEModule.load_from_checkpoint(path)
    _same_weights(module, restored)
    assert restored.reconstruction.l2_weight == 0.5 and restored.kl.weight == 1e-5
    assert restored.adversarial.generator_weight == 0.2 and restored.adversarial.discriminator.image.base_channels == 8
    assert restored.optimizer.func is torch.optim.SGD and restored.optimizer.keywords == {"lr": 0.01}
    assert restored.vae.config.latent_scale == 2.0


def test_jdit_module_load_from_checkpoint(demo_data, tmp_path):
    torch.manual_seed(0)
    vae = tmp_path / "vae.safetensors"
    STVAE(STVAEConfig.from_name("tiny")).save_pretrained(vae)
    module = JDiTModule("tiny", vae=str(vae), objective=FlowMatchingObjective(mse_weight=2.0),
                        sampler=HeunSampler(num_steps=5, grid="uniform"), guidance=ClassifierFreeGuidance(scale=2.5),
                        dit_overrides={"depth": 1}, val_samples_per_task=0)
    path = tmp_path / "jdit.ckpt"
    _fit_one_step(module, demo_data, path)
    restored = JDiTModule.load_from_checkpoint(path)
    _same_weights(module, restored)
    assert restored.dit_config == module.dit_config and restored.objective.mse_weight == 2.0
    assert isinstance(restored.sampler, HeunSampler) and restored.sampler.num_steps == 5
    assert restored.guidance.scale == 2.5
