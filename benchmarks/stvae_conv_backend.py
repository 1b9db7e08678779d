"""ST-VAE at batch 1 on CPU with the kit's oneDNN routing of single-clip convs off and on, side by side.

"off" restores torch's own backend choice (``slow_conv3d`` for small batch-1 convs); both run in one process,
calls interleaved, and the process CPU time per call is reported (median, p10, p90): the steady figure on a
shared machine. Cases: encode + decode of a ``--frames``-frame clip, decode of ``--long-frames`` frames whole and
in chunks of 8 frames.

    python benchmarks/stvae_conv_backend.py --preset tiny --threads 1 --repeats 7
"""

import argparse
import statistics
import time

import torch

import lavinkit.nn.conv3d as conv3d_module
from lavinkit.models.stvae import STVAE, STVAEConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--long-frames", type=int, default=65)
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    routed = conv3d_module._single_clip_on_onednn
    state = {"on": True}
    conv3d_module._single_clip_on_onednn = lambda x, w: state["on"] and routed(x, w)

    vae = STVAE(STVAEConfig.from_name(args.preset)).eval()
    g = torch.Generator().manual_seed(0)
    clip = torch.rand(1, 3, args.frames, args.size, args.size, generator=g) * 2 - 1
    latent = torch.randn(1, vae.config.latent_channels, 1 + (args.long_frames - 1) // 4, args.size // 8,
                         args.size // 8, generator=g)

    def chunked_decode():
        vae.enable_chunking(8)
        try:
            return vae.decode(latent)
        finally:
            vae.disable_chunking()

    cases = {f"encode+decode {args.frames}x{args.size}": lambda: vae.decode(vae.encode(clip).mean),
             f"decode {args.long_frames} frames": lambda: vae.decode(latent),
             f"decode {args.long_frames} frames, chunks of 8": chunked_decode}
    times: dict[tuple[str, bool], list[float]] = {}
    with torch.inference_mode():
        for name, fn in cases.items():
            state["on"] = False
            before = fn()
            state["on"] = True
            print(f"{name}: max |on - off| = {(fn() - before).abs().max().item():.2e}", flush=True)
        for i in range(args.repeats):
            for name, fn in cases.items():
                for on in (True, False) if i % 2 == 0 else (False, True):
                    state["on"] = on
                    start = time.process_time()
                    fn()
                    times.setdefault((name, on), []).append(time.process_time() - start)
    for name in cases:
        off, on = times[(name, False)], times[(name, True)]
        q = {k: statistics.quantiles(v, n=10, method="inclusive") for k, v in (("off", off), ("on", on))}
        print(f"{name}: CPU s off {statistics.median(off):.3f} [{q['off'][0]:.3f}-{q['off'][-1]:.3f}], "
              f"on {statistics.median(on):.3f} [{q['on'][0]:.3f}-{q['on'][-1]:.3f}], "
              f"speed-up {statistics.median(off) / statistics.median(on):.2f}x")


if __name__ == "__main__":
    main()
