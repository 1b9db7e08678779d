"""LightningModules (orchestration only) and shared callbacks."""

from lavinkit.lit.jdit_module import JDiTModule  # noqa: F401
from lavinkit.lit.stvae_module import STVAEModule  # noqa: F401
