"""LightningModules (orchestration only) and shared callbacks."""

from lavinkit.lit.stvae_module import STVAEModule  # noqa: F401
