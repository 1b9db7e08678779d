"""lavinkit: a PyTorch Lightning component kit for LaVin-DiT (arXiv 2411.11505)."""

__version__ = "0.1.0"
