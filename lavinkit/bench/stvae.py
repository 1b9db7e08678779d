"""``lavinkit bench stvae``: ST-VAE encode/decode throughput and peak memory on CPU, side by side with
diffusers' ``AutoencoderKLCogVideoX`` at a matched configuration, plus long-clip decode memory with and
without temporal chunking (and its decode time, chunked vs whole clip).

Memory is measured in a fresh subprocess per case and implementation (no pollution by earlier cases). Two peak-memory
figures: ``rss`` = growth of the process's peak RSS (``resource.getrusage().ru_maxrss``) during the calls over
the RSS once the model and inputs exist (includes allocator and oneDNN scratch, a little noisy), and
``tensors`` = peak bytes of live tensor storages created during one call, tracked exactly by a
``TorchDispatchMode`` (torch CPU allocations are invisible to ``tracemalloc``). Throughput is frames per second
from the median of ``--repeats`` timed calls after one warm-up call; the implementations' calls are interleaved
in one process so that load changes on a shared machine affect them alike.

diffusers' VAE always processes frames in batches carrying a conv cache (8 frames per encoder call, 2 latent
frames per decoder call); ``ours (chunk 8)`` uses exactly the same chunk boundaries, ``ours`` the whole clip.

    lavinkit bench stvae                       # small preset, 2 threads, 5 repeats
    lavinkit bench stvae --preset tiny --repeats 3 --json out.json
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

IMPLS = ("ours", "ours-chunk8", "diffusers")


class PeakTensorMemory:
    """Context manager: peak bytes of tensor storages allocated by ops run inside it and still alive."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                tracker._track(out)
                return out

        self.current = self.peak = 0
        self._live: set[int] = set()
        self._mode = _Mode()

    def _release(self, key: int, nbytes: int) -> None:
        self.current -= nbytes
        self._live.discard(key)

    def _track(self, out) -> None:
        import weakref

        import torch
        from torch.utils._pytree import tree_flatten

        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in self._live:
                continue
            self._live.add(key)
            self.current += nbytes
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._release, key, nbytes)

    def __enter__(self) -> PeakTensorMemory:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _build(impl: str, preset: str):
    import torch

    from lavinkit.models.stvae import STVAE, STVAEConfig

    cfg = STVAEConfig.from_name(preset)
    torch.manual_seed(0)
    if impl == "diffusers":
        from diffusers import AutoencoderKLCogVideoX

        model = AutoencoderKLCogVideoX(
            block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
            latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_num_groups, norm_eps=cfg.norm_eps,
            temporal_compression_ratio=cfg.temporal_compression,
        ).eval()
        return model, lambda x: model.encode(x).latent_dist.mean, lambda z: model.decode(z).sample
    model = STVAE(cfg).eval()
    if impl == "ours-chunk8":
        model.enable_chunking(8)  # diffusers' chunk boundaries (8 pixel frames = 2 latent frames)
    return model, lambda x: model.encode(x).mean, model.decode


