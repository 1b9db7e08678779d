"""Per-task counts and the contact sheet."""

from __future__ import annotations

from PIL import Image

from lavinkit.data.inspect import contact_sheet, inspect_shards
from lavinkit.data.pack import read_index


def test_counts_match_index_and_sheet_has_a_row_per_task(demo_data, tmp_path):
    result = inspect_shards(str(demo_data / "train"), pairs_per_task=2)
    index = read_index(demo_data / "train")
    assert {t: s.count for t, s in result.summaries.items()} == {t: v["count"] for t, v in index["tasks"].items()}
    assert result.samples == index["num_samples"] and not result.errors
    assert all(len(s.examples) == 2 for s in result.summaries.values())
    table = result.table()
    assert "frame_prediction" in table and "32x32" in table and str(index["num_samples"]) in table

    sheet = Image.open(contact_sheet(result, tmp_path / "sheet.png", frames=3))
    # 13 rows of 64-pixel frames (32x32 upscaled 2x) plus labels
    assert sheet.height >= len(result.summaries) * 64
    # a clip pair shows 3 input + 3 target frames side by side
    assert sheet.width >= 2 * (6 * 64)
    fewer = Image.open(contact_sheet(inspect_shards(str(demo_data / "val" / "images-000000.tar"), pairs_per_task=1),
                                     tmp_path / "small.png"))
    assert fewer.height < sheet.height


def test_unreadable_input_is_listed_not_raised(tmp_path):
    result = inspect_shards([str(tmp_path / "missing.tar")])
    assert result.samples == 0 and "missing-shard" in result.errors[0]
