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
        if klass.__module__ == dm.__name__ and "__init__" in vars(klass):  # the kit's bases and mixins
            options |= {p for p in inspect.signature(klass.__init__).parameters if p not in ("self", "args", "kwargs")}
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


def test_latent_modules_take_the_pixel_modules_url_arguments():
    """Positional or named, the shard urls mean what they mean for ``ImagePairDataModule`` / ``MixtureDataModule``."""
    single = dm.LatentPairDataModule("t.tar", "v.tar", vae="vae-a")
    assert (single.train_urls, single.val_urls, single.test_urls) == ("t.tar", "v.tar", None)
    assert single.decoder.vae == "vae-a" and single.latents
    mixture = dm.LatentMixtureDataModule("it.tar", "vt.tar", "iv.tar", video_test_urls="vx.tar", latent_scale=2.0)
    assert mixture.urls == {"image": {"train": "it.tar", "val": "iv.tar", "test": None},
                            "video": {"train": "vt.tar", "val": None, "test": "vx.tar"}}
    assert mixture.decoder.scale == 2.0 and mixture.size is None and mixture.frames is None