def _input(case: dict[str, Any], latent_channels: int):
    import torch

    t, s = case["frames"], case["size"]
    g = torch.Generator().manual_seed(0)
    if case["op"] == "encode":
        return torch.rand(1, 3, t, s, s, generator=g) * 2 - 1
    return torch.randn(1, latent_channels, 1 + (t - 1) // 4, s // 8, s // 8, generator=g)


def worker_time(case: dict[str, Any]) -> dict[str, Any]:
    """Time every implementation of ``case["impls"]`` in this process, interleaving their calls so that load
    changes on a shared machine hit all of them alike. Returns medians per implementation."""
    import torch

    torch.set_num_threads(case["threads"])
    fns = {}
    for impl in case["impls"]:
        model, enc, dec = _build(impl, case["preset"])
        if impl == "ours-chunk8" and case.get("chunk_frames"):
            model.enable_chunking(case["chunk_frames"])
        inp = _input(case, model.config.latent_channels)
        fns[impl] = (enc if case["op"] == "encode" else dec, inp)
    times: dict[str, list[float]] = {impl: [] for impl in fns}
    with torch.inference_mode():
        for fn, inp in fns.values():
            fn(inp)  # warm-up
        for _ in range(case["repeats"]):
            for impl, (fn, inp) in fns.items():
                t0 = time.perf_counter()
                fn(inp)
                times[impl].append(time.perf_counter() - t0)
    return {impl: statistics.median(v) for impl, v in times.items()}


def worker_memory(case: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of one implementation (fresh process): RSS growth over one call and live-tensor peak."""
    import torch

    torch.set_num_threads(case["threads"])
    model, enc, dec = _build(case["impl"], case["preset"])
    inp = _input(case, model.config.latent_channels)
    fn = enc if case["op"] == "encode" else dec
    if case.get("chunk_frames"):
        model.enable_chunking(case["chunk_frames"])
    with torch.inference_mode():
        base = _rss_mb()
        fn(inp)
        rss = _rss_mb() - base
        with PeakTensorMemory() as tracked:
            fn(inp)
    return {**case, "peak_rss_delta_mb": rss, "peak_tensor_mb": tracked.peak / 2**20}


def _subprocess(mode: str, case: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "lavinkit.bench.stvae", mode, json.dumps(case)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(case["threads"])})
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit code {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _have_diffusers() -> bool:
    import importlib.util

    return importlib.util.find_spec("diffusers") is not None


def main(argv: list[str] | None = None) -> int:
    if argv and argv[0] in ("--worker-time", "--worker-memory"):
        fn = worker_time if argv[0] == "--worker-time" else worker_memory
        print(json.dumps(fn(json.loads(argv[1]))))
        return 0
    from jsonargparse import ArgumentParser

    p = ArgumentParser(prog="lavinkit bench stvae", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", action="config")
    p.add_argument("--preset", default="small", help="ST-VAE preset used for both implementations")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads per case")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per case (median reported)")
    p.add_argument("--clip", type=list[int], default=[17, 64], help="clip case: frames, size")
    p.add_argument("--image", type=int, default=256, help="image case: size (1 frame)")
    p.add_argument("--long-frames", "--long_frames", type=list[int], default=[17, 33, 65], help="long-clip decode frame counts")
    p.add_argument("--long-size", "--long_size", type=int, default=128, help="long-clip size")
    p.add_argument("--long-preset", "--long_preset", default="tiny", help="preset for the long-clip decode memory cases")
    p.add_argument("--chunk-frames", "--chunk_frames", type=int, default=8, help="chunk size (pixel frames) for the long-clip cases")
    p.add_argument("--skip-diffusers", "--skip_diffusers", type=bool, default=False, help="only measure lavinkit")
    p.add_argument("--skip-long", "--skip_long", type=bool, default=False, help="skip the long-clip memory cases")
    p.add_argument("--skip-speed", "--skip_speed", type=bool, default=False, help="skip the side-by-side speed/memory cases")
    p.add_argument("--json", default=None, help="also write all results to this file")
    args = p.parse_args(argv or [])

    impls = [i for i in IMPLS if i != "diffusers" or not args.skip_diffusers]
    if "diffusers" in impls and not _have_diffusers():
        print("diffusers is not installed (pip install 'lavinkit[bench]'); measuring lavinkit only", file=sys.stderr)
        impls.remove("diffusers")
    common = dict(preset=args.preset, threads=args.threads, repeats=args.repeats)
    shapes = [] if args.skip_speed else [("clip", args.clip[0], args.clip[1]), ("image", 1, args.image)]
    results: list[dict[str, Any]] = []
    print(f"ST-VAE preset {args.preset!r}, {args.threads} threads, median of {args.repeats}; "
          "rss = peak RSS growth, tensors = peak live tensor bytes")
    print(f"{'case':<22}{'impl':<13}{'frames/s':>9}{'median s':>9}{'rss MB':>8}{'tensors MB':>11}"
          f"{'speed vs diffusers':>20}")
    for label, frames, size in shapes:
        for op in ("encode", "decode"):
            case = {**common, "op": op, "frames": frames, "size": size}
            medians = _subprocess("--worker-time", {**case, "impls": impls})
            ref = medians.get("diffusers")
            name = f"{op} {label} {frames}x{size}"
            for impl in impls:
                mem = _subprocess("--worker-memory", {**case, "impl": impl})
                if "error" in medians or "error" in mem:
                    print(f"{name:<22}{impl:<13} error: {medians.get('error') or mem.get('error')}")
                    results.append({**case, "impl": impl, "error": medians.get("error") or mem.get("error")})
                    continue
                med = medians[impl]
                ratio = f"{ref / med:.2f}x" if ref and impl != "diffusers" else ""
                row = {**case, "impl": impl, "median_s": med, "frames_per_s": frames / med,
                       "peak_rss_delta_mb": mem["peak_rss_delta_mb"], "peak_tensor_mb": mem["peak_tensor_mb"]}
                results.append(row)
                print(f"{name:<22}{impl:<13}{row['frames_per_s']:>9.2f}{med:>9.3f}"
                      f"{row['peak_rss_delta_mb']:>8.1f}{row['peak_tensor_mb']:>11.1f}{ratio:>20}")
    if not args.skip_long:
        print(f"\nlong-clip decode, preset {args.long_preset!r}, {args.long_size}x{args.long_size}: "
              f"peak MB (rss, tensors) and median s without / with chunking ({args.chunk_frames} frames)")
        for frames in args.long_frames:
            row = []
            base = {**common, "preset": args.long_preset, "op": "decode", "frames": frames, "size": args.long_size}
            # both in one process, calls interleaved: the chunked/unchunked time ratio is load-independent
            times = _subprocess("--worker-time", {**base, "impls": ["ours", "ours-chunk8"], "chunk_frames": args.chunk_frames})
            for impl, chunk in (("ours", None), ("ours-chunk8", args.chunk_frames)):
                case = {**base, "impl": "ours", "chunk_frames": chunk}
                r = _subprocess("--worker-memory", case)
                results.append({**case, **r, "median_s": times.get(impl)})
                row.append("error" if "error" in r or "error" in times else
                           f"{r['peak_rss_delta_mb']:.0f}, {r['peak_tensor_mb']:.0f}, {times[impl]:.3f} s")
            ratio = "" if "error" in times else f"  chunked / unchunked time {times['ours-chunk8'] / times['ours']:.2f}"
            print(f"  {frames:>3} frames: {row[0]:>20} / {row[1]:>20}{ratio}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
