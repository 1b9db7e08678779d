"""LPIPS-style perceptual distance over a timm backbone, with weights read only from a local file.

No weights are ever downloaded: the backbone is built with ``timm.create_model(pretrained=False)``, cut
after its last used feature level (``prune_intermediate_layers``), and its weights come from ``weights_path``
(a ``.safetensors`` file or a ``torch.save`` state dict read with ``weights_only=True``): a full-model
ImageNet checkpoint the user copied onto the machine, in timm's layout or torchvision's (the two name the
convolutional trunk of VGG / ResNet alike and differ only in the classifier, which is not used). Features
are timm's ``forward_intermediates`` at ``out_indices`` (the levels of ``features_only``). The distance
follows LPIPS without the learned linear heads:

    d(x, y) = sum_l mean_{h,w} || n(f_l(x)) - n(f_l(y)) ||^2 ,  n = unit-normalise over channels

Clips are compared frame by frame (time folded into the batch).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``weights_only=True``).

    A torch file may hold the state dict directly or under ``"state_dict"`` / ``"model"``.

    Raises:
        FileNotFoundError: naming ``path``.
        ValueError: the file holds no tensor dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"PerceptualLoss: weights_path {str(path)!r} does not exist; perceptual weights are never downloaded, "
            "copy a backbone state dict (.safetensors or .pth) there or set perceptual: null"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"PerceptualLoss: {path} does not hold a state dict of tensors")
    return obj


def load_backbone_state(model: nn.Module, state: dict[str, Tensor], context: str,
                        known: Collection[str] | None = None) -> None:
    """Copy a checkpoint's tensors into ``model`` by name, strictly over what the model holds.

    Every tensor of ``model`` must be in ``state`` with its shape (BatchNorm's ``num_batches_tracked``, absent
    from older torchvision files, may be missing). A key of ``state`` under one of the model's own top-level
    modules that is not in ``known`` (default: the model's keys) is an error too: it belongs to another depth or
    variant of the family, e.g. a vgg19 or resnet34 file for vgg16 / resnet18. Keys under other modules (a
    classifier) and ``known`` keys the model lacks (stages pruned after the last used level) are ignored.

    Raises:
        ValueError: starting with ``context``, naming up to five missing and unexpected keys.
    """
    own = model.state_dict()
    roots = {k.split(".", 1)[0] for k in own}
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    known = own.keys() if known is None else known
    unexpected = sorted(k for k in state if k not in known and k.split(".", 1)[0] in roots)
    if missing or unexpected:
        raise ValueError(f"{context}: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    try:
        model.load_state_dict({k: state[k] for k in own if k in state}, strict=True)
    except RuntimeError as err:  # same names, other shapes
        raise ValueError(f"{context}: {' '.join(str(err).split())}") from None


class PerceptualLoss(nn.Module):
    """Weighted LPIPS-style feature distance (term ``"perceptual"``).

    Args:
        weights_path: local file with the backbone's weights, timm or torchvision layout (a full model, or only
            its trunk; classifier heads and stages after the last used level are ignored). Missing file ->
            ``FileNotFoundError`` naming it; a file of another architecture -> ``ValueError`` naming the missing
            and unexpected keys.
        backbone: timm model name (a model with ``forward_intermediates``: VGG, ResNet, ConvNeXt, EfficientNet ...).
        out_indices: feature levels used (timm ``out_indices``); ``None`` uses all.
        weight: multiplier of the term.

    The backbone is frozen, kept in eval mode and deliberately NOT registered as a submodule: it is not
    trained, so it stays out of checkpoints, optimizers, DDP and EMA (it is rebuilt from ``weights_path``),
    and it follows the input's device lazily.
    """

    def __init__(
        self,
        weights_path: str,
        backbone: str = "vgg16",
        out_indices: Sequence[int] | None = None,
        weight: float = 1.0,
    ) -> None:
        super().__init__()
        import timm

        state = load_state_dict_file(weights_path)
        net = timm.create_model(backbone, pretrained=False)
        if not hasattr(net, "forward_intermediates"):
            raise ValueError(f"PerceptualLoss: timm backbone {backbone!r} has no forward_intermediates; "
                             "pick a CNN such as vgg16, resnet50 or convnext_tiny")
        full_keys = set(net.state_dict())
        levels = len(net.feature_info)
        indices = list(out_indices) if out_indices is not None else list(range(levels))
        if not indices or not all(-levels <= i < levels for i in indices):
            raise ValueError(f"PerceptualLoss: out_indices {indices} out of range for {backbone!r} "
                             f"({levels} feature levels)")
        net.prune_intermediate_layers(indices, prune_head=True)  # drop what no used level needs: head, late stages
        load_backbone_state(net, state, f"PerceptualLoss: {weights_path} does not fit timm backbone {backbone!r}",
                            known=full_keys)
        net.eval().requires_grad_(False)
        object.__setattr__(self, "_net", net)  # not a submodule: see class docstring
        cfg = net.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1), False)
        self.weights_path = str(weights_path)
        self.backbone = backbone
        self.out_indices = list(out_indices) if out_indices is not None else None
        self._indices = indices
        self.weight = float(weight)

    @property
    def net(self) -> nn.Module:
        """The frozen feature extractor."""
        return self._net

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self._net.eval()
        return self

    def _features(self, x: Tensor) -> list[Tensor]:
        # [-1, 1] -> ImageNet-normalised
        x = ((x + 1.0) * 0.5 - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self._net.forward_intermediates(x, indices=self._indices, intermediates_only=True)

    def distance(self, x_hat: Tensor, x: Tensor) -> Tensor:
        """Per-frame LPIPS-style distance.

        Args:
            x_hat, x: ``[B, 3, T, H, W]`` in [-1, 1] (or ``[B, 3, H, W]``).

        Returns:
            ``[B * T]`` distances (fp32).
        """
        if x.shape != x_hat.shape:
            raise ValueError(f"PerceptualLoss: shape mismatch {tuple(x_hat.shape)} vs {tuple(x.shape)}")
        if x.dim() == 5:
            # [B, C, T, H, W] -> [B*T, C, H, W]: time folded into the batch
            x = x.transpose(1, 2).flatten(0, 1)
            x_hat = x_hat.transpose(1, 2).flatten(0, 1)
        net_param = next(self._net.parameters())
        if net_param.device != x.device:
            self._net.to(x.device)
        self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        feats = self._features(torch.cat([x_hat, x], dim=0))
        dist = x.new_zeros(x.shape[0], dtype=torch.float32)
        for f in feats:
            f = f.float()
            f = f / (torch.linalg.vector_norm(f, dim=1, keepdim=True) + 1e-10)
            fh, fx = f.chunk(2, dim=0)
            dist = dist + (fh - fx).square().sum(dim=1).mean(dim=(1, 2))
        return dist

    def forward(self, x_hat: Tensor, x: Tensor) -> dict[str, Tensor]:
        """Returns ``{"perceptual": weight * mean per-frame distance}``; gradients flow into ``x_hat``."""
        return {"perceptual": self.weight * self.distance(x_hat, x.detach()).mean()}


__all__ = ["PerceptualLoss", "load_backbone_state", "load_state_dict_file"]
