"""The ``lavinkit`` command.

``lavinkit fit|validate|test|predict --config recipe.yaml`` is a LightningCLI in subclass mode: the model
and the DataModule are chosen by ``class_path`` in YAML, so any LightningModule / LightningDataModule
(ours or a user's) can be swapped in without code changes.

The other subcommands (``data``, ``encode``, ``convert``, ``infer``, ``eval``, ``bench``) do not train; each
lives in ``lavinkit.commands.<name>`` and exposes ``main(argv) -> int`` built on jsonargparse, so they share the
look and feel of the training commands (``--help``, ``--config``, errors that name the option at fault).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

TRAINER_COMMANDS = ("fit", "validate", "test", "predict")
TOOL_COMMANDS = {
    "data": "build demo data, pack, validate and inspect WebDataset shards of input/target pairs",
    "encode": "write latent shards from pair shards with a given ST-VAE",
    "convert": "convert checkpoints between the official LaVin-DiT layout and lavinkit (safetensors out)",
    "infer": "in-context inference: a query image/clip and a task folder of example pairs -> result",
    "eval": "per-task scores of an in-context model vs the identity baseline, the VAE ceiling and a context swap",
    "bench": "benchmarks: data loading, ST-VAE and J-DiT throughput",
    "export": "consolidated safetensors weights (EMA or raw) from any strategy's training checkpoint",
}


class LavinCLI:
    """Factory for the LightningCLI used by the training commands (kept lazy: importing Lightning is slow)."""

    @staticmethod
    def build(args: Sequence[str] | None = None, run: bool = True):
        """Build (and by default run) the LightningCLI.

        Args:
            args: command-line arguments without the program name; ``None`` reads ``sys.argv``.
            run: ``False`` only parses and instantiates (used by notebooks and recipe tests).
        """
        from lightning.pytorch import LightningDataModule, LightningModule
        from lightning.pytorch.cli import LightningCLI

        return LightningCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            run=run,
            save_config_kwargs={"overwrite": True},
        )


def build_cli(args: Sequence[str] | None = None, run: bool = False):
    """Parse a training command line (e.g. ``["fit", "--config", "recipe.yaml"]``) the way ``lavinkit`` does.

    With ``run=False`` (the default here) the returned CLI exposes ``.model``, ``.datamodule`` and
    ``.trainer`` fully built from the recipe, which is how notebooks reuse recipes.
    """
    return LavinCLI.build(args=args, run=run)


def _usage() -> str:
    lines = ["usage: lavinkit <command> [options]", "", "training commands (LightningCLI, subclass mode):"]
    lines += [f"  {name:<10} lightning `{name}` with --config recipe.yaml" for name in TRAINER_COMMANDS]
    lines += ["", "tools:"]
    lines += [f"  {name:<10} {desc}" for name, desc in TOOL_COMMANDS.items()]
    lines += ["", "Run `lavinkit <command> --help` for the options of a command."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lavinkit`` console script."""
    from_sys = argv is None
    argv = list(sys.argv[1:] if from_sys else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command in ("-V", "--version"):
        from lavinkit import __version__

        print(f"lavinkit {__version__}")
        return 0
    if command in TRAINER_COMMANDS:
        # LightningCLI reads sys.argv itself; explicit args are for calls from Python.
        LavinCLI.build(args=None if from_sys else [command, *rest], run=True)
        return 0
    if command in TOOL_COMMANDS:
        module = importlib.import_module(f"lavinkit.commands.{command}")
        return int(module.main(rest) or 0)
    print(f"lavinkit: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
