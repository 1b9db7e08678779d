"""Pair shards, in-context grouping and DataModules.

Names are imported lazily (``lavinkit.data.ImagePairDataModule`` imports Lightning only when used).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    # sample schema and demo data
    "decode_pair": "lavinkit.data.schema",
    "make_sample": "lavinkit.data.schema",
    "SampleError": "lavinkit.data.schema",
    "build_demo": "lavinkit.data.demo",
    # pipeline stages and in-context grouping
    "PairStream": "lavinkit.data.pipeline",
    "Source": "lavinkit.data.pipeline",
    "PixelDecoder": "lavinkit.data.pipeline",
    "LatentDecoder": "lavinkit.data.pipeline",
    "DataStreamError": "lavinkit.data.schema",
    "resolve_urls": "lavinkit.data.shards",
    "collate_examples": "lavinkit.data.pipeline",
    "TaskGrouper": "lavinkit.data.incontext",
    "parse_num_context": "lavinkit.data.incontext",
    # Lightning DataModules
    "ImagePairDataModule": "lavinkit.data.datamodule",
    "VideoPairDataModule": "lavinkit.data.datamodule",
    "MixtureDataModule": "lavinkit.data.datamodule",
    "LatentPairDataModule": "lavinkit.data.datamodule",
    "LatentMixtureDataModule": "lavinkit.data.datamodule",
    "SkippedSamplesLogger": "lavinkit.data.datamodule",
    "StreamLoader": "lavinkit.data.datamodule",
    "PairDataModule": "lavinkit.data.datamodule",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from lavinkit.data.datamodule import (  # noqa: F401
        ImagePairDataModule,
        LatentMixtureDataModule,
        LatentPairDataModule,
        MixtureDataModule,
        SkippedSamplesLogger,
        StreamLoader,
        VideoPairDataModule,
    )
    from lavinkit.data.demo import build_demo  # noqa: F401
    from lavinkit.data.incontext import TaskGrouper, parse_num_context  # noqa: F401
    from lavinkit.data.pipeline import (  # noqa: F401
        DataStreamError,
        LatentDecoder,
        PairStream,
        PixelDecoder,
        Source,
        collate_examples,
    )
    from lavinkit.data.schema import SampleError, decode_pair, make_sample  # noqa: F401
    from lavinkit.data.shards import resolve_urls  # noqa: F401


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lavinkit.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
