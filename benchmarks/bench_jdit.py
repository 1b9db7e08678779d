"""J-DiT benchmark script: same as ``lavinkit bench jdit`` (see lavinkit/bench/jdit.py for options).

    python benchmarks/bench_jdit.py --hidden 384 --depth 4 --heads 8 --latent 16 --context_frames 3 --json out.json
"""

import sys

from lavinkit.bench.jdit import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
