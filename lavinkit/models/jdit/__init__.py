"""J-DiT: the dual-stream joint diffusion transformer (config, blocks, joint sequence, model)."""

from lavinkit.models.jdit.block import FinalLayer, JointBlock, StreamLayers
from lavinkit.models.jdit.config import PRESETS, JDiTConfig, official_mlp_hidden_size
from lavinkit.models.jdit.model import JDiT
from lavinkit.models.jdit.sequence import cfg_batch, joint_positions, key_padding_mask, null_context

__all__ = [
    "PRESETS",
    "FinalLayer",
    "JDiT",
    "JDiTConfig",
    "JointBlock",
    "StreamLayers",
    "cfg_batch",
    "joint_positions",
    "key_padding_mask",
    "null_context",
    "official_mlp_hidden_size",
]
