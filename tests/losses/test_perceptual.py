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
    with pytest.raises(ValueError, match=r"does not fit timm backbone 'resnet34': missing \['layer1.2.bn1.bias'"):
        PerceptualLoss(str(weights_file), backbone="resnet34")


@pytest.fixture(scope="module")
def vgg16_files(tmp_path_factory):
    """One random VGG16 trunk saved as a full torchvision model and as a full timm model (their classifiers
    differ in names and shapes: torchvision ``classifier.*`` linear layers, timm ``pre_logits``/``head``)."""
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.vgg16(weights=None)
    tm = timm.create_model("vgg16", pretrained=False)
    tm.features.load_state_dict(tv.features.state_dict())
    folder = tmp_path_factory.mktemp("vgg16")
    torch.save(tv.state_dict(), folder / "vgg16-torchvision.pth")
    save_file({k: v.contiguous() for k, v in tm.state_dict().items()}, str(folder / "vgg16-timm.safetensors"))
    return folder, tv


@pytest.mark.parametrize("name", ["vgg16-torchvision.pth", "vgg16-timm.safetensors"])
def test_vgg16_full_model_files_of_timm_and_torchvision_load(vgg16_files, name):
    folder, tv = vgg16_files
    loss = PerceptualLoss(str(folder / name), backbone="vgg16")
    feats = dict(loss.net.named_parameters())
    for key, value in tv.features.state_dict().items():  # the extractor holds exactly the file's trunk
        torch.testing.assert_close(feats[f"features.{key}"], value, rtol=0, atol=0)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        levels = loss._features(x)
        # the first level is relu1_2 of the file's convolutions (no other weights involved)
        z = ((x + 1) * 0.5 - loss.mean) / loss.std
        relu1_2 = tv.features[:4](z)
    assert len(levels) == 6
    torch.testing.assert_close(levels[0], relu1_2, rtol=1e-5, atol=1e-5)


def test_vgg16_files_of_both_layouts_give_the_same_distance(vgg16_files):
    folder, _ = vgg16_files
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    a = PerceptualLoss(str(folder / "vgg16-torchvision.pth"), backbone="vgg16", out_indices=(0, 2))
    b = PerceptualLoss(str(folder / "vgg16-timm.safetensors"), backbone="vgg16", out_indices=(0, 2))
    torch.testing.assert_close(a.distance(x, y), b.distance(x, y))


def test_other_architecture_file_names_missing_and_unexpected_keys(tmp_path, weights_file):
    with pytest.raises(ValueError, match=r"resnet18.pth does not fit timm backbone 'vgg16': missing \['features.0.bias'"):
        PerceptualLoss(str(weights_file), backbone="vgg16")
    deeper = tmp_path / "resnet34.pth"
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), deeper)
    with pytest.raises(ValueError, match=r"missing \[\], unexpected \['layer1.2.bn1.bias'"):
        PerceptualLoss(str(deeper), backbone="resnet18")


def test_lpips_reads_a_timm_vgg16_file(vgg16_files):
    from lavinkit.evaluation.metrics import LPIPS

    folder, _ = vgg16_files
    a, b = LPIPS(folder / "vgg16-torchvision.pth", net="vgg"), LPIPS(folder / "vgg16-timm.safetensors", net="vgg")
    x, y = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    assert a(x, y) == pytest.approx(b(x, y), rel=1e-6)
