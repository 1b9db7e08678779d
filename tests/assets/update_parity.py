"""Refresh ``tests/assets/parity`` from a folder of official reference tensors.

The reference tensors are produced by the official LaVin-DiT code (see ``parity/manifest.json``: the source
commit, the exact calls and the tolerances); lavinkit cannot regenerate them itself. This copies every file the
manifest lists (and the manifest) from ``SOURCE`` and checks that each safetensors file holds the tensors the
manifest describes, with the described shapes.

    python tests/assets/update_parity.py ../shared/parity
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent / "parity"


def check(folder: Path) -> list[str]:
    """Problems found in ``folder`` against its manifest (empty when consistent)."""
    from safetensors import safe_open

    manifest = json.loads((folder / "manifest.json").read_text())
    problems = []
    for name, entry in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: listed in the manifest but missing")
            continue
        if not name.endswith(".safetensors") or "tensors" not in entry:
            continue
        with safe_open(str(path), framework="pt") as f:
            for tensor, spec in entry["tensors"].items():
                if tensor not in f.keys():
                    problems.append(f"{name}: tensor {tensor!r} missing")
                elif list(f.get_slice(tensor).get_shape()) != spec["shape"]:
                    problems.append(f"{name}: tensor {tensor!r} has shape {f.get_slice(tensor).get_shape()}, "
                                    f"manifest says {spec['shape']}")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    source = Path(argv[0])
    if not (source / "manifest.json").is_file():
        print(f"{source}: no manifest.json", file=sys.stderr)
        return 2
    problems = check(source)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    HERE.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((source / "manifest.json").read_text())
    for name in ["manifest.json", *manifest["files"]]:
        shutil.copyfile(source / name, HERE / name)
    print(f"copied {len(manifest['files']) + 1} files to {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
