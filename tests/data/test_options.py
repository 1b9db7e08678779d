"""The DataModules share one documented options base: every constructor option shows text in ``--data.help``."""

from __future__ import annotations

import inspect
import re

import pytest
from jsonargparse import ArgumentParser

import lavinkit.data.datamodule as dm

MODULES = ["ImagePairDataModule", "VideoPairDataModule", "MixtureDataModule", "LatentPairDataModule",
           "LatentMixtureDataModule"]


@pytest.mark.parametrize("name", MODULES)
def test_every_option_is_documented(name):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(getattr(dm, name), "data")
    text = parser.format_help()
    options = set()
    for klass in getattr(dm, name).__mro__:
        if issubclass(klass, dm.PairDataModule):
            options |= {p for p in inspect.signature(klass.__init__).parameters if p not in ("self", "kwargs")}
    if name.startswith("Latent"):
        options -= {"size", "frames"}
    for option in options:
        m = re.search(rf"\n\s+--data\.{option} \S+(?:, --data\.{option}\+ \S+)?\s+(.*?)\(type:", text, re.DOTALL)
        assert m is not None, f"{name}: --data.{option} missing from the help"
        assert m.group(1).strip(), f"{name}: --data.{option} has no text"
    if name == "VideoPairDataModule":
        flat = " ".join(text.split())
        assert re.search(r"--data\.batch_size BATCH_SIZE [^\[]*?\(type: int, default: 2\)", flat)
    if name.startswith("Latent"):
        assert "--data.size " not in text
