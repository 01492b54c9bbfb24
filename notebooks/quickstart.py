# Databricks notebook source
# MAGIC %md
# MAGIC # sparkdbn quickstart: a Deep Belief Network classifier in a Spark ML Pipeline
# MAGIC
# MAGIC `DBNClassifier` pretrains a stack of RBMs on Spark (one CD-k epoch = one Spark stage,
# MAGIC partitions' parameters averaged), then fine-tunes the unrolled network with a softmax
# MAGIC layer by backprop. It is an ordinary pyspark.ml estimator: it goes into a `Pipeline`,
# MAGIC works with `MulticlassClassificationEvaluator`, and saves and loads with the pipeline.
# MAGIC
# MAGIC Data: Fashion-MNIST as Parquet (`id`, `features` array<float> in [0, 1], `label` int), as
# MAGIC `python jobs/prepare_data.py --fashion-mnist --output data/fashion-mnist` writes it.
# MAGIC `sparkdbn` must be importable: run this from a Git folder of the repository (its root is
# MAGIC on `sys.path`) or `%pip install` the wheel first.

# COMMAND ----------

import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.evaluation import MulticlassClassificationEvaluator
from pyspark.sql import functions as F

from sparkdbn.ml import DBNClassifier
from sparkdbn.plots import filter_grid
from sparkdbn.session import get_session

DEFAULTS = {
    "data": "data/fashion-mnist",
    "output": "out/notebooks/quickstart",
    "layers": "500",
    "epochs": "5",
    "finetune_epochs": "10",
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
FINETUNE_EPOCHS = int(widget("finetune_epochs"))
PARTITIONS = int(widget("partitions"))

# COMMAND ----------

# On Databricks (and under spark-submit or a test) this is the session that already runs.
spark = get_session("sparkdbn quickstart")
train = spark.read.parquet(f"{DATA}/train")
test = spark.read.parquet(f"{DATA}/test")
print(f"{train.count():,} training rows, {test.count():,} test rows")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Fit
# MAGIC
# MAGIC `layers` lists the hidden sizes; the visible size (784) comes from the data. `maxIter` is
# MAGIC the pretraining epochs per layer. Pixels in [0, 1] suit Bernoulli visible units; for
# MAGIC standardized real values put a `StandardScaler` first and set `visible="gaussian"`.

# COMMAND ----------

classifier = DBNClassifier(
    layers=LAYERS, maxIter=EPOCHS, finetuneEpochs=FINETUNE_EPOCHS, numPartitions=PARTITIONS,
    learningRate=0.05, seed=0,
)
started = time.time()
pipeline_model = Pipeline(stages=[classifier]).fit(train)
fit_seconds = time.time() - started
dbn = pipeline_model.stages[-1]
print(f"fitted {dbn.stack.sizes} + softmax({dbn.numClasses}) in {fit_seconds:.1f} s")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Evaluate
# MAGIC
# MAGIC The model adds `prediction` (double), `probability` (softmax, vector) and
# MAGIC `rawPrediction` (logits, vector), like Spark's own classifiers.

# COMMAND ----------

CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

predictions = pipeline_model.transform(test).cache()
accuracy = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(predictions)
per_class = {
    row["label"]: row["accuracy"]
    for row in predictions.groupBy("label")
    .agg(F.avg((F.col("prediction") == F.col("label")).cast("double")).alias("accuracy"))
    .collect()
}
print(f"test accuracy {accuracy:.4f}")
for label in sorted(per_class):
    name = CLASSES[label] if label < len(CLASSES) else str(label)
    print(f"  {label} {name:<12} {per_class[label]:.3f}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## First-layer filters
# MAGIC
# MAGIC Each tile is one hidden unit's incoming weights as a 28 × 28 image.

# COMMAND ----------

fig, ax = plt.subplots(figsize=(6, 6))
ax.imshow(filter_grid(dbn.stack.layers[0].W), cmap="gray", interpolation="nearest")
ax.set_axis_off()
ax.set_title(f"first-layer filters (test accuracy {accuracy:.3f})")
show = globals().get("display")
if show is not None:
    show(fig)
else:
    Path(OUTPUT).mkdir(parents=True, exist_ok=True)
    fig.savefig(f"{OUTPUT}/filters.png", dpi=100, bbox_inches="tight")
plt.close(fig)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Save and load
# MAGIC
# MAGIC The pipeline saves as Spark's params metadata plus the weights as npz files (readable
# MAGIC with numpy alone, never pickle); the loaded pipeline predicts exactly the same. On
# MAGIC serverless or shared compute (Spark Connect) set the `output` widget to a path that the
# MAGIC notebook and the cluster share, such as a Unity Catalog volume (`/Volumes/…`).

# COMMAND ----------

model_path = f"{OUTPUT}/pipeline_model"
pipeline_model.write().overwrite().save(model_path)
reloaded = PipelineModel.load(model_path)
changed = (
    reloaded.transform(test).select("id", F.col("prediction").alias("again"))
    .join(predictions.select("id", "prediction"), "id")
    .filter(F.col("again") != F.col("prediction"))
    .count()
)
print(f"saved to {model_path}; predictions that changed after loading: {changed}")
