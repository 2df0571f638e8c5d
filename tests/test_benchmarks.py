"""The speed benchmark script runs end to end (tiny sizes; the real figures come from a full run)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import speed  # noqa: E402


def test_quick_benchmark_writes_its_table(tmp_path):
    assert speed.main(["--quick", "--no-peers", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "speed-quick.md").read_text()
    numbers = json.loads((tmp_path / "speed-quick.json").read_text())
    names = [row["name"] for row in numbers["steps"]]
    assert "ours fp32" in names and "compute floor fp32" in names
    assert all(row["images_per_s"] > 0 for row in numbers["steps"])
    # each contender's memory comes from a fresh process of its own (on a CPU): measured, not carried over
    assert all(row["peak_memory_mb"] is not None and row["peak_memory_mb"] > 1 for row in numbers["steps"])
    assert numbers["knn"]["ours_accuracy"] > 10  # better than chance on the synthetic classes
    assert "## kNN evaluation" in table and "p95" in table and "UMAP" in table
