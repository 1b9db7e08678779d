"""``lavinkit encode``: latent shards with a VAE record, seeded sampling, and the same J-DiT losses as on the fly."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lavinkit.cli import main as lavinkit_main
from lavinkit.commands.encode import sha256_file
from lavinkit.models.stvae import STVAE, STVAEConfig


@pytest.fixture(scope="module")
def latents(demo_data, tiny_vae, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("latents") / "train"
    rc = lavinkit_main(["encode", "--data", str(demo_data / "train" / "images-000000.tar"),
                        str(demo_data / "train" / "images-000001.tar"), "--out", str(out), "--vae", str(tiny_vae),
                        "--mode", "mean", "--batch_size", "8"])  # fmt: skip
    assert rc == 0
    return out


def _members(shard: Path) -> dict[str, bytes]:
    with tarfile.open(shard) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_latent_shards_record_the_vae(latents, tiny_vae, demo_data):
    index = json.loads((latents / "index.json").read_text())
    assert index["format"] == "lavinkit-latents"
    assert index["vae"]["sha256"] == sha256_file(tiny_vae)
    members = _members(next(latents.glob("latents-*.tar")))
    key = sorted(n for n in members if n.endswith(".json"))[0][: -len(".json")]
    meta = json.loads(members[f"{key}.json"])
    vae = meta["vae"]
    assert vae["path"] == str(tiny_vae) and vae["sha256"] == sha256_file(tiny_vae)
    assert vae["normalized"] is True and vae["mode"] == "mean" and vae["dtype"] == "float32"
    assert vae["latent_channels"] == 16 and vae["config"] == "tiny"
    assert vae["shift"] == pytest.approx(STVAEConfig().latent_shift) and vae["scale"] == pytest.approx(STVAEConfig().latent_scale)
    assert meta["task"] and meta["key"] == key
    arr = np.load(io.BytesIO(members[f"{key}.input.npy"]))
    assert arr.dtype == np.float16 and arr.shape == (16, 1, 4, 4)
    written = sum(sum(n.endswith(".json") for n in _members(s)) for s in latents.glob("latents-*.tar"))
    sources = sum(sum(n.endswith(".json") for n in _members(demo_data / "train" / f"images-00000{i}.tar")) for i in (0, 1))
    assert index["num_samples"] == written == sources


def test_sample_mode_is_seeded_per_pair(tiny_vae):
    from lavinkit.commands.encode import encode_group

    vae = STVAE.from_pretrained(tiny_vae).eval()
    pixels = torch.randint(0, 256, (4, 3, 1, 32, 32), dtype=torch.uint8)
    keys = ["a", "b", "c", "d"]
    kw = dict(mode="sample", dtype=torch.float32)
    whole = encode_group(vae, pixels, keys, "input", seed=1, **kw)
    halves = torch.cat([encode_group(vae, pixels[:2], keys[:2], "input", seed=1, **kw),
                        encode_group(vae, pixels[2:], keys[2:], "input", seed=1, **kw)])
    torch.testing.assert_close(whole, halves, rtol=1e-5, atol=1e-5)  # batching does not change the draws
    other_seed = encode_group(vae, pixels, keys, "input", seed=2, **kw)
    mean = encode_group(vae, pixels, keys, "input", seed=1, mode="mean", dtype=torch.float32)
    assert not torch.allclose(whole, other_seed) and not torch.allclose(whole, mean)


def test_bad_arguments_name_the_option(tiny_vae, tmp_path, capsys):
    # one line naming the option and exit code 2, no traceback
    assert lavinkit_main(["encode", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--vae",
                          str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "--vae" in err and "Traceback" not in err
    assert lavinkit_main(["encode", "--data", str(tmp_path / "x-{000000..000001}.tar"), "--out", str(tmp_path / "o"),
                          "--vae", str(tiny_vae)]) == 2
    assert "--data" in capsys.readouterr().err


def test_latent_shards_give_the_same_losses_as_on_the_fly(latents, demo_data, tiny_vae):
    import webdataset as wds

    from lavinkit.data import LatentPairDataModule, decode_pair
    from lavinkit.lit.jdit_module import JDiTModule

    dm = LatentPairDataModule(str(latents / "latents-*.tar"), batch_size=2, num_context=1, steps_per_epoch=1, seed=0)
    dm.setup("fit")
    lat_batch = next(iter(dm.train_dataloader()))
    assert lat_batch["latents"] is True

    # the same pairs, decoded from the pair shards and encoded on the fly
    pairs = {}
    for raw in wds.WebDataset(str(demo_data / "train" / "images-{000000..000001}.tar"), shardshuffle=False, empty_check=False):
        pair = decode_pair(raw)
        pairs[pair["key"]] = pair
    def pixels(member):  # [B, N, 3, 1, H, W] in [-1, 1]
        return torch.stack([torch.stack([pairs[k][member] for k in row]) for row in lat_batch["keys"]]).float() / 127.5 - 1
    px_batch = {**{k: v for k, v in lat_batch.items() if k != "latents"}, "input": pixels("input"), "target": pixels("target")}

    torch.manual_seed(0)
    module = JDiTModule(dit="tiny", vae=str(tiny_vae), encode_mode="mean", context_dropout=0.5)
    dit = module._require_dit()
    with torch.no_grad():  # a non-trivial network (the official init outputs zeros)
        for p in dit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ctx_px, x1_px = module.latents(px_batch)
    ctx_lat, x1_lat = module.latents(lat_batch)
    torch.testing.assert_close(ctx_lat, ctx_px, rtol=2e-3, atol=2e-3)  # float16 storage
    torch.testing.assert_close(x1_lat, x1_px, rtol=2e-3, atol=2e-3)
    for batch_idx in range(3):
        module._batch_idx = batch_idx  # the same time / noise / dropout draws for both
        loss_px = module.flow_loss(px_batch, dropout=0.5)
        loss_lat = module.flow_loss(lat_batch, dropout=0.5)
        for term in ("loss", "mse", "l1"):
            torch.testing.assert_close(loss_lat[term], loss_px[term], rtol=1e-3, atol=1e-4)
