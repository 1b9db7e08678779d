"""Atomic writes: a kill or a full disk during a save leaves the previous file (or nothing), never a partial file
under a final name; failed writers exit non-zero naming what is incomplete, with no ``index.json``.

Kills are real SIGKILLs of a writing process at random moments; the full disk is a real OS write failure
(``RLIMIT_FSIZE`` makes a write past N bytes fail with ``EFBIG``, the same path as ``ENOSPC``), set in a child
process only. The checkpoint tests run on the disk under ``tmp_path`` and on a tmpfs (``/dev/shm``) with ``TMPDIR``
on the other filesystem, the setting in which Lightning's own save truncates ``last.ckpt`` before copying.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lavinkit.data.shards import INDEX_NAME, PairShardWriter, ShardWriteError, read_index, write_index
from lavinkit.fileio import AtomicWriteError, atomic_open, atomic_path, atomic_write_text, remove_orphans, temporary_name
from lavinkit.lit.checkpoint_io import AtomicCheckpointIO

ROOT = Path(__file__).resolve().parents[1]
SHM = Path("/dev/shm")


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


@pytest.fixture
def shm_dir():
    """A folder on a tmpfs (skips where /dev/shm is missing or read-only)."""
    if not SHM.is_dir() or not os.access(SHM, os.W_OK):
        pytest.skip("/dev/shm is not a writable tmpfs here")
    folder = Path(tempfile.mkdtemp(prefix="lavinkit-atomic-", dir=SHM))
    yield folder
    for p in sorted(folder.rglob("*"), reverse=True):
        p.unlink() if not p.is_dir() else p.rmdir()
    folder.rmdir()


@pytest.fixture(params=["disk", "tmpfs"])
def two_filesystems(request, tmp_path):
    """``(checkpoint folder, TMPDIR)`` on different filesystems, in both orders."""
    shm = request.getfixturevalue("shm_dir")
    (tmp_path / "tmp").mkdir()
    return (tmp_path / "ckpt", shm) if request.param == "disk" else (shm / "ckpt", tmp_path / "tmp")


def _run_child(fn, *, file_size_limit: int | None = None, tmpdir: Path | None = None) -> tuple[int, str]:
    """Run ``fn()`` in a forked child (optionally with a file size limit / TMPDIR); returns (exit code, stderr).

    Only for children that do file I/O and ``torch.save``: torch ops that start intra-op (OpenMP) threads can
    deadlock after a fork."""
    err_file = tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 0
        try:
            os.dup2(err_file.fileno(), 2)
            if tmpdir is not None:
                os.environ["TMPDIR"] = str(tmpdir)
                tempfile.tempdir = None
            if file_size_limit is not None:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing
                resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
            code = int(fn() or 0)
        except BaseException as err:  # noqa: BLE001 - reported to the parent through stderr and the exit code
            os.write(2, f"{type(err).__name__}: {err}\n".encode())
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    err_file.seek(0)
    return os.waitstatus_to_exitcode(status), err_file.read().decode(errors="replace")


def _checkpoint(step: int, mb: int = 8) -> dict:
    """A Lightning-like checkpoint whose every tensor value is ``step`` (so a mix of two saves is detectable)."""
    n = mb * (1 << 20) // 4 // 2
    # filled by numpy: torch's parallel fill would start OpenMP threads, which deadlock in a forked child
    w, b = (torch.from_numpy(np.full(n, step, np.float32)) for _ in range(2))
    return {"global_step": step, "state_dict": {"w": w, "b": b},
            "optimizer_states": [{"state": {0: {"step": torch.tensor(float(step))}}}]}


def _check_loads(path: Path) -> int:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    step = ckpt["global_step"]
    assert torch.all(ckpt["state_dict"]["w"] == step) and torch.all(ckpt["state_dict"]["b"] == step)
    return step


# ------------------------------------------------------------------------------------------------ helpers


def test_atomic_open_replaces_only_on_success(tmp_path):
    target = tmp_path / "sub" / "weights.bin"
    with atomic_open(target) as f:
        f.write(b"first")
    assert target.read_bytes() == b"first"
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()  # like a file opened normally
    for exc, raised in ((RuntimeError("boom"), AtomicWriteError), (KeyboardInterrupt(), KeyboardInterrupt)):
        with pytest.raises(raised):
            with atomic_open(target) as f:
                f.write(b"second, cut short")
                raise exc
        assert target.read_bytes() == b"first"
        assert _temporaries(target.parent) == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_path_requires_the_file_and_cleans_up(tmp_path):
    target = tmp_path / "w.safetensors"
    with pytest.raises(AtomicWriteError, match="w.safetensors: writing failed .*no file was created"):
        with atomic_path(target):
            pass  # the writer never created the temporary
    assert not target.exists() and _temporaries(tmp_path) == []


def test_orphans_of_dead_writers_are_removed_and_nothing_else(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target = tmp_path / "last.ckpt"
    orphan = tmp_path / f".last.ckpt.{dead.pid}-0123abcd.tmp"
    live = tmp_path / f".last.ckpt.{os.getppid()}-89abcdef.tmp"  # a running process: maybe writing right now
    other = tmp_path / f".epoch=1.ckpt.{dead.pid}-0123abcd.tmp"  # another target's temporary
    user = [tmp_path / ".last.ckpt.notes.tmp", tmp_path / "last.ckpt.tmp", tmp_path / "my.tmp"]
    for p in [orphan, live, other, *user]:
        p.write_bytes(b"x")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert not orphan.exists()
    assert live.exists() and other.exists() and all(p.exists() for p in user)
    # a pattern covers the shards of one prefix
    shard_orphan = tmp_path / f".images-000003.tar.{dead.pid}-00000000.tmp"
    shard_orphan.write_bytes(b"x")
    assert remove_orphans(tmp_path, "images-*.tar") == [shard_orphan]
    assert temporary_name(target).parent == tmp_path


# ------------------------------------------------------------------------------------------------ checkpoints


def test_kill_during_checkpoint_saves_never_loses_last_ckpt(two_filesystems):
    """SIGKILL a process that saves ``last.ckpt`` through AtomicCheckpointIO, at random moments within a save;
    ``last.ckpt`` always loads whole (one save's values), and the next save removes the orphaned temporary."""
    folder, tmpdir = two_filesystems
    target = folder / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint(_checkpoint(0), target)
    rng = random.Random(0)
    cut_mid_save = kills = 0
    while kills < 4 or (cut_mid_save < 2 and kills < 16):  # a kill can land between two saves: retry a few
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: report the start and end of every save, forever
            os.close(read_fd)
            os.environ["TMPDIR"] = str(tmpdir)
            tempfile.tempdir = None
            step = 1
            while True:
                checkpoint = _checkpoint(step, mb=16)
                t0 = time.perf_counter()
                os.write(write_fd, f"start {step}\n".encode())
                io.save_checkpoint(checkpoint, target)
                os.write(write_fd, f"done {step} {time.perf_counter() - t0:.6f}\n".encode())
                step += 1
        os.close(write_fd)
        lines = os.fdopen(read_fd, "r", buffering=1)
        duration = 0.0
        for line in lines:  # one full save measured, then kill during the next one
            word, step, *rest = line.split()
            if word == "done":
                duration = float(rest[0])
            elif word == "start" and duration:
                break
        time.sleep(rng.uniform(0.0, 0.8 * duration))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        for line in lines:  # the child may have gone further than the parent had read
            word, step, *_ = line.split()
        lines.close()
        kills += 1
        cut_mid_save += any(f".{pid}-" in name for name in _temporaries(folder))
        assert _check_loads(target) in (int(step) - 1, int(step))  # the last save begun, or the one before
    assert cut_mid_save >= 2, f"only {cut_mid_save} of {kills} kills landed inside a save"
    io.save_checkpoint(_checkpoint(99), target)
    assert _check_loads(target) == 99 and _temporaries(folder) == []  # the orphans are gone
    assert sorted(os.listdir(folder)) == ["last.ckpt"]


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(two_filesystems):
    folder, tmpdir = two_filesystems
    target = folder / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint(_checkpoint(1, mb=2), target)
    code, err = _run_child(lambda: io.save_checkpoint(_checkpoint(2, mb=2), target),
                           file_size_limit=1 << 20, tmpdir=tmpdir)
    assert code == 1 and f"{target}: writing failed" in err and "the previous file is unchanged" in err, err
    assert _check_loads(target) == 1
    assert _temporaries(folder) == []


def test_model_checkpoint_saves_last_and_top_k_through_the_plugin(tmp_path):
    """Lightning's ModelCheckpoint (``save_last=True`` + top-k) writes every file through AtomicCheckpointIO."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.demos.boring_classes import BoringModel

    saved: list[str] = []

    class Recording(AtomicCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            saved.append(os.path.basename(path))
            super().save_checkpoint(checkpoint, path, storage_options)

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=2, monitor="step", mode="max",
                           every_n_train_steps=1)
    trainer = Trainer(max_steps=3, limit_val_batches=0, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[ckpt], plugins=[Recording()], accelerator="cpu")
    trainer.fit(BoringModel())
    assert saved.count("last.ckpt") == 3 and len(saved) == 6
    files = sorted(os.listdir(tmp_path / "ckpt"))
    assert "last.ckpt" in files and len(files) == 3  # last + the top 2; no temporaries
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 3


def test_checkpoint_io_is_the_default_of_lavinkit_fit(tmp_path, monkeypatch):
    from lavinkit.cli import build_cli

    monkeypatch.chdir(tmp_path)
    cli = build_cli(["--config", str(ROOT / "recipes" / "stvae" / "tiny_stage1.yaml"), "--trainer.logger", "false"],
                    run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_remote_urls_keep_lightnings_path(tmp_path):
    """``memory://`` (an fsspec filesystem that is not local) goes through Lightning's fsspec save."""
    import fsspec

    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 3}, "memory://lavinkit-atomic/last.ckpt")
    with fsspec.open("memory://lavinkit-atomic/last.ckpt", "rb") as f:
        assert torch.load(f, weights_only=True)["global_step"] == 3


