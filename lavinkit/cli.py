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
import os
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


# modules whose classes resolve by their short names (``--model JDiTModule``, ``class_path: EMA``): jsonargparse
# finds subclasses among the imported classes
SHORT_NAME_MODULES = (
    "lavinkit.lit",
    "lavinkit.lit.callbacks",
    "lavinkit.data.datamodule",
    "lavinkit.flow",
    "lavinkit.losses",
    "lavinkit.models.stvae.discriminator",
)

# errors that a wrong path or option value raises; the messages name the file, key or option at fault
USAGE_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, ValueError, KeyError)


def logger_save_dir(default_root_dir: str | None) -> str:
    """The loggers' ``save_dir`` for a run whose ``trainer.default_root_dir`` is ``default_root_dir`` (the folder
    itself; the working directory when unset, as Lightning does)."""
    return os.getcwd() if default_root_dir is None else str(default_root_dir)


class LavinCLI:
    """Factory for the LightningCLI used by the training commands (kept lazy: importing Lightning is slow).

    Optimizers come only from the modules' constructors (``auto_configure_optimizers=False``): a command-line
    ``--optimizer`` cannot silently replace the GAN's two optimizers, it is an unknown option.

    ``trainer.default_root_dir`` is the one output folder of a run: it is linked to the ``save_dir`` of every
    logger the recipe lists (``trainer.logger.init_args.save_dir`` is set from it, not given), and a
    ``ModelCheckpoint`` without ``dirpath`` saves under the first logger's folder, Lightning's default. A recipe
    whose logger has ``name: ""`` and ``version: ""`` therefore writes its logs to ``default_root_dir`` and its
    checkpoints to ``default_root_dir/checkpoints``, and ``--trainer.default_root_dir X`` moves both.
    """

    @staticmethod
    def build(args: Sequence[str] | None = None, run: bool = True, instantiate: bool = True):
        """Build (and by default run) the LightningCLI.

        Args:
            args: command-line arguments without the program name; ``None`` reads ``sys.argv``.
            run: ``False`` only parses and instantiates (used by notebooks and recipe tests).
            instantiate: ``False`` (with ``run=False``) only parses: ``.config`` holds the recipe, nothing is built
                (recipes for GPU strategies or large models check on any machine).
        """
        if run and not instantiate:
            raise ValueError("LavinCLI.build: run=True needs instantiate=True")
        from lightning.pytorch import LightningDataModule, LightningModule
        from lightning.pytorch.cli import LightningCLI

        from lavinkit.lit.precision import CpuBf16Mode, resolve_cpu_precision

        class LavinLightningCLI(LightningCLI):
            def add_arguments_to_parser(self, parser) -> None:
                parser.link_arguments("trainer.default_root_dir", "trainer.logger.init_args.save_dir",
                                      compute_fn=logger_save_dir)
                parser.add_argument("--cpu_bf16", type=CpuBf16Mode, default="auto",
                                    help="auto: a bf16 trainer.precision on a CPU that emulates bfloat16 (far slower "
                                         "than float32, e.g. AVX2-only) trains with 32-true; always: keep it")

            def before_instantiate_classes(self) -> None:
                if not instantiate:  # parse-only: the recipe as written
                    return
                config = self.config[self.subcommand] if self.subcommand else self.config
                precision, reason = resolve_cpu_precision(config.trainer.precision, config.trainer.accelerator,
                                                          config.cpu_bf16)
                if reason is not None:
                    from lightning.pytorch.utilities import rank_zero_warn

                    rank_zero_warn(reason)
                    config.trainer.precision = precision

            def instantiate_classes(self) -> None:
                if instantiate:
                    super().instantiate_classes()

        for name in SHORT_NAME_MODULES:
            importlib.import_module(name)
        return LavinLightningCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            run=run,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            # checkpoints replace last.ckpt atomically, also when the folder is on another filesystem than TMPDIR
            trainer_defaults={"plugins": [{"class_path": "lavinkit.lit.checkpoint_io.AtomicCheckpointIO"}]},
        )


def build_cli(args: Sequence[str] | None = None, run: bool = False, instantiate: bool = True):
    """Parse a training command line (e.g. ``["fit", "--config", "recipe.yaml"]``) the way ``lavinkit`` does.

    With ``run=False`` (the default here) the returned CLI exposes ``.model``, ``.datamodule`` and
    ``.trainer`` fully built from the recipe, which is how notebooks reuse recipes; ``instantiate=False`` only
    parses (``.config``).
    """
    return LavinCLI.build(args=args, run=run, instantiate=instantiate)


def _usage() -> str:
    lines = ["usage: lavinkit <command> [options]", "", "training commands (LightningCLI, subclass mode):"]
    lines += [f"  {name:<10} lightning `{name}` with --config recipe.yaml" for name in TRAINER_COMMANDS]
    lines += ["", "tools:"]
    lines += [f"  {name:<10} {desc}" for name, desc in TOOL_COMMANDS.items()]
    lines += ["", "Run `lavinkit <command> --help` for the options of a command."]
    return "\n".join(lines)


def _fail(command: str, err: BaseException, code: int) -> int:
    """Print ``err`` as one line (``LAVINKIT_DEBUG=1`` re-raises it with its traceback) and return ``code``."""
    if os.environ.get("LAVINKIT_DEBUG"):
        raise err
    message = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, KeyError):
        message = f"missing key {message}"
    print(f"lavinkit {command}: error: {message}", file=sys.stderr)
    return code


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None or isinstance(exc.code, int):
        return int(exc.code or 0)
    print(exc.code, file=sys.stderr)
    return 2


def run_command(command: str, call, *, catch_all: bool = True) -> int:
    """Run a command's entry point the same way for every command: usage errors (``SystemExit`` of the
    parser, a missing path, a bad option value) end with one line naming the file or option and exit code 2;
    with ``catch_all`` any other failure prints one line and exits 1 (``LAVINKIT_DEBUG=1`` shows the traceback).
    Training commands pass ``catch_all=False``: a failure during training keeps its traceback."""
    try:
        return int(call() or 0)
    except SystemExit as exc:
        if not exc.code:
            raise  # --help / --print_config: a normal exit
        return _exit_code(exc)
    except KeyboardInterrupt:
        raise
    except USAGE_ERRORS as err:
        return _fail(command, err, 2)
    except Exception as err:  # noqa: BLE001 - a tool never ends in a traceback unless asked to
        if not catch_all:
            raise
        return _fail(command, err, 1)


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

        def train() -> int:
            # LightningCLI reads sys.argv itself; explicit args are for calls from Python.
            LavinCLI.build(args=None if from_sys else [command, *rest], run=True)
            return 0  # the run finished; failures raise

        return run_command(command, train, catch_all=False)
    if command in TOOL_COMMANDS:
        module = importlib.import_module(f"lavinkit.commands.{command}")
        return run_command(command, lambda: module.main(rest))
    print(f"lavinkit: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
