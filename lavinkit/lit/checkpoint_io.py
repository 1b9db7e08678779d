"""Atomic checkpoint files for Lightning: a kill or a full disk during a save never destroys ``last.ckpt``.

Lightning's :class:`~lightning.pytorch.plugins.io.TorchCheckpointIO` writes through an fsspec transaction whose
temporary file lives in ``TMPDIR``; when the checkpoint folder is on another filesystem (a cluster scratch
mount, a container volume) the commit is a copy that first truncates the destination, so a kill or ``ENOSPC``
during it leaves a 0-byte or truncated ``last.ckpt`` and no good one. :class:`AtomicCheckpointIO` writes local
checkpoints with :mod:`lavinkit.fileio` instead: a temporary next to the destination, fsync, ``os.replace``,
fsync of the folder. Remote urls (``s3://``, ``gs://``, ...) keep Lightning's behaviour.

``lavinkit fit|validate|test|predict`` install it by default (a recipe that lists its own ``trainer.plugins``
adds ``lavinkit.lit.checkpoint_io.AtomicCheckpointIO`` itself). With your own Trainer::

    from lavinkit.lit.checkpoint_io import AtomicCheckpointIO
    trainer = Trainer(plugins=[AtomicCheckpointIO()], callbacks=[ModelCheckpoint(save_last=True)])

What is covered: every single-file save made through the strategy's ``checkpoint_io`` — ``ModelCheckpoint``'s
top-k and ``last.ckpt`` files (``save_last=True`` saves ``last.ckpt`` as its own file through this plugin),
``trainer.save_checkpoint``, and the ``state_dict_type="full"`` saves of ``FSDPStrategy`` and
``ModelParallelStrategy`` (rank 0 writes one file). Not covered: ``save_last="link"`` (Lightning removes the old
link and creates a new one, not atomically; recipes use ``save_last: true``), and sharded checkpoints that are
folders (``FSDPStrategy(state_dict_type="sharded")``, ``ModelParallelStrategy`` with distributed checkpoints,
DeepSpeed): those strategies write every rank's files in place with ``torch.distributed.checkpoint`` or DeepSpeed
and do not use this plugin. For them keep ``save_top_k >= 2`` with distinct file names, so that a save cut short
leaves the previous complete folder.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from fsspec.utils import get_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lavinkit.fileio import atomic_open


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` whose local saves replace the destination atomically (see the module docstring).

    ``torch.save`` streams straight into the temporary file (Lightning serialises to memory first), so a save
    needs no extra host memory; loading and removing checkpoints are Lightning's.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        """Save ``checkpoint`` to ``path``: local paths atomically, remote urls through fsspec as Lightning does.

        Raises:
            TypeError: ``storage_options`` is given (as ``TorchCheckpointIO``).
        """
        if get_protocol(str(path)) != "file":
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        if storage_options is not None:
            raise TypeError(
                f"`Trainer.save_checkpoint(..., storage_options=...)` is not supported by {type(self).__name__}"
            )
        path = str(path)
        if path.startswith("file://"):
            path = path[len("file://"):]
        with atomic_open(path) as f:
            torch.save(checkpoint, f)
