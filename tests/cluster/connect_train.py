"""Train a small DBN through Spark Connect and print what the test checks, as one JSON line.

    python tests/cluster/connect_train.py REMOTE TRAIN TEST STORE [ZIP]

REMOTE is `local[2]` (pyspark starts a Connect server inside this process) or `sc://host:port`.
This client imports sparkdbn from the repository, but only through its own sys.path, which the
server's Python workers do not inherit: with ZIP the package reaches them as a Python artifact
(`addArtifacts(..., pyfile=True)`), as from a client of a shared cluster; without ZIP the
server must be able to import sparkdbn already. Run it in its own process (a local Connect
server cannot share a process with a classic session) and from a directory outside the
repository, so that no worker finds the package in its working directory.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def empty_partitions(train_df, test_df) -> dict:
    """The ml stages over Connect on data with empty partitions: a pipelined classifier in a
    Pipeline on a `limit`, an RBM with more partitions than rows, and predictions for a
    filtered frame whose partitions are mostly empty."""
    from pyspark.ml import Pipeline

    from sparkdbn.ml import RBM, DBNClassifier

    clf = DBNClassifier(
        layers=[16, 8], schedule="pipelined", maxIter=2, finalEpochs=1, finetuneEpochs=2,
        numPartitions=4, seed=3, averaging="plain",
    )
    model = Pipeline(stages=[clf]).fit(train_df.limit(1500))
    sparse = test_df.repartition(8).filter("id < 3")
    rbm = RBM(numHidden=4, numPartitions=64, maxIter=1, seed=3, averaging="plain")
    rbm = rbm.fit(train_df.limit(40))
    return {
        "pipeline_predictions": model.transform(sparse).select("prediction").count(),
        "rbm_rows": rbm.transform(train_df.limit(40)).count(),
    }


def main(remote: str, train_path: str, test_path: str, store: str, zip_path: str | None) -> None:
    sys.path.insert(0, str(REPO))
    from pyspark.sql import SparkSession

    from sparkdbn.config import TrainConfig
    from sparkdbn.engine.training import train

    spark = SparkSession.builder.remote(remote).appName("sparkdbn connect test").getOrCreate()
    try:
        if zip_path:
            spark.addArtifacts(zip_path, pyfile=True)
        cfg = TrainConfig(
            layers=[784, 32, 16], epochs=6, schedule="pipelined", start_after=1,
            final_epochs=1, finetune_epochs=2, partitions=2, seed=3,
        ).validate()
        train_df = spark.read.parquet(train_path)
        test_df = spark.read.parquet(test_path)
        result = train(spark, cfg, store, train_data=train_df, test_data=test_df, out=sys.stderr)
        layers = result.run.layers_by_index()
        empty = empty_partitions(train_df, test_df)
        summary = {
            **empty,
            "is_connect": type(spark).__module__.startswith("pyspark.sql.connect"),
            "test_accuracy": result.evaluation.accuracy,
            "layer0_finished_at": layers[0].finished_at,
            "layer1_started_at": layers[1].started_at,
            "layer1_input_versions": [e.input_version for e in layers[1].epochs],
            "finetune_epochs": len(result.finetune_history),
        }
    finally:
        spark.stop()
    print(json.dumps(summary))


if __name__ == "__main__":
    main(*sys.argv[1:5], sys.argv[5] if len(sys.argv) > 5 else None)
