"""Official LaVin-DiT checkpoint interop: import with strict key checks, export back to the official layout.

``kwargs`` are the official constructor arguments (``constructor_kwargs`` in the parity manifest).
"""

from lavinkit.interop.jdit_official import jdit_from_official, jdit_to_official
from lavinkit.interop.stvae_official import stvae_from_official, stvae_to_official

__all__ = ["jdit_from_official", "jdit_to_official", "stvae_from_official", "stvae_to_official"]