# ------------------------------------------------------------------------------------------------ shards


def _noise_pair(rng, size: int) -> np.ndarray:
    return rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)  # noise: PNG cannot shrink it


def _write_task_folder(root: Path, sizes: list[int]) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = root / "noise"
    folder.mkdir(parents=True)
    for i, size in enumerate(sizes):
        for role in ("input", "target"):
            Image.fromarray(_noise_pair(rng, size)[0]).save(folder / f"p{i:02d}_{role}.png")


def _limit_file_size(limit: int):
    def apply():  # runs in the child before exec
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return apply


def _tar_members(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def test_shard_writer_removes_the_shard_being_written_on_error(tmp_path):
    from lavinkit.data.schema import make_sample

    rng = np.random.default_rng(0)
    (tmp_path / INDEX_NAME).write_text('{"shards": []}')  # a previous run's index: it no longer describes the folder
    writer = PairShardWriter(tmp_path, "images", maxcount=3)
    with pytest.raises(RuntimeError, match="input 5"):
        with writer:
            for i in range(7):
                if i == 5:
                    raise RuntimeError("input 5 is unreadable")
                img = _noise_pair(rng, 16)
                writer.write(make_sample(f"k{i}", "t", img, img))
    assert sorted(os.listdir(tmp_path)) == ["images-000000.tar"]  # complete shard kept; no partial, no index
    assert len(_tar_members(tmp_path / "images-000000.tar")) == 9
    assert list(writer.shards) == ["images-000000.tar"]


def _fails_on_the_second_shard(args: list[str], limit: int, out: Path, prefix: str) -> None:
    """Run ``lavinkit ARGS`` with writes beyond ``limit`` bytes per file failing (EFBIG): exit 1 with one line naming
    ``<prefix>-000001.tar`` as incomplete and no index, no traceback; only the complete first shard is left."""
    proc = subprocess.run([sys.executable, "-m", "lavinkit.cli", *args], capture_output=True, text=True,
                          preexec_fn=_limit_file_size(limit), cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert f"{prefix}-000001.tar" in last and "incomplete" in last and INDEX_NAME in last, last
    assert sorted(os.listdir(out)) == [f"{prefix}-000000.tar"]


def test_pack_on_a_full_disk_exits_nonzero_and_leaves_no_partial_shard(tmp_path):
    """``lavinkit data pack`` with a file size limit between the first shard (small pairs) and the second
    (large pairs): exit 1 naming the second shard, the first shard whole, no partial shard, no index."""
    _write_task_folder(tmp_path / "tasks", [16, 16, 64, 64])
    out = tmp_path / "out"
    limit = 40_000  # shard 0: 2 x 2 x 16x16 noise PNG (~8 KB); shard 1: 2 x 2 x 64x64 (~100 KB)

    _fails_on_the_second_shard(["data", "pack", "--task-folders", str(tmp_path / "tasks"), "--out", str(out),
                                "--maxcount", "2", "--progress", "false"], limit, out, "images")
    assert len(_tar_members(out / "images-000000.tar")) == 6  # 2 pairs x (input, target, json)
    # without the limit the same command completes and writes the index last
    from lavinkit.data.pack import pack_task_folders

    index = read_index(pack_task_folders(tmp_path / "tasks", out, maxcount=2))
    assert index["num_samples"] == 4 and sorted(os.listdir(out)) == ["images-000000.tar", "images-000001.tar", INDEX_NAME]


def test_encode_on_a_full_disk_exits_nonzero_and_leaves_no_partial_shard(tmp_path):
    """``lavinkit encode`` whose second latent shard (128x128 pairs) exceeds the file size limit: exit 1 naming
    ``latents-000001.tar``, the first shard (32x32 pairs) whole, no partial shard, no index."""
    from lavinkit.data.schema import make_sample
    from lavinkit.models.stvae import STVAE, STVAEConfig

    vae = tmp_path / "vae.safetensors"
    STVAE(STVAEConfig.from_name("tiny")).save_pretrained(vae)
    rng = np.random.default_rng(2)
    with PairShardWriter(tmp_path / "pairs", "images", maxcount=10) as writer:
        for i, size in enumerate([32, 32, 128, 128]):
            img = _noise_pair(rng, size)
            writer.write(make_sample(f"k{i}", "t", img, img))
    out = tmp_path / "latents"
    _fails_on_the_second_shard(["encode", "--data", str(tmp_path / "pairs"), "--out", str(out), "--vae", str(vae),
                                "--maxcount", "2", "--progress", "false"], 20_000, out, "latents")
    assert sorted(_tar_members(out / "latents-000000.tar")) == sorted(
        f"k{i}.{m}" for i in (0, 1) for m in ("input.npy", "json", "target.npy"))


def test_shard_write_error_names_the_shard(tmp_path):
    from lavinkit.data.schema import make_sample

    rng = np.random.default_rng(1)
    pairs = [_noise_pair(rng, 64) for _ in range(3)]

    def write():
        with PairShardWriter(tmp_path, "latents", maxcount=1) as writer:
            for i, img in enumerate(pairs):
                writer.write(make_sample(f"k{i}", "t", img, img))

    code, err = _run_child(write, file_size_limit=10_000)
    assert code == 1 and "ShardWriteError" in err and "latents-000000.tar" in err and "incomplete" in err, err
    assert os.listdir(tmp_path) == []
    assert issubclass(ShardWriteError, OSError)


def test_index_json_is_replaced_atomically(tmp_path):
    shards = [{"url": "a-000000.tar", "modality": "image", "samples": 2, "bytes": 10, "tasks": {"t": 2},
               "frames": [1], "sizes": [[16, 16]]}]
    write_index(tmp_path, shards)
    before = (tmp_path / INDEX_NAME).read_bytes()
    many = [dict(shards[0], url=f"a-{i:06d}.tar") for i in range(200)]
    code, err = _run_child(lambda: write_index(tmp_path, many), file_size_limit=len(before) + 100)
    assert code == 1, err
    assert (tmp_path / INDEX_NAME).read_bytes() == before and _temporaries(tmp_path) == []
    path = write_index(tmp_path, shards, extra={"format": "lavinkit-latents"})
    assert json.loads(path.read_text())["format"] == "lavinkit-latents"


# ------------------------------------------------------------------------------------------------ weights files


def test_weights_files_survive_a_failed_save(tmp_path):
    from lavinkit.commands.convert import _save_official
    from lavinkit.models.io import load_pretrained, save_pretrained

    small = {"w": torch.ones(4)}
    big = {"w": torch.zeros(1 << 18)}  # 1 MiB
    weights = save_pretrained(tmp_path / "w.safetensors", "jdit", {"n": 1}, small)
    official = tmp_path / "stvae.pt"
    _save_official(small, official, {})
    for path, call in ((weights, lambda: save_pretrained(weights, "jdit", {"n": 2}, big)),
                       (official, lambda: _save_official(big, official, {}))):
        code, err = _run_child(call, file_size_limit=100_000)
        assert code == 1 and f"AtomicWriteError: {path}: writing failed" in err and "unchanged" in err, err
    assert load_pretrained(weights)[1] == {"n": 1}
    assert torch.equal(torch.load(official, weights_only=True)["state_dict"]["w"], small["w"])
    assert _temporaries(tmp_path) == []


# ------------------------------------------------------------------------------------------------ real runs


@pytest.mark.slow
def test_kill_lavinkit_fit_during_saves_then_resume(demo_data, tmp_path, shm_dir):
    """A real ``lavinkit fit`` saving ``last.ckpt`` every step on a tmpfs with TMPDIR on disk, killed with SIGKILL
    at a random moment; ``last.ckpt`` loads and ``--ckpt_path last`` resumes to the end."""
    import yaml

    ckpt_dir = shm_dir / "checkpoints"
    (tmp_path / "tmp").mkdir()
    recipe = yaml.safe_load((ROOT / "recipes" / "stvae" / "tiny_stage1.yaml").read_text())
    recipe["trainer"].update(logger=False, enable_progress_bar=False, limit_val_batches=0, callbacks=[
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(ckpt_dir), "save_last": True, "save_top_k": 0, "every_n_train_steps": 1}},
        {"class_path": "lavinkit.lit.callbacks.EMA", "init_args": {"decay": 0.99}}])
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    args = [sys.executable, "-m", "lavinkit.cli", "fit", "--config", str(tmp_path / "recipe.yaml"),
            "--data.init_args.train_urls", str(demo_data / "train" / "images-*.tar"),
            "--data.init_args.val_urls", str(demo_data / "val" / "images-*.tar"),
            "--data.init_args.size", "32", "--data.init_args.val_batches", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path / "tmp")}
    proc = subprocess.Popen([*args, "--trainer.max_steps", "400"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = ckpt_dir / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert last.exists(), "the run saved no checkpoint"
    time.sleep(random.Random(0).uniform(0.5, 3.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert step >= 1
    resumed = subprocess.run([*args, "--trainer.max_steps", str(step + 2), "--ckpt_path", "last"], cwd=tmp_path,
                             env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == step + 2
    assert _temporaries(ckpt_dir) == []
