"""ST-VAE vs diffusers AutoencoderKLCogVideoX on CPU; same as ``lavinkit bench stvae`` (arguments passed on)."""

import sys

from lavinkit.bench.stvae import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
