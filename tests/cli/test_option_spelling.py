"""One spelling for every tool's options: ``--two-words`` (the underscore spelling stays as an alias)."""

from __future__ import annotations

import re

import pytest

from lavinkit.cli import TOOL_COMMANDS, main
from lavinkit.commands.bench import TARGETS

COMMANDS = [[c] for c in TOOL_COMMANDS if c not in ("data", "bench")]
COMMANDS += [["data", sub] for sub in ("demo", "pack", "validate", "inspect")]
COMMANDS += [["bench", target] for target in TARGETS]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_option_has_a_dash_spelling(command, capsys):
    try:
        code = main([*command, "--help"])
    except SystemExit as exc:  # the parser's normal exit after printing help
        code = exc.code
    assert not code
    options = set(re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9_-]*", capsys.readouterr().out))
    assert len(options) > 3, f"{command}: the help lists no options"
    underscored = {o for o in options if "_" in o and o not in ("--print_config",)}  # jsonargparse's own flag
    assert all(o.replace("_", "-") in options for o in underscored), \
        sorted(o for o in underscored if o.replace("_", "-") not in options)
