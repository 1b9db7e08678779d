"""``lavinkit bench stvae``: the long-clip rows time chunked and whole-clip decoding side by side."""

import json

import pytest

from lavinkit.bench.stvae import main


@pytest.mark.slow  # three subprocesses, each importing torch
def test_long_clip_rows_time_chunked_and_whole_decode(tmp_path, capsys):
    out = tmp_path / "rows.json"
    args = ["--skip-speed", "true", "--skip-diffusers", "true", "--long-preset", "tiny", "--long-frames", "[9]",
            "--long-size", "16", "--chunk-frames", "4", "--repeats", "2", "--threads", "1", "--json", str(out)]
    assert main(args) == 0
    rows = json.loads(out.read_text())
    assert [r["chunk_frames"] for r in rows] == [None, 4] and all(r["frames"] == 9 for r in rows)
    assert all(r["median_s"] > 0 and r["peak_tensor_mb"] > 0 for r in rows)
    assert "chunked / unchunked time" in capsys.readouterr().out
