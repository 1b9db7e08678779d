"""Every documented way to load weights works on the files a real training run writes.

Three real Lightning fit steps of the ST-VAE (with the EMA callback) gives a ``.ckpt``; ``lavinkit export`` turns it
into EMA and raw ``.safetensors``. Each is then read back by each documented consumer: ``STVAE.from_pretrained``,
``STVAEModule(init_from=...)``, ``lavinkit encode --vae`` and the J-DiT's recorded ST-VAE, and must give exactly
the weights it holds.
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from lavinkit.cli import main
from lavinkit.data import ImagePairDataModule
from lavinkit.lit import JDiTModule, STVAEModule
from lavinkit.lit.callbacks import EMA
from lavinkit.losses import KLLoss, ReconstructionLoss
from lavinkit.models.stvae import STVAE


@pytest.fixture(scope="module")
def trained(demo_data, tmp_path_factory):
    """A three-step ST-VAE checkpoint whose EMA weights differ from the raw ones, and its two exports."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    module = STVAEModule("tiny", ReconstructionLoss(), KLLoss())
    ema_callback = EMA(decay=0.5)
    dm = ImagePairDataModule(str(demo_data / "train" / "images-*.tar"), batch_size=1, num_context=1,
                             steps_per_epoch=3, shuffle_buffer=4)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                         default_root_dir=folder, callbacks=[ema_callback])
    trainer.fit(module, dm)
    ckpt = folder / "stvae.ckpt"
    trainer.save_checkpoint(ckpt)
    for weights in ("ema", "raw"):
        assert main(["export", str(ckpt), "--out", str(folder / f"{weights}.safetensors"), "--weights", weights]) == 0
    raw = {k: v.clone() for k, v in module.vae.state_dict().items()}
    ema = {k: v.clone() for k, v in ema_callback.average.items()}
    assert any(not torch.equal(ema[k], raw[k]) for k in raw if raw[k].is_floating_point())
    return folder, raw, ema


def _assert_weights(model, want):
    state = model.state_dict()
    assert state.keys() == want.keys()
    for k, v in want.items():
        torch.testing.assert_close(state[k], v.to(state[k].dtype), rtol=0, atol=0)


@pytest.mark.parametrize(("file", "use_ema", "expect"), [
    ("stvae.ckpt", True, "ema"), ("stvae.ckpt", False, "raw"), ("ema.safetensors", True, "ema"),
    ("raw.safetensors", True, "raw"),
])
def test_from_pretrained_and_init_from_read_every_file(trained, file, use_ema, expect):
    folder, raw, ema = trained
    want = ema if expect == "ema" else raw
    _assert_weights(STVAE.from_pretrained(folder / file, use_ema=use_ema), want)
    module = STVAEModule("tiny", ReconstructionLoss(), KLLoss())
    module.load_vae_weights(folder / file, use_ema=use_ema)
    _assert_weights(module.vae, want)


@pytest.mark.parametrize("file", ["stvae.ckpt", "ema.safetensors"])
def test_encode_and_the_jdit_take_the_vae_from_either_file(trained, demo_data, tmp_path, file):
    folder, _, ema = trained
    out = tmp_path / "latents"
    assert main(["encode", "--data", str(demo_data / "train" / "images-000000.tar"), "--out", str(out),
                 "--vae", str(folder / file), "--mode", "mean", "--maxcount", "1000"]) == 0
    assert (out / "index.json").is_file()
    module = JDiTModule("tiny", vae=str(folder / file), dit_overrides={"depth": 1})
    module.setup("fit")
    _assert_weights(module.vae, ema)
