"""metrics.jsonl: training writes steps and evaluations, readers split them apart and survive a torn line."""

from byol import metrics_file


def test_rows_written_by_kind_are_read_back_by_kind(tmp_path):
    step = {"kind": metrics_file.STEP, "step": 10, "epoch": 0.5, "loss": 1.0}
    evaluation = {"kind": metrics_file.EVAL, "step": 10, "epoch": 0.5, "knn": 40.0}
    metrics_file.append_rows(tmp_path, [step, evaluation])
    rows = metrics_file.read_rows(tmp_path)
    assert metrics_file.step_rows(rows) == [step]
    assert metrics_file.eval_rows(rows) == [evaluation]


def test_an_event_of_another_kind_is_neither_a_step_nor_an_evaluation():
    status = {"kind": "status", "state": "running"}
    assert not metrics_file.is_step(status) and not metrics_file.is_eval(status)


def test_a_torn_last_line_is_skipped_and_a_nan_is_written_as_null(tmp_path):
    metrics_file.append_rows(tmp_path, [{"kind": metrics_file.STEP, "step": 1, "loss": float("nan")}])
    with open(tmp_path / metrics_file.NAME, "a") as handle:
        handle.write('{"kind": "step", "st')  # a kill mid-write
    assert metrics_file.read_rows(tmp_path) == [{"kind": metrics_file.STEP, "step": 1, "loss": None}]


def test_truncating_keeps_the_rows_up_to_the_resumed_step(tmp_path):
    metrics_file.append_rows(tmp_path, [{"kind": metrics_file.STEP, "step": step} for step in (5, 10, 15)])
    metrics_file.truncate_after(tmp_path, 10)
    assert [row["step"] for row in metrics_file.read_rows(tmp_path)] == [5, 10]
