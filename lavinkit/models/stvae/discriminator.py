"""Patch discriminators for ST-VAE GAN training (plain torch).

* :class:`NLayerDiscriminator` — PatchGAN (pix2pix / taming-transformers) in 2-D for images or 3-D for
  whole clips (the 3-D one strides over time too, so it judges motion, not just frames).
* :class:`PatchDiscriminator` — routes ``[B, 3, T, H, W]`` inputs: ``T == 1`` (images) to the 2-D
  discriminator, ``T > 1`` (clips) to the 3-D one.

GroupNorm instead of the original BatchNorm: no running statistics (nothing to sync under DDP, and the
discriminator behaves the same in train and eval), and it works with ``torch.func.functional_call``.
"""

from __future__ import annotations

from torch import Tensor, nn


def _norm(channels: int) -> nn.Module:
    return nn.GroupNorm(num_groups=min(32, channels // 4) if channels >= 8 else 1, num_channels=channels)


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator.

    Args:
        dims: 2 (images ``[B, C, H, W]``) or 3 (clips ``[B, C, T, H, W]``).
        in_channels: input channels.
        base_channels: width of the first layer (doubled per layer, capped at 8x).
        num_layers: number of stride-2 layers.
        temporal_stride: 3-D only: stride over time of the strided layers (1 keeps the time resolution).

    Returns (forward): patch logits ``[B, 1, h, w]`` (2-D) or ``[B, 1, t, h, w]`` (3-D).
    """

    def __init__(
        self,
        dims: int = 2,
        in_channels: int = 3,
        base_channels: int = 64,
        num_layers: int = 3,
        temporal_stride: int = 2,
    ) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"NLayerDiscriminator: dims={dims}, expected 2 or 3")
        if num_layers < 1:
            raise ValueError(f"NLayerDiscriminator: num_layers={num_layers} must be >= 1")
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.dims = dims
        self.in_channels, self.base_channels, self.num_layers = in_channels, base_channels, num_layers
        self.temporal_stride = temporal_stride

        def stride(s: int):
            return s if dims == 2 else (min(s, temporal_stride), s, s)

        # 3-D: kernel 3 over time (padding 1 keeps any clip length >= 1 valid), 4 over space
        k = 4 if dims == 2 else (3, 4, 4)

        layers: list[nn.Module] = [
            conv(in_channels, base_channels, kernel_size=k, stride=stride(2), padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        ch = base_channels
        for i in range(1, num_layers + 1):
            out = base_channels * min(2**i, 8)
            s = 2 if i < num_layers else 1
            layers += [
                conv(ch, out, kernel_size=k, stride=stride(s), padding=1, bias=False),
                _norm(out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            ch = out
        layers.append(conv(ch, 1, kernel_size=k, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.GroupNorm):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != self.dims + 2:
            raise ValueError(f"NLayerDiscriminator(dims={self.dims}): expected a {self.dims + 2}-D input, got {tuple(x.shape)}")
        return self.main(x)


class PatchDiscriminator(nn.Module):
    """Image/clip discriminator pair: images (``T == 1``) -> 2-D, clips (``T > 1``) -> 3-D.

    Args:
        image: 2-D discriminator for images (``None``: an image batch raises).
        video: 3-D discriminator for clips (``None``: stage 1 is image-only; a clip then raises).
    Input ``[B, 3, T, H, W]`` in [-1, 1]; output patch logits.
    """

    def __init__(self, image: NLayerDiscriminator | None = None, video: NLayerDiscriminator | None = None) -> None:
        super().__init__()
        if image is None and video is None:
            raise ValueError("PatchDiscriminator: give at least one of image=, video=")
        if image is not None and image.dims != 2:
            raise ValueError("PatchDiscriminator: image= must be a 2-D NLayerDiscriminator (dims=2)")
        if video is not None and video.dims != 3:
            raise ValueError("PatchDiscriminator: video= must be a 3-D NLayerDiscriminator (dims=3)")
        self.image = image
        self.video = video

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5:
            raise ValueError(f"PatchDiscriminator: expected [B, 3, T, H, W], got {tuple(x.shape)}")
        if x.shape[2] == 1:
            if self.image is None:
                raise ValueError("PatchDiscriminator: got images (T=1) but no 2-D image discriminator is configured")
            return self.image(x[:, :, 0])  # [B, 3, 1, H, W] -> [B, 3, H, W]
        if self.video is None:
            raise ValueError(
                f"PatchDiscriminator: got clips (T={x.shape[2]}) but no 3-D video discriminator is configured "
                "(set video: in the adversarial discriminator for stage 2)"
            )
        return self.video(x)


__all__ = ["NLayerDiscriminator", "PatchDiscriminator"]
