"""The copied parity assets are complete and match their manifest."""

import importlib.util
from pathlib import Path

ASSETS = Path(__file__).parent / "assets"


def test_parity_assets_match_manifest():
    spec = importlib.util.spec_from_file_location("update_parity", ASSETS / "update_parity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.check(ASSETS / "parity") == []
