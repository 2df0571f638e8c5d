"""metrics.jsonl's row kinds: training writes both, readers split them apart."""

from byol import metric_rows, runs


def test_rows_written_by_kind_are_read_back_by_kind(tmp_path):
    step = {"kind": metric_rows.STEP, "step": 10, "epoch": 0.5, "loss": 1.0}
    evaluation = {"kind": metric_rows.EVAL, "step": 10, "epoch": 0.5, "knn": 40.0}
    runs.append_metrics(tmp_path, [step, evaluation])
    rows = runs.read_metric_rows(tmp_path)
    assert metric_rows.step_rows(rows) == [step]
    assert metric_rows.eval_rows(rows) == [evaluation]


def test_an_event_of_another_kind_is_neither_a_step_nor_an_evaluation():
    status = {"kind": "status", "state": "running"}
    assert not metric_rows.is_step(status) and not metric_rows.is_eval(status)
