"""``JointLayout``: what an attention core or token mixer knows about the joint in-context sequence.

The J-DiT's joint sequence is the context frames ``[in_1, tgt_1, ..., in_P, tgt_P, query]`` followed by the
noisy target frames, each frame ``H' x W'`` tokens in raster order (``lavinkit.models.jdit.sequence``). Every
in-context item (an example input, an example target, the query) has as many latent frames as the target
(``item_frames``: 1 for images, ``1 + k`` for clips), so the context holds ``2P + 1`` items.

The layout is built once per forward by the model and handed to every block. It carries

* the sizes (``context_frames``, ``target_frames``, ``height``, ``width``, ``item_frames``),
* the segments (:class:`Segment`: role, pair index, token range, ``(T, H, W)``),
* per-token ``segment_ids`` / ``roles`` (per row when rows have different valid context lengths),
* the 3-D RoPE tables and a ``rope`` callable, so cores receive un-rotated q/k and rotate what they need,
* the optional key-padding mask and ``query_start`` (the last block only queries the target tokens),
* a hashable ``key`` for caching masks and compiled graphs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from lavinkit.nn.rope import apply_rope

Role = Literal["context_input", "context_target", "context_extra", "query", "target"]
ROLE_IDS: dict[str, int] = {"context_input": 0, "context_target": 1, "context_extra": 2, "query": 3, "target": 4}
PADDING = -1


@dataclass(frozen=True)
class Segment:
    """One in-context item of the joint sequence.

    Attributes:
        role: ``context_input``, ``context_target``, ``query`` or ``target``.
        pair: example-pair index for context items, ``-1`` for the query and the target.
        start, length: token range ``[start, start + length)`` in the joint sequence.
        frames, height, width: the item's ``(T, H, W)`` token grid.
    """

    role: Role
    pair: int
    start: int
    length: int
    frames: int
    height: int
    width: int

    @property
    def stop(self) -> int:
        return self.start + self.length


@dataclass(frozen=True, eq=False)
class JointLayout:
    """Description of the joint sequence ``[context tokens; target tokens]`` of one J-DiT forward.

    Attributes:
        context_frames, target_frames: ``Tc`` and ``Tx`` (latent frames after patchify).
        height, width: token grid ``H' x W'`` per frame.
        item_frames: latent frames per in-context item; ``None`` = ``target_frames``.
        cos, sin: RoPE tables ``[1 | B, 1, L, hd]`` over the joint sequence (``L = (Tc + Tx) H' W'``).
        axes_dims: RoPE channels per (t, h, w) axis.
        scale: softmax scale (``hd ** -0.5``).
        key_mask: optional boolean ``[B, 1, 1, L]``, ``True`` for keys that may be attended.
        context_lengths: optional ``[B]`` valid context frames per row (the rest is padding).
        query_start: first token that is a query (0, or ``Lc`` in the last block, which only updates
            the target stream).
    """

    context_frames: int
    target_frames: int
    height: int
    width: int
    cos: torch.Tensor
    sin: torch.Tensor
    axes_dims: tuple[int, ...]
    scale: float
    item_frames: int | None = None
    key_mask: torch.Tensor | None = None
    context_lengths: torch.Tensor | None = None
    query_start: int = 0
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------------------------ sizes
    @property
    def tokens_per_frame(self) -> int:
        return self.height * self.width

    @property
    def frames_per_item(self) -> int:
        return self.item_frames or self.target_frames

    @property
    def context_tokens(self) -> int:
        return self.context_frames * self.tokens_per_frame

    @property
    def target_tokens(self) -> int:
        return self.target_frames * self.tokens_per_frame

    @property
    def length(self) -> int:
        """Joint sequence length ``L``."""
        return self.context_tokens + self.target_tokens

    @property
    def num_frames(self) -> int:
        return self.context_frames + self.target_frames

    @property
    def query_length(self) -> int:
        return self.length - self.query_start

    @property
    def uniform(self) -> bool:
        """All rows share one segment structure (no per-row context lengths)."""
        return self.context_lengths is None

    @property
    def key(self) -> tuple:
        """Hashable description (sizes, query start, per-row lengths) for caches."""
        lengths = None if self.context_lengths is None else tuple(int(x) for x in self.context_lengths.tolist())
        return (self.context_frames, self.target_frames, self.height, self.width, self.frames_per_item,
                self.query_start, lengths)

    def for_queries(self, start: int) -> JointLayout:
        """The same layout with queries from token ``start`` on (shares caches of everything but queries)."""
        if start == self.query_start:
            return self
        return replace(self, query_start=start, _cache={})

    # --------------------------------------------------------------------------------- segments
    def _check_items(self, context_frames: int) -> tuple[int, int]:
        f = self.frames_per_item
        if context_frames % f or context_frames < f:
            raise ValueError(
                f"JointLayout: a context of {context_frames} frames is not a whole number of in-context items of "
                f"{f} frame(s) (items = example inputs, example targets and the query, each as long as the target)"
            )
        return context_frames // f, f

    @property
    def segments(self) -> tuple[Segment, ...]:
        """The items of a uniform layout, in sequence order.

        Raises:
            ValueError: rows have different valid context lengths (use :meth:`segment_ids`), or the context
                frames are not ``2P + 1`` items of ``frames_per_item`` frames.
        """
        if not self.uniform:
            raise ValueError(
                "JointLayout.segments: rows have different valid context lengths (context_lengths); "
                "use segment_ids()/roles() per row"
            )
        if "segments" not in self._cache:
            items, f = self._check_items(self.context_frames)
            if items % 2 == 0:
                raise ValueError(
                    f"JointLayout: {items} context items of {f} frame(s) do not form [in_1, tgt_1, ..., in_P, tgt_P, "
                    "query] (an odd number of items is needed)"
                )
            n, hw = f * self.tokens_per_frame, self.tokens_per_frame
            segs = []
            for i in range(items - 1):
                role = "context_input" if i % 2 == 0 else "context_target"
                segs.append(Segment(role, i // 2, i * n, n, f, self.height, self.width))
            segs.append(Segment("query", -1, (items - 1) * n, n, f, self.height, self.width))
            segs.append(Segment("target", -1, self.context_tokens, self.target_frames * hw, self.target_frames,
                                self.height, self.width))
            self._cache["segments"] = tuple(segs)
        return self._cache["segments"]

    @property
    def num_pairs(self) -> int:
        """Example pairs ``P`` of a uniform layout."""
        return sum(s.role == "context_input" for s in self.segments)

    def _token_maps(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(segment_ids, roles)``, each ``[R, L]`` long with ``R = 1`` (uniform) or ``B``.

        Segment ids: pair ``p`` for both items of example pair ``p``; an unpaired leftover context item (the
        zero frame of a null context) gets its own id; the query and the target get the next two ids;
        padding frames get ``-1``. Ids are per row, so only compare them within a row.
        """
        cache_key = ("maps", str(device))
        if cache_key in self._cache:
            return self._cache[cache_key]
        f, hw = self.frames_per_item, self.tokens_per_frame
        if self.uniform:
            lengths = [self.context_frames]
        else:
            lengths = [int(x) for x in self.context_lengths.tolist()]
        seg_rows, role_rows = [], []
        for valid in lengths:
            items, _ = self._check_items(valid)
            frame_seg, frame_role = [], []
            n_ctx = items - 1
            for i in range(n_ctx):
                if i == n_ctx - 1 and n_ctx % 2 == 1:
                    sid, role = i // 2, "context_extra"
                else:
                    sid, role = i // 2, ("context_input" if i % 2 == 0 else "context_target")
                frame_seg += [sid] * f
                frame_role += [ROLE_IDS[role]] * f
            q_id = (n_ctx + 1) // 2
            frame_seg += [q_id] * f
            frame_role += [ROLE_IDS["query"]] * f
            pad = self.context_frames - valid
            frame_seg += [PADDING] * pad
            frame_role += [PADDING] * pad
            frame_seg += [q_id + 1] * self.target_frames
            frame_role += [ROLE_IDS["target"]] * self.target_frames
            seg_rows.append(frame_seg)
            role_rows.append(frame_role)
        seg = torch.tensor(seg_rows, dtype=torch.long, device=device).repeat_interleave(hw, dim=1)  # [R, L]
        role = torch.tensor(role_rows, dtype=torch.long, device=device).repeat_interleave(hw, dim=1)
        self._cache[cache_key] = (seg, role)
        return seg, role

    def segment_ids(self, device=None) -> torch.Tensor:
        """Per-token segment id ``[R, L]`` (``R = 1`` for uniform layouts, else ``B``); see :meth:`_token_maps`."""
        return self._token_maps(device if device is not None else self.cos.device)[0]

    def roles(self, device=None) -> torch.Tensor:
        """Per-token role id ``[R, L]`` (:data:`ROLE_IDS`, ``-1`` = padding)."""
        return self._token_maps(device if device is not None else self.cos.device)[1]

    def frame_ids(self, device=None) -> torch.Tensor:
        """Joint frame index of every token, ``[L]`` (context frames first, then target frames)."""
        device = device if device is not None else self.cos.device
        return torch.arange(self.num_frames, device=device).repeat_interleave(self.tokens_per_frame)

    # ------------------------------------------------------------------------------------- RoPE
    def rope(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Rotate ``x`` ``[B, H, n, hd]`` holding tokens ``[start, start + n)`` of the joint sequence."""
        n = x.shape[-2]
        cos, sin = self.cos, self.sin
        if start != 0 or n != cos.shape[-2]:
            cos, sin = cos[..., start : start + n, :], sin[..., start : start + n, :]
        return apply_rope(x, cos.to(x.dtype), sin.to(x.dtype), self.axes_dims)

    def rotate(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE on queries (tokens from ``query_start``) and keys (all tokens)."""
        return self.rope(q, self.query_start), self.rope(k)

    # -------------------------------------------------------------------------------- masks
    def dense_mask(self, rule, device=None) -> torch.Tensor:
        """Boolean ``[R, 1, Lq, L]`` mask of a token rule (``True`` = may attend), AND the key-padding mask.

        ``rule(seg, role, row, q_idx, kv_idx)`` returns a broadcastable boolean tensor for the per-token
        segment ids and roles ``[R, L]`` and index tensors (see :mod:`lavinkit.nn.attention.rules`).
        """
        device = device if device is not None else self.cos.device
        cache_key = ("dense", getattr(rule, "__name__", repr(rule)), str(device))
        if cache_key not in self._cache:
            seg, role = self._token_maps(device)
            rows = seg.shape[0]
            q_idx = torch.arange(self.query_start, self.length, device=device)[None, :, None]  # [1, Lq, 1]
            kv_idx = torch.arange(self.length, device=device)[None, None, :]  # [1, 1, L]
            row = torch.arange(rows, device=device)[:, None, None]  # [R, 1, 1]
            mask = rule(seg, role, row, q_idx, kv_idx).expand(rows, -1, -1).unsqueeze(1)  # [R, 1, Lq, L]
            if self.key_mask is not None:
                mask = mask & self.key_mask.to(device)
            self._cache[cache_key] = mask
        return self._cache[cache_key]


def build_layout(
    context_frames: int,
    target_frames: int,
    height: int,
    width: int,
    cos: torch.Tensor,
    sin: torch.Tensor,
    axes_dims: tuple[int, ...],
    scale: float,
    key_mask: torch.Tensor | None = None,
    context_lengths: torch.Tensor | None = None,
    item_frames: int | None = None,
) -> JointLayout:
    """A :class:`JointLayout` (per-row lengths equal to ``context_frames`` everywhere collapse to uniform)."""
    if context_lengths is not None and not torch.compiler.is_compiling():
        if bool((context_lengths == context_frames).all()):
            context_lengths = None
    return JointLayout(context_frames, target_frames, height, width, cos, sin, tuple(axes_dims), scale,
                       item_frames=item_frames, key_mask=key_mask,
                       context_lengths=context_lengths)
