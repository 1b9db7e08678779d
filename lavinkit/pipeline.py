"""In-context inference: ST-VAE + J-DiT + flow sampler (the official ``inference.py`` as a Python API).

    pipe = InContextPipeline.from_checkpoints("stvae.safetensors", "jdit.safetensors", device="cuda")
    out = pipe(query, [(in_1, tgt_1), (in_2, tgt_2)], seed=0)
    out.images          # [B, 3, T, H, W] in [0, 1] (or uint8 with output="uint8")

What a call does (official order; flow convention in ``lavinkit.flow.path``):

1. Encode every clip on its own: the query and each pair's input and target (``[B, 3, T, H, W]`` in
   [-1, 1]). An image is a 1-frame clip, so images are encoded frame by frame as the official code does;
   a video query (or video pairs) is encoded as a whole clip. Clips of equal length share one VAE batch.
   The posterior is sampled (``encode_mode="sample"``, official) or its mean taken (``"mean"``), then
   normalised with the VAE's own stored shift/scale (``vae.normalize_latents``).
2. The context is the latents in time order ``[in_1, tgt_1, ..., in_k, tgt_k, query]`` (concatenated
   along latent time); the null context for guidance is ``[zeros frame, query]`` (``lavinkit.flow.guidance``).
3. Noise ``[B, C, t_query, h, w]`` is integrated from t = 0 to t = 1 with the chosen sampler, grid and
   guidance (one batched forward per step when that pads nothing, else two; see ``lavinkit.flow.guidance``).
   With ``ensemble_size`` K > 1 the context is encoded once and K noises per query are integrated in one batch;
   the answer is the mean of the K latents (test-time ensembling, as Marigold does for depth): an estimate of
   the expected answer, which scores higher PSNR/SSIM than one sample wherever the samples disagree.
4. The latent is denormalised and decoded; images are ``(x / 2 + 0.5).clamp(0, 1)``, optionally turned into
   uint8 by rounding or by the official truncation.

In-context residual transfer (``residual_transfer=True``, not in the official pipeline): the ST-VAE cannot represent
every detail of a clip, so a decoded answer lacks what the VAE drops (fine texture, sharp edges, noise). That
residual of the query, ``query - decode(encode(query))``, is known, and the example pairs show how much of it the
task keeps: the gain per query and colour channel is the least-squares fit of each example target's residual on its
input's residual, ``g = sum <r_in, r_tgt> / sum <r_in, r_in>`` over the pairs, clamped to [-1, 1]. The answer is
``decode(latent) + g * (query - decode(encode(query)))``: about 1 on restorations (the detail the VAE drops comes
back), about 0 on denoising (the noise the VAE drops stays out) and on re-arranging tasks such as a flip (the
residuals do not correlate). It costs one decode of every context clip.

Randomness: with ``seed`` a CPU generator draws, in this order, the posterior noise (``encode_mode="sample"``)
and the initial noise (``[K * B, C, t_query, h, w]``, ensemble member ``k`` of query ``b`` at ``k * B + b``, so
member 0 is the single-sample answer of the same seed), so a seed gives the same result on every device.
``posterior_eps`` and ``noise`` inject those draws explicitly (parity tests, experiments).

Precision: ``dtype`` (J-DiT compute dtype) defaults to bf16 on CUDA and float32 on CPU; ``encode_dtype`` and
``decode_dtype`` (VAE) default to ``dtype``. The ODE state stays float32. Asking for float16 with
bf16-stored weights is refused (bf16-trained models overflow to black/NaN images in fp16) unless
``allow_fp16=True``, which only warns.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lavinkit.flow.grids import TimeGrid
from lavinkit.flow.guidance import ClassifierFreeGuidance, GuidanceMode
from lavinkit.flow.samplers import ODESampler, get_sampler

__all__ = ["InContextPipeline", "PipelineOutput", "load_model_file", "to_uint8"]

EncodeMode = Literal["sample", "mean"]
Rounding = Literal["round", "truncate"]

@dataclass
class PipelineOutput:
    """Result of :meth:`InContextPipeline.__call__`.

    Attributes:
        images: ``[B, 3, T, H, W]`` float in [0, 1], or uint8 with ``output="uint8"``.
        latent: ``[B, C, t, h, w]`` float32 sampled latent (normalised latent space; the mean of the ensemble's
            latents with ``ensemble_size`` > 1).
        context: ``[B, C, Tc, h, w]`` normalised context latents ``[in_1, tgt_1, ..., query]``.
        decoded: ``[B, 3, T, H, W]`` float32 raw VAE output (before clamping; with ``residual_transfer`` plus the
            transferred residual).
        nfe: velocity evaluations made by the sampler (each one J-DiT forward when guidance is batched).
        times: ``[N]`` time grid used.
        residual_gain: ``[B, 3]`` gain of the transferred query residual per colour channel (``residual_transfer``
            only, else ``None``).
    """

    images: Tensor
    latent: Tensor
    context: Tensor
    decoded: Tensor
    nfe: int
    times: Tensor
    residual_gain: Tensor | None = None


def to_uint8(images: Tensor, rounding: Rounding = "round") -> Tensor:
    """``[0, 1]`` float images -> uint8; ``"truncate"`` is the official ``(x * 255).to(uint8)``."""
    scaled = images.float().clamp(0, 1) * 255
    if rounding == "round":
        scaled = scaled.round()
    elif rounding != "truncate":
        raise ValueError(f"rounding must be 'round' or 'truncate', got {rounding!r}")
    return scaled.to(torch.uint8)


def _equal_length_groups(lengths: Sequence[int]) -> list[list[int]]:
    """Indices of equal lengths, in first-seen order: clips that can share one VAE batch."""
    groups: dict[int, list[int]] = {}
    for i, length in enumerate(lengths):
        groups.setdefault(length, []).append(i)
    return list(groups.values())


def _float_dtype(module: nn.Module) -> torch.dtype | None:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def _stored_dtype(path: Path) -> torch.dtype | None:
    """Floating dtype of the first floating tensor stored in a model file (without loading it all)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        names = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                dtype = names.get(f.get_slice(key).get_dtype())
                if dtype is not None:
                    return dtype
    return None


