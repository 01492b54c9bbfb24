"""train_dbn with the overfitting monitors and --log-likelihood, through the job's main on the
test session: what metrics.json, the JSON log and the pictures hold; and validation data with a
bad column refused before any work."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from tests.reliability.conftest import run_in_process

MONITORS = {
    "rows", "train_rows", "train_free_energy", "validation_free_energy", "free_energy_gap",
    "train_pseudo_log_likelihood", "validation_pseudo_log_likelihood",
}


def test_monitors_and_log_likelihood_in_metrics(spark, fashion_parquet, tmp_path) -> None:
    output = tmp_path / "out"
    result = run_in_process(
        "train_dbn", "--train", str(fashion_parquet / "train"), "--test",
        str(fashion_parquet / "test"), "--output", str(output), "--layers", "784,8,4",
        "--epochs", "2", "--finetune-epochs", "0", "--validation-fraction", "0.1",
        "--log-likelihood", "--ais-chains", "4", "--ais-betas", "50", "--log-format", "json",
        "--averaging", "plain",
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((output / "metrics.json").read_text())
    for layer in metrics["layers"]:
        assert [e["epoch"] for e in layer["epochs"]] == [0, 1]
        for epoch in layer["epochs"]:
            m = epoch["monitors"]
            assert set(m) == MONITORS
            assert m["free_energy_gap"] == m["validation_free_energy"] - m["train_free_energy"]
            assert 150 < m["rows"] < 250 and m["train_rows"] == m["rows"]  # 10 % of 2,000
    figures = metrics["log_likelihood"]
    assert [layer["layer"] for layer in figures["layers"]] == [0, 1]
    assert figures["ais"]["chains"] == 4 and figures["ais"]["betas"] == 50
    bound = figures["dbn_lower_bound"]
    assert bound["n_rows"] == figures["n_rows"] > 0
    assert bound["lower"] <= bound["log_likelihood_lower_bound"] < 0
    events = [json.loads(line) for line in result.stdout.splitlines()]
    epochs = [e for e in events if e["event"] == "epoch"]
    assert len(epochs) == 4 and all(set(e["monitors"]) == MONITORS for e in epochs)
    [measured] = [e for e in events if e["event"] == "log_likelihood"]
    assert measured["dbn_lower_bound"] == bound
    assert (output / "learning_curves.png").stat().st_size > 0


def test_text_progress_line_shows_the_monitors(spark, fashion_parquet, tmp_path) -> None:
    result = run_in_process(
        "train_dbn", "--train", str(fashion_parquet / "train"), "--output",
        str(tmp_path / "out"), "--layers", "784,4", "--epochs", "1", "--finetune-epochs", "0",
        "--validation", str(fashion_parquet / "test"), "--averaging", "plain",
    )
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if "epoch 1/1" in line]
    assert " · F train " in line and " gap " in line and " · PLL train " in line


def test_validation_with_a_bad_column_exits_2_before_any_work(
    spark, fashion_parquet, tmp_path
) -> None:
    table = pq.read_table(fashion_parquet / "test").replace_schema_metadata()
    bad = table.set_column(
        table.schema.get_field_index("features"), "features",
        pa.array(["not a vector"] * table.num_rows),
    )
    (tmp_path / "validation").mkdir()
    pq.write_table(bad, tmp_path / "validation" / "part-0.parquet")
    (tmp_path / "runs").mkdir()
    result = run_in_process(
        "train_dbn", "--train", str(fashion_parquet / "train"), "--output",
        str(tmp_path / "runs/out"), "--layers", "784,4", "--epochs", "1",
        "--validation", str(tmp_path / "validation"),
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line == (
        f"error: validation data {str(tmp_path / 'validation')!r}: features column 'features' "
        "has type string; expected array<float>, array<double> or a pyspark.ml Vector"
    )
    assert list((tmp_path / "runs").iterdir()) == []
