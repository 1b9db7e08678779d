"""Pixel metrics of the evaluation, on ``[0, 1]`` images; clips are scored over all their frames.

PSNR and SSIM are torchmetrics' functional ones. LPIPS is torchmetrics' network with its packaged linear
heads, but the backbone weights come from a local file: torchmetrics would otherwise download the
torchvision ImageNet weights, and an evaluation must run offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

__all__ = ["LPIPS", "frames", "mean_abs_255", "psnr", "ssim"]


def frames(x: Tensor) -> Tensor:
    """``[1, 3, T, H, W]`` or ``[3, T, H, W]`` -> ``[T, 3, H, W]`` float32 on the CPU."""
    if x.ndim == 5:
        if x.shape[0] != 1:
            raise ValueError(f"expected one clip [1, 3, T, H, W], got {tuple(x.shape)}")
        x = x[0]
    return x.detach().float().cpu().permute(1, 0, 2, 3)


def psnr(pred: Tensor, target: Tensor) -> float:
    """PSNR in dB over all frames and pixels (one MSE for the whole clip), data range 1."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(frames(pred), frames(target), data_range=1.0))


def ssim(pred: Tensor, target: Tensor) -> float:
    """SSIM averaged over frames, data range 1; the Gaussian window shrinks (odd) for images under 11 px."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    p, t = frames(pred), frames(target)
    kernel = min(11, p.shape[-1], p.shape[-2])
    kernel -= 1 - kernel % 2  # odd
    return float(structural_similarity_index_measure(p, t, data_range=1.0, kernel_size=kernel))


def mean_abs_255(a: Tensor, b: Tensor) -> float:
    """Mean absolute difference on the 0..255 scale."""
    return float((frames(a) - frames(b)).abs().mean() * 255)


class LPIPS:
    """LPIPS (torchmetrics' network and linear heads) with backbone weights read from a local file.

    Args:
        weights_path: torchvision ImageNet weights of the backbone (e.g. ``alexnet-owt-7be5be79.pth``,
            ``vgg16-397923af.pth``, ``squeezenet1_1-b8a52dc0.pth``): a torchvision state dict, ``.pth`` or
            ``.safetensors``; only its ``features.*`` trunk is read, so timm's ``vgg16`` file serves ``"vgg"`` too.
        net: ``"alex"``, ``"vgg"`` or ``"squeeze"``.

    Raises:
        FileNotFoundError: naming ``weights_path``; ValueError: the file does not fit the backbone.
    """

    TORCHVISION = {"alex": "alexnet", "vgg": "vgg16", "squeeze": "squeezenet1_1"}

    def __init__(self, weights_path: str | Path, net: Literal["alex", "vgg", "squeeze"] = "alex") -> None:
        import torchvision
        from torchmetrics.functional.image.lpips import _NoTrainLpips

        from lavinkit.losses.perceptual import load_backbone_state, load_state_dict_file

        if net not in self.TORCHVISION:
            raise ValueError(f"LPIPS net must be one of {sorted(self.TORCHVISION)}, got {net!r}")
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(f"LPIPS weights {path}: no such file (LPIPS weights are never downloaded)")
        backbone = getattr(torchvision.models, self.TORCHVISION[net])(weights=None)
        # only the convolutional trunk (``features.*``) is used: a full torchvision file loads, and so does a timm
        # vgg16 file (same trunk names, another classifier)
        trunk = torch.nn.Module()
        trunk.features = backbone.features
        load_backbone_state(trunk, load_state_dict_file(path),
                            f"LPIPS weights {path} do not fit torchvision {self.TORCHVISION[net]}")
        # pnet_rand: build the backbone without downloading, then copy the local weights into its slices, whose
        # children are named by their index in torchvision's ``features``
        self.net = _NoTrainLpips(net=net, pnet_rand=True)
        for seq in self.net.net.modules():
            if isinstance(seq, torch.nn.Sequential):
                for name, child in seq.named_children():
                    if name.isdigit():
                        child.load_state_dict(backbone.features[int(name)].state_dict())
        self.net.eval().requires_grad_(False)
        self.weights_path, self.net_name = str(path), net

    @torch.no_grad()
    def __call__(self, pred: Tensor, target: Tensor) -> float:
        """LPIPS averaged over frames (inputs in [0, 1])."""
        p, t = frames(pred).clamp(0, 1), frames(target).clamp(0, 1)
        return float(self.net(p, t, normalize=True).mean())
