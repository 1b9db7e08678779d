"""Perceptual loss plumbing with random backbone weights from a temp file (no downloads)."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from lavinkit.losses import PerceptualLoss


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False)  # full model incl. classifier head keys
    path = tmp_path_factory.mktemp("w") / "resnet18.pth"
    torch.save(net.state_dict(), path)
    return path


def test_perceptual_plumbing(weights_file):
    loss = PerceptualLoss(str(weights_file), backbone="resnet18", out_indices=(1, 2), weight=2.0)
    assert not any(n.startswith("_net") for n in loss.state_dict())  # frozen backbone stays out of checkpoints
    assert list(loss.parameters()) == []
    x = torch.rand(2, 3, 3, 32, 32) * 2 - 1
    assert loss.distance(x, x).abs().max().item() < 1e-6
    x_hat = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    d = loss.distance(x_hat, x)
    assert d.shape == (2 * 3,) and (d > 0).all()
    terms = loss(x_hat, x)
    assert set(terms) == {"perceptual"}
    torch.testing.assert_close(terms["perceptual"], 2.0 * d.mean())
    terms["perceptual"].backward()
    assert x_hat.grad is not None and torch.isfinite(x_hat.grad).all()
    loss.train()
    assert not loss.net.training


def test_perceptual_safetensors_and_features_only_keys(tmp_path, weights_file):
    state = torch.load(weights_file, weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    path = tmp_path / "r18.safetensors"
    save_file(state, str(path))
    loss = PerceptualLoss(str(path), backbone="resnet18", out_indices=(1,))
    torch.testing.assert_close(loss.net.state_dict()["conv1.weight"], state["conv1.weight"])


def test_missing_weights_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope" / "vgg.pth"
    with pytest.raises(FileNotFoundError, match="weights_path.*nope/vgg.pth.*never downloaded"):
        PerceptualLoss(str(missing), backbone="resnet18")


def test_wrong_backbone_weights_error(tmp_path, weights_file):
    with pytest.raises(ValueError, match="does not match timm backbone 'resnet34'"):
        PerceptualLoss(str(weights_file), backbone="resnet34")
