# Databricks notebook source
# MAGIC %md
# MAGIC # ParDBN schedules: sequential vs pipelined vs tied
# MAGIC
# MAGIC The same DBN is pretrained under each layer schedule, then fine-tuned the same way:
# MAGIC
# MAGIC - `sequential`: layer l+1 starts when layer l has finished and trains on its final
# MAGIC   representation (the greedy baseline).
# MAGIC - `pipelined`: layer l+1 starts when layer l publishes its first rough representation
# MAGIC   (after `startAfter` epochs), moves to the newest version at each epoch and spends its
# MAGIC   last `finalEpochs` epochs on the final one.
# MAGIC - `tied`: all upper layers start together once layer 0 has trained `startAfter` epochs,
# MAGIC   each from a copy of the layer below, then go on as under `pipelined`.
# MAGIC
# MAGIC `tied` copies `W` when two layers' shapes are equal and `Wᵀ` when they are transposed
# MAGIC (ParDBN's note W² = W³ = W¹), so the stack must tie, counting the visible width:
# MAGIC 784 → 500 → 784 → 500 does (784×500, then 500×784 = Wᵀ, then 784×500 = Wᵀ again);
# MAGIC 784 → 500 → 500 does not. All three schedules use that one architecture here, so the
# MAGIC comparison is fair. The layers' timelines come from each fit's run log
# MAGIC (`model.trainingMetrics`, what metrics.json holds) and are drawn as a Gantt chart.

# COMMAND ----------

import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
from pyspark.ml.evaluation import MulticlassClassificationEvaluator

from sparkdbn.ml import DBNClassifier
from sparkdbn.session import get_session

DEFAULTS = {
    "data": "data/fashion-mnist",
    "output": "out/notebooks/schedules_study",
    "layers": "500,784,500",
    "epochs": "6",
    "start_after": "1",
    "final_epochs": "2",
    "batch_size": "100",
    "finetune_epochs": "10",
    "finetune_batch_size": "100",
    "partitions": "8",
}


def widget(name: str) -> str:
    """A Databricks widget's value; elsewhere SPARKDBN_NB_<NAME> or the default, so that a
    test (or a terminal) can run the notebook on small data."""
    dbutils = globals().get("dbutils")
    if dbutils is not None:
        dbutils.widgets.text(name, DEFAULTS[name])
        return dbutils.widgets.get(name)
    return os.environ.get(f"SPARKDBN_NB_{name.upper()}", DEFAULTS[name])


DATA = widget("data").rstrip("/")
OUTPUT = widget("output").rstrip("/")
LAYERS = [int(size) for size in widget("layers").split(",")]
EPOCHS = int(widget("epochs"))
START_AFTER = int(widget("start_after"))
FINAL_EPOCHS = int(widget("final_epochs"))
BATCH_SIZE = int(widget("batch_size"))
FINETUNE_EPOCHS = int(widget("finetune_epochs"))
FINETUNE_BATCH_SIZE = int(widget("finetune_batch_size"))
PARTITIONS = int(widget("partitions"))
SCHEDULES = ("sequential", "pipelined", "tied")

# COMMAND ----------

# On Databricks (and under spark-submit or a test) this is the session that already runs.
spark = get_session("sparkdbn schedules study")
train = spark.read.parquet(f"{DATA}/train").cache()
test = spark.read.parquet(f"{DATA}/test").cache()
print(f"{train.count():,} training rows, {test.count():,} test rows; hidden layers {LAYERS}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## One fit per schedule
# MAGIC
# MAGIC Same seed, data, partitions and settings; only `schedule` changes. The makespan is the
# MAGIC pretraining's (first layer's start to last layer's end); fine-tuning is the same work
# MAGIC under every schedule. On a small sample, lower `batch_size`: an upper layer that gets
# MAGIC only a few dozen updates barely leaves its random start, and the fine-tuned net stays near
# MAGIC chance.

# COMMAND ----------

evaluator = MulticlassClassificationEvaluator(metricName="accuracy")
models = {}
results = {}
for schedule in SCHEDULES:
    estimator = DBNClassifier(
        layers=LAYERS, maxIter=EPOCHS, schedule=schedule, startAfter=START_AFTER,
        finalEpochs=FINAL_EPOCHS, batchSize=BATCH_SIZE, finetuneEpochs=FINETUNE_EPOCHS,
        finetuneBatchSize=FINETUNE_BATCH_SIZE, numPartitions=PARTITIONS, learningRate=0.05,
        seed=0,
    )
    started = time.time()
    models[schedule] = estimator.fit(train)
    results[schedule] = {
        "pretrain_makespan_s": models[schedule].trainingMetrics["makespan_seconds"],
        "fit_s": time.time() - started,
        "test_accuracy": evaluator.evaluate(models[schedule].transform(test)),
    }

print(f"{'schedule':<11} {'pretraining s':>13} {'whole fit s':>11} {'test accuracy':>13}")
for schedule, row in results.items():
    print(
        f"{schedule:<11} {row['pretrain_makespan_s']:>13.1f} {row['fit_s']:>11.1f} "
        f"{row['test_accuracy']:>13.4f}"
    )

# COMMAND ----------

# MAGIC %md
# MAGIC ## Gantt chart of the layers
# MAGIC
# MAGIC One bar per layer from its first epoch's start to its last epoch's end. Under
# MAGIC `pipelined` and `tied` the bars overlap: upper layers train on rough representations
# MAGIC while the layers below are still learning. The labels list the input version behind
# MAGIC each of an upper layer's epochs.

# COMMAND ----------

fig, axes = plt.subplots(len(SCHEDULES), 1, figsize=(10, 2 + 1.2 * len(SCHEDULES)), sharex=True)
for ax, schedule in zip(axes, SCHEDULES, strict=True):
    for layer in models[schedule].trainingMetrics["layers"]:
        i, start, end = layer["layer"], layer["started_at"], layer["finished_at"]
        ax.broken_barh([(start, end - start)], (i - 0.4, 0.8), color=f"C{i}")
        versions = [e["input_version"] for e in layer["epochs"] if e["input_version"] is not None]
        if versions:
            ax.text(end, i, f" inputs v{versions}", va="center", fontsize=8)
    ax.set_yticks(range(len(LAYERS)), [f"layer {i}" for i in range(len(LAYERS))])
    ax.invert_yaxis()
    ax.set_title(
        f"{schedule}: pretraining {results[schedule]['pretrain_makespan_s']:.1f} s, "
        f"test accuracy {results[schedule]['test_accuracy']:.3f}",
        fontsize=10,
    )
axes[-1].set_xlabel("seconds since pretraining started")
fig.tight_layout()
show = globals().get("display")
if show is not None:
    show(fig)
else:
    Path(OUTPUT).mkdir(parents=True, exist_ok=True)
    fig.savefig(f"{OUTPUT}/gantt.png", dpi=100)
plt.close(fig)
