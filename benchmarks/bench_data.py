"""Data loading benchmark; same as ``lavinkit bench data [options]`` (see ``--help``)."""

import sys

from lavinkit.bench.data import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
