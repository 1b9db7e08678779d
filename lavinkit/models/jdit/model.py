"""J-DiT: the joint diffusion transformer of LaVin-DiT (plain PyTorch)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lavinkit.models.jdit.block import FinalLayer, JointBlock
from lavinkit.models.jdit.config import JDiTConfig
from lavinkit.models.jdit.sequence import joint_positions, key_padding_mask, pair_partners
from lavinkit.nn.attention.layout import build_layout
from lavinkit.nn.attention.plugins import AttentionCore, TokenMixer
from lavinkit.nn.embed import PatchEmbed, SpatialPositionEmbed, TimestepEmbedder, unpatchify
from lavinkit.nn.rope import rope_cos_sin

KIND = "jdit"

# Floor of 1 - t when a data estimate is turned into a velocity (``JDiTConfig.query_residual``): the velocity
# (x1 - x_t) / (1 - t) is exact for t < 0.95 and bounded near the data end, where the flow moves little.
MIN_TIME_TO_DATA = 0.05


class JDiT(nn.Module):
    """Joint diffusion transformer predicting the flow velocity of target latents given context latents.

    Context and target latents get separate patch embeddings and separate weights in every block
    (dual stream), and meet in one full-sequence joint attention with 3-D RoPE. The timestep
    embedding plus a learned prompt (context) or answer (target) type vector drives each stream's
    modulation.

    Args:
        config: :class:`JDiTConfig`.
        device, dtype: where/how to allocate parameters; ``device="meta"`` builds without memory and
            without initialising (call ``to_empty(...)`` then :meth:`init_weights` or load weights).
    """

    def __init__(self, config: JDiTConfig, device=None, dtype=None):
        super().__init__()
        self.config = config
        d, kw = config.hidden_size, dict(device=device, dtype=dtype)
        self.context_embed = PatchEmbed(config.patch_size, config.in_channels, d, **kw)
        self.target_embed = PatchEmbed(config.patch_size, config.in_channels, d, **kw)
        if config.pair_embedding:
            self.pair_embed = PatchEmbed(config.patch_size, config.in_channels, d, **kw)
        if config.spatial_position_embedding:
            self.position_embed = SpatialPositionEmbed(d, **kw)
        self.time_embed = TimestepEmbedder(d, config.frequency_dim, **kw)
        self.prompt_embed = nn.Parameter(torch.empty(1, d, **kw))
        self.answer_embed = nn.Parameter(torch.empty(1, d, **kw))
        self.blocks = nn.ModuleList(
            JointBlock(config, last=i == config.depth - 1, **kw) for i in range(config.depth)
        )
        self.final = FinalLayer(config, **kw)
        if self.prompt_embed.device.type != "meta":
            self.init_weights()
        self.freeze_dead_parameters(config.freeze_dead_params)

    @property
    def block_class(self) -> type[nn.Module]:
        """The repeated block class (for FSDP auto-wrap and activation-checkpointing policies)."""
        return JointBlock

    def attention_metrics(self) -> dict[str, float]:
        """Scalars the attention cores report, keyed ``blocks.<i>.<name>`` (Infini-attention: the per-head
        memory gate ``sigmoid(beta)``), for a training loop to log."""
        out = {}
        for i, block in enumerate(self.blocks):
            if block.core is not None:
                out.update({f"blocks.{i}.{k}": v for k, v in block.core.metrics().items()})
        return out

    def dead_parameters(self) -> list[nn.Parameter]:
        """Parameters that cannot influence the output (official-arch s.2.7), kept only for loading."""
        return self.blocks[-1].dead_parameters()

    def freeze_dead_parameters(self, freeze: bool = True) -> None:
        """Set ``requires_grad = not freeze`` on :meth:`dead_parameters` (they never receive a gradient)."""
        for p in self.dead_parameters():
            p.requires_grad_(not freeze)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Official initialisation (official-arch s.2.8): Xavier-uniform linears with zero bias, type
        embeddings and timestep MLP N(0, 0.02), zero modulations and zero output layer, unit norms."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                module.reset_parameters()
        nn.init.normal_(self.prompt_embed, std=0.02)
        nn.init.normal_(self.answer_embed, std=0.02)
        for layer in (self.time_embed.mlp[0], self.time_embed.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:
            for stream in (block.context, block.target):
                nn.init.zeros_(stream.modulation.weight)
                nn.init.zeros_(stream.modulation.bias)
        if self.config.spatial_position_embedding:  # zero: the untrained model is the one without it
            nn.init.zeros_(self.position_embed.proj.weight)
            nn.init.zeros_(self.position_embed.proj.bias)
        for layer in (self.final.modulation, self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        for module in self.modules():
            if isinstance(module, (AttentionCore, TokenMixer)) and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def _check_inputs(self, x, t, context, context_lengths) -> None:
        cfg = self.config
        if x.ndim != 5 or context.ndim != 5:
            raise ValueError(
                f"JDiT expects x and context as [B, C, T, H, W], got x {tuple(x.shape)}, context {tuple(context.shape)}"
            )
        b, c, _, h, w = x.shape
        if c != cfg.in_channels or context.shape[1] != cfg.in_channels:
            raise ValueError(
                f"JDiT: in_channels is {cfg.in_channels} but x has {c} and context has {context.shape[1]} channels"
            )
        if context.shape[0] != b or context.shape[3:] != x.shape[3:]:
            raise ValueError(
                f"JDiT: context {tuple(context.shape)} must match x {tuple(x.shape)} in batch size and spatial size (H, W)"
            )
        ph, pw = cfg.patch_size
        if h % ph or w % pw:
            raise ValueError(f"JDiT: latent size {h}x{w} is not divisible by patch_size {cfg.patch_size}")
        if t.shape != (b,):
            raise ValueError(f"JDiT: t must have shape [B] = [{b}], got {tuple(t.shape)}")
        if context_lengths is not None:
            if context_lengths.shape != (b,) or context_lengths.dtype not in (torch.int32, torch.int64):
                raise ValueError(
                    f"JDiT: context_lengths must be an integer tensor of shape [{b}], got "
                    f"{tuple(context_lengths.shape)} {context_lengths.dtype}"
                )
            if not torch.compiler.is_compiling():
                lo, hi = int(context_lengths.min()), int(context_lengths.max())
                if lo < 1 or hi > context.shape[2]:
                    raise ValueError(
                        f"JDiT: context_lengths must lie in [1, {context.shape[2]}] (context frames), got [{lo}, {hi}]"
                    )

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        context_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the velocity of the target latents.

        Args:
            x: ``[B, C, Tx, H, W]`` noisy target latents.
            t: ``[B]`` flow time in [0, 1] (0 = noise, 1 = data).
            context: ``[B, C, Tc, H, W]`` clean context latents (pairs then query, in time order).
            context_lengths: optional ``[B]`` integer count of valid context frames per row; frames past
                it are padding (never attended to) and the target's temporal RoPE index starts there.

        Returns:
            ``[B, C, Tx, H, W]`` velocity, in the dtype of ``x``.
        """
        self._check_inputs(x, t, context, context_lengths)
        cfg = self.config
        b, c, tx, h, w = x.shape
        tc = context.shape[2]
        hp, wp = h // cfg.patch_size[0], w // cfg.patch_size[1]

        h_ctx = self.context_embed(context)  # [B, Tc*H'*W', D]
        h_tgt = self.target_embed(x)  # [B, Tx*H'*W', D]
        if cfg.pair_embedding or cfg.query_residual:
            partners, query = pair_partners(context, tx, context_lengths)  # query: [B, C, Tx, H, W]
        if cfg.pair_embedding:
            h_ctx = h_ctx + self.pair_embed(partners)
            h_tgt = h_tgt + self.pair_embed(query.to(x.dtype))
        if cfg.spatial_position_embedding:
            where = self.position_embed(hp, wp)  # [H'*W', D], the same in every frame
            h_ctx = h_ctx + where.repeat(tc, 1)
            h_tgt = h_tgt + where.repeat(tx, 1)
        temb = self.time_embed(t)  # [B, D]
        c_ctx = F.silu(temb + self.prompt_embed)
        c_tgt = F.silu(temb + self.answer_embed)

        positions = joint_positions(tc, tx, hp, wp, context_lengths, device=x.device)  # [L, 3] | [B, L, 3]
        cos, sin = rope_cos_sin(positions, cfg.axes_dims, cfg.rope_theta)
        if cos.ndim == 2:
            cos, sin = cos[None], sin[None]
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [1 | B, 1, L, hd], broadcast over heads
        mask = None
        if context_lengths is not None:
            mask = key_padding_mask(context_lengths.to(x.device), tc, tx, hp * wp)

        layout = build_layout(tc, tx, hp, wp, cos, sin, cfg.axes_dims, cfg.head_dim**-0.5, key_mask=mask,
                              context_lengths=context_lengths)

        use_checkpoint = cfg.activation_checkpointing and torch.is_grad_enabled()
        for block in self.blocks:
            if use_checkpoint:
                h_ctx, h_tgt = checkpoint(block, h_ctx, h_tgt, c_ctx, c_tgt, layout, use_reentrant=False)
            else:
                h_ctx, h_tgt = block(h_ctx, h_tgt, c_ctx, c_tgt, layout)

        out = self.final(h_tgt, c_tgt)  # [B, Tx*H'*W', pH*pW*C]
        out = unpatchify(out.reshape(b, tx, hp, wp, -1), cfg.patch_size, c)
        if cfg.query_residual:
            # out is the answer minus the query; the velocity that reaches that answer from x_t by t = 1
            data = query.float() + out.float()
            gap = (1.0 - t.float()).clamp(min=MIN_TIME_TO_DATA).reshape(b, 1, 1, 1, 1)
            out = (data - x.float()) / gap
        return out.to(x.dtype)

    # ------------------------------------------------------------------------------------------- files
    def save_pretrained(self, path: str | Path) -> Path:
        """Write a weights file (safetensors with kind ``jdit`` and the config in its metadata)."""
        from lavinkit.models.io import save_pretrained

        return save_pretrained(path, KIND, self.config.to_dict(), self.state_dict())

    @classmethod
    def from_pretrained(
        cls, path: str | Path, use_ema: bool = True, device=None, dtype=None, **overrides
    ) -> JDiT:
        """Build from a weights file or a lavinkit training checkpoint (strict key check).

        ``overrides`` replace config fields that do not change weights (e.g. ``attention``,
        ``activation_checkpointing``). ``dtype`` defaults to the stored dtype.
        """
        from lavinkit.models.io import load_pretrained

        kind, config, state = load_pretrained(path, use_ema=use_ema)
        if kind != KIND:
            raise ValueError(f"{path}: holds a {kind!r} model, not a {KIND!r} one")
        cfg = JDiTConfig.from_dict({**config, **overrides})
        model = cls(cfg, device="meta")
        model.load_state_dict(state, strict=True, assign=True)
        model.freeze_dead_parameters(cfg.freeze_dead_params)
        return model.to(device=device, dtype=dtype)
