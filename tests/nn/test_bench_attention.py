"""`lavinkit bench attention` on a toy size: table, JSON, PNG and the crossover statement."""

from __future__ import annotations

import json

from lavinkit.bench.attention import crossovers, main, sequences


def test_sequences_cover_pairs_and_clips():
    seqs = sequences(16, 2, [1, 2, 4, 8], 2)
    assert [s["tokens"] for s in seqs if s["item_frames"] == 1] == [256, 384, 640, 1152]
    clips = {s["item_frames"]: s["tokens"] for s in seqs if s["item_frames"] > 1}
    assert clips == {2: 6 * 2 * 64, 5: 6 * 5 * 64}  # 5- and 17-frame clips: 2 and 5 latent frames per item


def test_crossover_rule():
    rows = [dict(variant=v, tokens=n, time_s=t, mode="fwd+bwd", sequence=str(n))
            for v, n, t in [("sdpa", 1, 1.0), ("sdpa", 2, 2.0), ("sdpa", 3, 4.0), ("a", 1, 2.0), ("a", 2, 1.9),
                            ("a", 3, 3.0), ("b", 1, 0.5), ("b", 2, 3.0), ("b", 3, 5.0)]]
    assert crossovers(rows) == {"a": "from 2 tokens (2)", "b": "never at these sizes"}


def test_bench_writes_table_json_and_plot(tmp_path, capsys):
    code = main(["--pairs", "[1]", "--clip_pairs", "1", "--latent", "4", "--hidden", "48", "--heads", "4",
                 "--variants", "[sdpa, pair_local, flex_pair_local, diffussm]", "--steps", "1", "--warmup", "0",
                 "--out", str(tmp_path)])
    assert code == 0
    text = (tmp_path / "attention.md").read_text()
    assert "| pair_local |" in text and "Crossover vs sdpa" in text
    assert "flex_pair_local: " in text and "(forward only)" in text
    data = json.loads((tmp_path / "attention.json").read_text())
    assert {r["variant"] for r in data["rows"]} == {"sdpa", "pair_local", "flex_pair_local", "diffussm"}
    assert (tmp_path / "attention.png").stat().st_size > 1000
    assert main(["--variants", "[nope]"]) == 2
