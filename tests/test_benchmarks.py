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


def test_quality_dry_run_trains_every_variant_and_writes_its_table(tmp_path):
    import importlib.util

    import quality

    argv = [
        "--mode",
        "cpu",
        "--dry-run",
        "--parallel",
        "0",
        "--variant",
        "base:",
        "--variant",
        "fast-lr:lr=8e-3",
        "--out",
        str(tmp_path),
        "--scratch",
        str(tmp_path / "scratch"),
    ]
    lightly = importlib.util.find_spec("lightly") is not None
    assert quality.main(argv if lightly else [*argv, "--no-lightly"]) == 0
    numbers = json.loads((tmp_path / "quality-cpu-dry.json").read_text())
    rows = {row["name"]: row for row in numbers["variants"]}
    assert set(rows) == ({"base", "fast-lr", quality.LIGHTLY} if lightly else {"base", "fast-lr"})
    for row in rows.values():
        assert row["state"] == "finished", row["message"]
        assert [epoch for epoch, _ in row["curve"]] == [0, 0.5, 1]  # the random-init point, then every eval
        assert row["final_knn"] == row["curve"][-1][1]
    assert rows["fast-lr"]["config"]["lr"] == 8e-3 and rows["base"]["config"]["lr"] != 8e-3
    assert numbers["random_init_knn"] is not None and numbers["pixel_knn"] is not None
    table = (tmp_path / "quality-cpu-dry.md").read_text()
    assert "| fast-lr | lr=8e-3 |" in table and "DRY RUN" in table
    # Each of our runs carries the Compare page's collapse verdict into the table (lightly's logs no spread).
    assert "| final kNN | collapse |" in table
    for name in ("base", "fast-lr"):
        assert rows[name]["collapse"] == "no" or rows[name]["collapse"].startswith("at step "), rows[name]["collapse"]
        assert f"| {rows[name]['collapse']} |" in table
    # --reuse: a second call with the same scratch folder reads the finished runs instead of training again
    assert quality.main([*argv, "--reuse"] if lightly else [*argv, "--no-lightly", "--reuse"]) == 0
    again = json.loads((tmp_path / "quality-cpu-dry.json").read_text())
    assert [row["curve"] for row in again["variants"]] == [row["curve"] for row in numbers["variants"]]
    assert all(row["run_dir"] == rows[row["name"]]["run_dir"] for row in again["variants"])


def test_quality_variants_parse_and_refuse_plainly():
    import quality
    import quality_recipes as recipes

    assert recipes.parse_variant("adamw-lr4e-3:optimizer=adamw,lr=4e-3") == ("adamw-lr4e-3", ["optimizer=adamw", "lr=4e-3"])
    assert recipes.parse_variant("base:") == ("base", [])
    for mode in recipes.MODES:  # every built-in variant makes a valid config
        base = recipes.base_config(mode, "synthetic", None, "cpu", 0)
        for text in recipes.VARIANTS[mode]:
            recipes.variant_config(base, *recipes.parse_variant(text), dry_run=False)
    assert quality.main(["--variant", "no-colon"]) == 2
    assert quality.main(["--variant", "x:not_a_field=1"]) == 2


def test_neighbours_scores_model_untrained_and_pixels_as_the_retrieval_page_does(tmp_path):
    import neighbours

    from byol import neighbour_score
    from byol.data import load_dataset
    from test_retrieval import make_run

    run_dir = make_run(tmp_path / "runs")  # random width-4 networks as step 0 and step 4
    out = tmp_path / "neighbours.json"
    argv = [str(run_dir), "--data", "synthetic", "--queries", "40", "--example", "3", "--json", str(out)]
    assert neighbours.main(argv) == 0
    figures = json.loads(out.read_text())
    assert figures["step"] == 4 and figures["queries"] == 40
    for name in ("model", "random init", "pixels"):
        assert 0 <= figures[name]["mean_precision"] <= 1 and len(figures[name]["example_labels"]) == 10
    # The page's figure for raw pixels (a float16 bank) is the script's (float32) to rounding.
    page_pixels = neighbour_score.pixel_score(load_dataset("synthetic"), queries=40)
    assert abs(page_pixels - figures["pixels"]["mean_precision"]) <= 0.01
    assert figures["gap_points"] == 100 * (figures["model"]["mean_precision"] - figures["pixels"]["mean_precision"])