def _is_lavinkit_file(path: Path) -> bool:
    from lavinkit.models.io import LAVINKIT_KEY

    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return "lavinkit_kind" in (f.metadata() or {})
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return isinstance(checkpoint, dict) and LAVINKIT_KEY in checkpoint


def _load_official_state(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: expected a state dict (or a dict with 'state_dict'), got {type(checkpoint).__name__}")
    return checkpoint


def load_model_file(path: str | Path, kind: Literal["stvae", "jdit"], *, use_ema: bool = True,
                    official_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Load an ST-VAE or a J-DiT from a lavinkit weights file / training checkpoint or an official file.

    lavinkit files (safetensors with lavinkit metadata, ``.ckpt`` with a ``"lavinkit"`` entry) go through
    ``STVAE.from_pretrained`` / ``JDiT.from_pretrained``; anything else is treated as an official checkpoint
    (``stvae.pt`` with ``"state_dict"``, ``lavin_dit.safetensors``) and imported strictly through
    ``lavinkit.interop`` with ``official_kwargs`` (default: the released models, the interop defaults).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} weights: no such file {path}")
    if _is_lavinkit_file(path):
        if kind == "stvae":
            from lavinkit.models.stvae import STVAE

            return STVAE.from_pretrained(path, use_ema=use_ema)
        from lavinkit.models.jdit import JDiT

        return JDiT.from_pretrained(path, use_ema=use_ema)
    state = _load_official_state(path)
    if kind == "stvae":
        from lavinkit.interop.stvae_official import stvae_from_official

        return stvae_from_official(state, **(official_kwargs or {}))
    from lavinkit.interop.jdit_official import jdit_from_official

    return jdit_from_official(state, **(official_kwargs or {}))


class InContextPipeline:
    """VAE + J-DiT + ODE sampler with classifier-free guidance.

    Args:
        vae: an ``STVAE`` (``encode -> DiagonalGaussian``, ``decode``, ``normalize_latents``, ``denormalize_latents``).
        dit: a ``JDiT`` (``dit(x, t, context, context_lengths) -> v``).
        sampler: ``"euler"``, ``"heun"`` or an ``ODESampler`` instance (then ``num_steps``/``grid`` are its own).
            For a ``query_residual`` J-DiT ``"heun"`` ends with an Euler step and a Heun instance must do so
            (:func:`~lavinkit.flow.samplers.check_sampler_for_data_estimate`).
        num_steps: grid points (official ``--timesteps``; Euler makes ``num_steps - 1`` evaluations).
        grid: ``"official"`` (20/30/40 only), ``"uniform"``, ``"shifted"`` or a ``TimeGrid``.
        guidance_scale: CFG scale (1.0 = no guidance, a single conditional forward per step).
        guidance_mode: ``"auto"`` (batched unless that pads the null context; see ``lavinkit.flow.guidance``),
            ``"batched"`` (one forward with the padded null context) or ``"two_pass"`` (official).
        encode_mode: ``"sample"`` (official: posterior sample) or ``"mean"``.
        ensemble_size: answers sampled per query from independent noise and averaged in latent space (1: one
            sample, official); costs ``ensemble_size`` times the J-DiT work of one answer.
        residual_transfer: add the query's ST-VAE residual to the answer with the gain its example pairs show
            (module docstring; not official, needs example pairs).
        device: where the models run (default: CUDA when available, else CPU).
        dtype: J-DiT compute dtype (default bf16 on CUDA, float32 on CPU).
        encode_dtype / decode_dtype: VAE dtypes for encoding / decoding (default ``dtype``).
        encode_batch_size: most clips per VAE encode call (``None``: all clips of equal length at once).
        allow_fp16: permit float16 with bf16-stored weights (warns instead of raising).
        weights_dtype: dtype the weights were stored/trained in, for the fp16 check (default: the models'
            parameter dtype at construction).

    The given modules are put in eval mode, frozen, and moved/cast in place (``nn.Module.to``).
    """

    def __init__(
        self,
        vae: nn.Module,
        dit: nn.Module,
        *,
        sampler: str | ODESampler = "euler",
        num_steps: int = 20,
        grid: str | TimeGrid = "official",
        guidance_scale: float = 1.5,
        guidance_mode: GuidanceMode = "auto",
        encode_mode: EncodeMode = "sample",
        ensemble_size: int = 1,
        residual_transfer: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        encode_dtype: torch.dtype | None = None,
        decode_dtype: torch.dtype | None = None,
        encode_batch_size: int | None = None,
        allow_fp16: bool = False,
        weights_dtype: torch.dtype | None = None,
    ) -> None:
        if encode_mode not in ("sample", "mean"):
            raise ValueError(f"encode_mode must be 'sample' or 'mean', got {encode_mode!r}")
        if int(ensemble_size) != ensemble_size or ensemble_size < 1:
            raise ValueError(f"ensemble_size must be an integer >= 1, got {ensemble_size!r}")
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        default = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.dtype = dtype or default
        self.encode_dtype = encode_dtype or self.dtype
        self.decode_dtype = decode_dtype or self.dtype
        stored = {weights_dtype} if weights_dtype is not None else {_float_dtype(vae), _float_dtype(dit)}
        if torch.float16 in (self.dtype, self.encode_dtype, self.decode_dtype) and torch.bfloat16 in stored:
            msg = ("float16 was requested (dtype/encode_dtype/decode_dtype) but the weights are stored in bfloat16; "
                   "bf16-trained models overflow in fp16 (black or NaN images). Use dtype=torch.bfloat16 or float32")
            if not allow_fp16:
                raise ValueError(msg + ", or pass allow_fp16=True to try anyway.")
            warnings.warn(msg + ".", stacklevel=2)
        # a query_residual J-DiT's velocity is not defined at t = 1: "heun" then ends with an Euler step
        data_estimate = bool(getattr(getattr(dit, "config", None), "query_residual", False))
        self.sampler = get_sampler(sampler, num_steps=num_steps, grid=grid, data_estimate=data_estimate)
        self.guidance = ClassifierFreeGuidance(guidance_scale, guidance_mode)
        self.encode_mode = encode_mode
        self.ensemble_size = int(ensemble_size)
        self.residual_transfer = bool(residual_transfer)
        self.encode_batch_size = encode_batch_size
        self.vae = vae.eval().requires_grad_(False).to(self.device, self.encode_dtype)
        self.dit = dit.eval().requires_grad_(False).to(self.device, self.dtype)

    @classmethod
    def from_checkpoints(
        cls,
        vae_path: str | Path,
        dit_path: str | Path,
        *,
        use_ema: bool = True,
        vae_official_kwargs: dict[str, Any] | None = None,
        dit_official_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> InContextPipeline:
        """Build from model files (see :func:`load_model_file`); ``kwargs`` go to the constructor."""
        vae = load_model_file(vae_path, "stvae", use_ema=use_ema, official_kwargs=vae_official_kwargs)
        dit = load_model_file(dit_path, "jdit", use_ema=use_ema, official_kwargs=dit_official_kwargs)
        if "weights_dtype" not in kwargs:
            stored = [_stored_dtype(Path(p)) for p in (vae_path, dit_path)]
            stored += [_float_dtype(vae), _float_dtype(dit)]
            kwargs["weights_dtype"] = torch.bfloat16 if torch.bfloat16 in stored else None
        return cls(vae, dit, **kwargs)

    # ------------------------------------------------------------------------------------------ stages
    def _check_clip(self, x: Tensor, name: str, batch: int | None) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim != 5 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name}: expected a float tensor [B, 3, T, H, W] in [-1, 1], got {shape}")
        if not x.is_floating_point():
            raise ValueError(f"{name}: expected float pixels in [-1, 1], got dtype {x.dtype}")
        if x.shape[-2] % 16 or x.shape[-1] % 16:
            raise ValueError(f"{name}: height and width must be multiples of 16, got {x.shape[-2]}x{x.shape[-1]}")
        if batch is not None and x.shape[0] not in (1, batch):
            raise ValueError(f"{name}: batch size {x.shape[0]} does not match the query's {batch}")
        return x.expand(batch, *x.shape[1:]) if batch is not None else x

    def _vae_to(self, dtype: torch.dtype) -> None:
        if _float_dtype(self.vae) != dtype:
            self.vae.to(dtype)

    @torch.no_grad()
    def encode(
        self,
        clips: Sequence[Tensor],
        *,
        generator: torch.Generator | None = None,
        posterior_eps: Tensor | None = None,
    ) -> Tensor:
        """Encode clips one by one and concatenate their normalised latents along time.

        Args:
            clips: ``[B, 3, T_i, H, W]`` clips in [-1, 1] (time order of the context).
            generator: CPU generator for the posterior noise (``encode_mode="sample"``).
            posterior_eps: ``[B, C, sum t_i, h, w]`` explicit standard-normal posterior noise laid out like the
                result (overrides ``generator``).

        Returns:
            ``[B, C, sum t_i, h, w]`` float32 normalised latents.
        """
        self._vae_to(self.encode_dtype)
        batch = clips[0].shape[0]
        # group clips of equal length into one VAE batch: [n * B, 3, T, H, W]
        means: list[Tensor | None] = [None] * len(clips)
        stds: list[Tensor | None] = [None] * len(clips)
        for ids in _equal_length_groups([clip.shape[2] for clip in clips]):
            stacked = torch.cat([clips[i] for i in ids], dim=0).to(self.device, self.encode_dtype)
            chunk = self.encode_batch_size or stacked.shape[0]
            posts = [self.vae.encode(part) for part in stacked.split(chunk)]
            mean = torch.cat([p.mean for p in posts]).float()
            std = torch.cat([p.std for p in posts]).float()
            for j, i in enumerate(ids):
                means[i], stds[i] = mean[j * batch : (j + 1) * batch], std[j * batch : (j + 1) * batch]
        mean = torch.cat(means, dim=2)  # [B, C, sum t_i, h, w]
        if self.encode_mode == "mean":
            z = mean
        else:
            std = torch.cat(stds, dim=2)
            if posterior_eps is None:
                posterior_eps = torch.randn(mean.shape, generator=generator, dtype=torch.float32)
            elif posterior_eps.shape != mean.shape:
                raise ValueError(f"posterior_eps must have the context latent shape {tuple(mean.shape)}, "
                                 f"got {tuple(posterior_eps.shape)}")
            z = mean + std * posterior_eps.to(mean.device, torch.float32)
        return self.vae.normalize_latents(z).float()

    @torch.no_grad()
    def decode(self, latent: Tensor) -> Tensor:
        """Normalised latent ``[B, C, t, h, w]`` -> float32 raw decode ``[B, 3, T, H, W]``."""
        self._vae_to(self.decode_dtype)
        z = self.vae.denormalize_latents(latent.float()).to(self.device, self.decode_dtype)
        return self.vae.decode(z).float()

    def _dit_forward(self, x: Tensor, t: Tensor, context: Tensor, context_lengths: Tensor | None) -> Tensor:
        out = self.dit(x.to(self.dtype), t.float(), context.to(self.dtype), context_lengths)
        return out.float()

    @torch.no_grad()
    def sample(self, context: Tensor, noise: Tensor, *, query_frames: int = 1) -> tuple[Tensor, int, Tensor]:
        """Integrate ``noise [B, C, t_q, h, w]`` to a latent given ``context [B, C, Tc, h, w]``.

        Returns ``(latent float32, nfe, grid)``.
        """
        fn = self.guidance.velocity_fn(self._dit_forward, context.to(self.device), query_frames=query_frames)
        out = self.sampler(fn, noise.to(self.device, torch.float32))
        return out.sample, out.nfe, out.times

    @torch.no_grad()
    def transferred_residual(self, clips: Sequence[Tensor], context: Tensor) -> tuple[Tensor, Tensor]:
        """The query's ST-VAE residual scaled by the gain the example pairs show (module docstring).

        Args:
            clips: the encoded clips ``[in_1, tgt_1, ..., in_k, tgt_k, query]``, each ``[B, 3, T_i, H, W]`` in
                [-1, 1], k >= 1, each pair's input and target of one shape.
            context: their normalised latents ``[B, C, sum t_i, h, w]`` (:meth:`encode`).

        Returns:
            ``(residual [B, 3, T_query, H, W] float32, gain [B, 3])``.
        """
        lengths = [self.vae.config.latent_shape(*clip.shape[2:])[1] for clip in clips]
        # decode clips of equal latent length in one VAE batch, like encode: [n * B, C, t, h, w]
        batch, residuals = clips[0].shape[0], [None] * len(clips)
        bounds = torch.tensor([0, *lengths]).cumsum(0).tolist()
        for ids in _equal_length_groups(lengths):
            decoded = self.decode(torch.cat([context[:, :, bounds[i] : bounds[i + 1]] for i in ids]))
            for j, i in enumerate(ids):
                residuals[i] = clips[i].to(self.device).float() - decoded[j * batch : (j + 1) * batch]
        inputs, targets = residuals[:-1:2], residuals[1:-1:2]
        agreement = sum((r_in * r_tgt).sum((2, 3, 4)) for r_in, r_tgt in zip(inputs, targets, strict=True))
        energy = sum(r_in.square().sum((2, 3, 4)) for r_in in inputs)
        gain = (agreement / energy.clamp_min(1e-12)).clamp(-1, 1)  # [B, 3]
        return gain[:, :, None, None, None] * residuals[-1], gain

    # -------------------------------------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(
        self,
        query: Tensor,
        context_pairs: Sequence[tuple[Tensor, Tensor]] = (),
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
        posterior_eps: Tensor | None = None,
        output: Literal["float", "uint8"] = "float",
        rounding: Rounding = "round",
    ) -> PipelineOutput:
        """Answer ``query`` given example ``(input, target)`` pairs of the task.

        Args:
            query: ``[B, 3, T, H, W]`` in [-1, 1] (T = 1 image, T = 1 + 4k clip).
            context_pairs: ``(input, target)`` tensors, each ``[B or 1, 3, T_i, H, W]`` in [-1, 1], same H, W.
            seed: seeds a CPU generator for posterior and initial noise (``generator`` overrides).
            noise: explicit ``[K * B, C, t_query, h, w]`` initial noise (K = ``ensemble_size``; member ``k`` of
                query ``b`` at ``k * B + b``).
            posterior_eps: explicit posterior noise ``[B, C, Tc, h, w]`` (context layout, see :meth:`encode`).
            output: ``"float"`` ([0, 1]) or ``"uint8"``; rounding: ``"round"`` or ``"truncate"`` (official).
        """
        query = self._check_clip(query, "query", None)
        batch = query.shape[0]
        clips: list[Tensor] = []
        for i, pair in enumerate(context_pairs):
            if len(pair) != 2:
                raise ValueError(f"context_pairs[{i}]: expected an (input, target) pair, got {len(pair)} items")
            clips += [self._check_clip(pair[0], f"context_pairs[{i}] input", batch),
                      self._check_clip(pair[1], f"context_pairs[{i}] target", batch)]  # fmt: skip
        clips.append(query)
        if self.residual_transfer and not context_pairs:
            raise ValueError("residual_transfer fits its gain on the example pairs: pass at least one context pair")
        for i, clip in enumerate(clips):
            if clip.shape[-2:] != query.shape[-2:]:
                raise ValueError(f"context_pairs[{i // 2}]: spatial size {tuple(clip.shape[-2:])} differs from "
                                 f"the query's {tuple(query.shape[-2:])}")
            if self.residual_transfer and i % 2 and clip.shape != clips[i - 1].shape:  # a target vs its input
                raise ValueError(f"context_pairs[{i // 2}]: residual_transfer needs input and target of one shape, "
                                 f"got {tuple(clips[i - 1].shape)} and {tuple(clip.shape)}")
        if generator is None and seed is not None:
            generator = torch.Generator(device="cpu").manual_seed(int(seed))

        context = self.encode(clips, generator=generator, posterior_eps=posterior_eps)
        c, _, h, w = context.shape[1], *context.shape[2:]
        query_frames = self.vae.config.latent_shape(query.shape[2], query.shape[3], query.shape[4])[1]
        members = self.ensemble_size
        shape = (members * batch, c, query_frames, h, w)
        if noise is None:
            noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        elif tuple(noise.shape) != shape:
            what = "the query's latent" + (f" x ensemble_size {members}" if members > 1 else "")
            raise ValueError(f"noise must have shape {shape} ({what}), got {tuple(noise.shape)}")
        if members == 1:
            latent, nfe, times = self.sample(context, noise, query_frames=query_frames)
        else:  # the members of one query share its encoded context: [K * B, C, Tc, h, w], member-major like the noise
            latent, nfe, times = self.sample(context.repeat(members, 1, 1, 1, 1), noise, query_frames=query_frames)
            latent = latent.view(members, batch, *latent.shape[1:]).mean(0)
        decoded, gain = self.decode(latent), None
        if self.residual_transfer:
            residual, gain = self.transferred_residual(clips, context)
            decoded = decoded + residual
        images = (decoded / 2 + 0.5).clamp(0, 1)
        if output == "uint8":
            images = to_uint8(images, rounding)
        elif output != "float":
            raise ValueError(f"output must be 'float' or 'uint8', got {output!r}")
        return PipelineOutput(images=images, latent=latent, context=context, decoded=decoded, nfe=nfe, times=times,
                              residual_gain=gain)

    def __repr__(self) -> str:
        return (f"InContextPipeline(sampler={self.sampler!r}, guidance={self.guidance!r}, encode_mode="
                f"{self.encode_mode!r}, ensemble_size={self.ensemble_size}, residual_transfer="
                f"{self.residual_transfer}, device={self.device}, dtype={self.dtype}, "
                f"encode_dtype={self.encode_dtype}, decode_dtype={self.decode_dtype})")
