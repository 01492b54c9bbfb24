"""The pyspark.ml API on real Spark and real data: Pipelines, persistence, tuning, sparse input."""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
from chispa import assert_df_equality
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.evaluation import MulticlassClassificationEvaluator
from pyspark.ml.feature import CountVectorizer, RegexTokenizer, StandardScaler, StringIndexer
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.linalg import SparseVector, Vectors, VectorUDT
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparkdbn.errors import InputError
from sparkdbn.kernels.rates import learning_rate_at
from sparkdbn.ml import DBN, RBM, DBNClassificationModel, DBNClassifier, DBNModel, RBMModel

# Observed on the 2,000 / 500 fixture (seed 1, 2 partitions): 0.756 with Bernoulli units, 0.768
# with StandardScaler + Gaussian units; chance is 0.1.
ACCURACY_FLOOR = 0.70
SMALL = dict(maxIter=2, finetuneEpochs=8, numPartitions=2, seed=1, averaging="plain")


@pytest.fixture(scope="module")
def train_df(spark, fashion_parquet: Path):
    return spark.read.parquet(str(fashion_parquet / "train")).cache()


@pytest.fixture(scope="module")
def test_df(spark, fashion_parquet: Path):
    return spark.read.parquet(str(fashion_parquet / "test")).cache()


@pytest.fixture(scope="module")
def pipeline_model(train_df) -> PipelineModel:
    return Pipeline(stages=[DBNClassifier(layers=[64], **SMALL)]).fit(train_df)


@pytest.fixture(scope="module")
def predictions(pipeline_model, test_df):
    return pipeline_model.transform(test_df).cache()


def accuracy(predictions) -> float:
    return MulticlassClassificationEvaluator(metricName="accuracy").evaluate(predictions)


def features_matrix(rows, column: str = "features") -> np.ndarray:
    return np.array([row[column] for row in rows], np.float32)


def vectors(rows, column: str) -> np.ndarray:
    return np.array([row[column].toArray() for row in rows])


# -- DBNClassifier in a Pipeline ----------------------------------------------------------------


def test_pipeline_outputs_columns_like_spark_classifiers(pipeline_model, predictions):
    model = pipeline_model.stages[-1]
    assert isinstance(model, DBNClassificationModel)
    assert (model.numClasses, model.numFeatures) == (10, 784)
    types = {f.name: f.dataType for f in predictions.schema.fields}
    assert isinstance(types["prediction"], T.DoubleType)
    assert isinstance(types["probability"], VectorUDT)
    assert isinstance(types["rawPrediction"], VectorUDT)
    rows = predictions.orderBy("id").collect()
    proba, raw = vectors(rows, "probability"), vectors(rows, "rawPrediction")
    assert proba.shape == raw.shape == (500, 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert (proba >= 0).all()
    # rawPrediction holds the softmax layer's logits: softmax(raw) is the probability.
    softmax = np.exp(raw - raw.max(axis=1, keepdims=True))
    np.testing.assert_allclose(softmax / softmax.sum(axis=1, keepdims=True), proba, atol=1e-12)
    prediction = np.array([row["prediction"] for row in rows])
    np.testing.assert_array_equal(prediction, proba.argmax(axis=1))
    # The single-row API agrees with the DataFrame one (up to float32 BLAS rounding, which
    # depends on the batch's shape).
    first = Vectors.dense(rows[0]["features"])
    assert model.predict(first) == prediction[0]
    np.testing.assert_allclose(model.predictProbability(first).toArray(), proba[0], rtol=1e-5)


def test_pipeline_accuracy_beats_floor(pipeline_model, predictions):
    assert accuracy(predictions) > ACCURACY_FLOOR
    metrics = pipeline_model.stages[-1].trainingMetrics
    assert [layer["n_hidden"] for layer in metrics["layers"]] == [64]
    assert len(metrics["finetune"]) == SMALL["finetuneEpochs"]


def test_cosine_learning_rate_schedule_reaches_the_fit(test_df):
    """finetuneLrSchedule passes through to fine-tuning: the logged per-epoch rates anneal."""
    classifier = DBNClassifier(
        layers=[16], maxIter=1, finetuneEpochs=4, finetuneLearningRate=0.3,
        finetuneLrSchedule="cosine", numPartitions=2, averaging="plain",
    )
    rates = [e["learning_rate"] for e in classifier.fit(test_df).trainingMetrics["finetune"]]
    assert rates == [learning_rate_at(0.3, e, 4, "cosine") for e in range(4)]


def test_gaussian_visible_after_standard_scaler(spark, train_df, test_df, tmp_path: Path):
    def as_vectors(df):
        return df.withColumn("vec", array_to_vector("features"))

    pipeline = Pipeline(
        stages=[
            StandardScaler(inputCol="vec", outputCol="scaled", withMean=True, withStd=True),
            DBNClassifier(
                featuresCol="scaled", visible="gaussian", learningRate=0.01, layers=[64], **SMALL
            ),
        ]
    )
    model = pipeline.fit(as_vectors(train_df))
    predicted = model.transform(as_vectors(test_df))
    assert accuracy(predicted) > ACCURACY_FLOOR
    # A PipelineModel mixing a JVM stage and a sparkdbn stage saves and loads as one.
    model.save(str(tmp_path / "scaled"))
    again = PipelineModel.load(str(tmp_path / "scaled")).transform(as_vectors(test_df))
    assert_df_equality(
        predicted.select("id", "prediction"), again.select("id", "prediction"),
        ignore_row_order=True,
    )


# -- persistence --------------------------------------------------------------------------------


def probability_arrays(df) -> dict[int, list[float]]:
    rows = df.select("id", vector_to_array("probability").alias("p")).collect()
    return {row["id"]: row["p"] for row in rows}


def assert_no_pickle(directory: Path) -> None:
    files = [p for p in directory.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert path.suffix not in (".pkl", ".pickle")
        assert not path.read_bytes().startswith(b"\x80"), f"{path} looks like a pickle"
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                assert all(npz[key].dtype == np.float32 for key in npz.files)


def test_pipeline_model_save_load_gives_identical_predictions(
    pipeline_model, predictions, test_df, tmp_path: Path
):
    path = tmp_path / "pipeline"
    pipeline_model.write().overwrite().save(str(path))
    loaded = PipelineModel.load(str(path))
    again = loaded.transform(test_df)
    assert_df_equality(
        predictions.select("id", "prediction"), again.select("id", "prediction"),
        ignore_row_order=True,
    )
    assert probability_arrays(predictions) == probability_arrays(again)
    assert_no_pickle(path)
    (stage_dir,) = (path / "stages").iterdir()
    model_json = json.loads((stage_dir / "model" / "model.json").read_text())
    assert model_json["sizes"] == [784, 64]
    assert model_json["classifier"]["n_classes"] == 10


def test_bare_model_save_load_keeps_params_and_predictions(
    pipeline_model, predictions, test_df, tmp_path: Path
):
    model = pipeline_model.stages[-1]
    path = str(tmp_path / "model")
    model.save(path)
    with pytest.raises(Exception, match="already exists"):
        model.save(path)
    model.write().overwrite().save(path)
    loaded = DBNClassificationModel.load(path)
    assert loaded.uid == model.uid
    assert loaded.getLayers() == [64] and loaded.getFinetuneEpochs() == SMALL["finetuneEpochs"]
    assert loaded.trainingMetrics is None
    again = loaded.transform(test_df)
    assert_df_equality(
        predictions.select("id", "prediction"), again.select("id", "prediction"),
        ignore_row_order=True,
    )
    assert probability_arrays(predictions) == probability_arrays(again)
    with pytest.raises(InputError, match="not a sparkdbn.ml.RBMModel"):
        RBMModel.load(path)


def test_unfitted_pipeline_save_load_keeps_params(tmp_path: Path):
    clf = DBNClassifier(
        layers=[32, 16], schedule="pipelined", finetuneLearningRate=0.05, cacheVersions="never"
    )
    Pipeline(stages=[clf]).save(str(tmp_path / "pipeline"))
    (loaded,) = Pipeline.load(str(tmp_path / "pipeline")).getStages()
    assert isinstance(loaded, DBNClassifier) and loaded.uid == clf.uid
    assert loaded.getLayers() == [32, 16]
    assert loaded.getSchedule() == "pipelined"
    assert loaded.getFinetuneLearningRate() == 0.05
    assert loaded.getCacheVersions() == "never" and loaded.getRoughVersions() == "in_epoch"
    assert loaded.getStorePath() is None


# -- tuning -------------------------------------------------------------------------------------


def test_cross_validator_picks_a_best_model(train_df, test_df):
    clf = DBNClassifier(
        layers=[32], maxIter=1, finetuneEpochs=3, batchSize=20, finetuneBatchSize=20,
        numPartitions=2, seed=2, averaging="plain",
    )
    rates = [0.01, 0.1]
    grid = ParamGridBuilder().addGrid(clf.finetuneLearningRate, rates).build()
    cv = CrossValidator(
        estimator=clf, estimatorParamMaps=grid, numFolds=2, seed=5,
        evaluator=MulticlassClassificationEvaluator(metricName="accuracy"),
    )
    model = cv.fit(train_df.limit(1000))
    assert len(model.avgMetrics) == 2
    best = model.bestModel
    assert isinstance(best, DBNClassificationModel)
    assert best.getFinetuneLearningRate() == rates[int(np.argmax(model.avgMetrics))]
    # Observed: fold accuracies 0.26 and 0.41, then 0.62 on the test set.
    assert accuracy(model.transform(test_df)) > 0.4


# -- RBM and DBN transformers -------------------------------------------------------------------


def check_hidden(model, test_df, width: int) -> None:
    out = model.transform(test_df)
    assert isinstance(out.schema["hidden"].dataType, VectorUDT)
    rows = out.orderBy("id").collect()
    hidden = vectors(rows, "hidden")
    assert hidden.shape == (500, width)
    assert ((hidden >= 0) & (hidden <= 1)).all()
    expected = model.stack.transform(features_matrix(rows))
    # Equal up to float32 BLAS rounding, which depends on the batch's shape.
    np.testing.assert_allclose(hidden, expected, rtol=1e-5, atol=1e-6)


def test_rbm_transformer_matches_numpy(train_df, test_df, tmp_path: Path, capsys):
    rbm = RBM(numHidden=32, maxIter=2, numPartitions=2, averaging="nesterov", roundsPerEpoch=3,
              blockMomentum=0.4, localMomentum="averaged", localLrScale=1.5, lrWarmupEpochs=1.0)
    model = rbm.fit(train_df)
    assert capsys.readouterr().out == ""  # the engine's progress lines stay out of stdout
    assert isinstance(model, RBMModel)
    # The averaging params reach the engine and stay with the model.
    assert [e["rounds"] for e in model.trainingMetrics["layers"][0]["epochs"]] == [3, 3]
    config = model.stack.config
    assert (config["averaging"], config["block_momentum"], config["local_lr_scale"]) == (
        "nesterov", 0.4, 1.5
    )
    assert (model.getAveraging(), model.getRoundsPerEpoch(), model.getLocalMomentum()) == (
        "nesterov", 3, "averaged"
    )
    check_hidden(model, test_df, 32)
    model.save(str(tmp_path / "rbm"))
    loaded = RBMModel.load(str(tmp_path / "rbm"))
    assert loaded.getNumHidden() == 32
    np.testing.assert_array_equal(loaded.stack.layers[0].W, model.stack.layers[0].W)


def test_dbn_transformer_matches_numpy_and_keeps_its_store(train_df, test_df, tmp_path: Path):
    store = tmp_path / "store"
    dbn = DBN(
        layers=[64, 16], maxIter=2, finalEpochs=1, schedule="pipelined", numPartitions=2,
        storePath=str(store), roughVersions="after_epoch", cacheVersions="always",
        keepVersions=2, averaging="plain",
    )
    model = dbn.fit(train_df)
    assert isinstance(model, DBNModel)
    assert model.stack.sizes == [784, 64, 16]
    check_hidden(model, test_df, 16)
    (fit_dir,) = store.iterdir()
    assert fit_dir.name.startswith(dbn.uid) and (fit_dir / "layer_0").is_dir()
    assert model.trainingMetrics["schedule"] == "pipelined"
    # The version params reach the engine: rough versions made by a pass of their own (no
    # in_epoch mark), and the run's config as the model records it.
    markers = sorted((fit_dir / "layer_0" / "_versions").glob("v-*.json"))
    metas = [json.loads(marker.read_text())["meta"] for marker in markers]
    assert [meta["final"] for meta in metas] == [False, True]
    assert not any(meta.get("in_epoch") for meta in metas)
    config = model.stack.config
    assert (config["rough_versions"], config["cache_versions"], config["keep_versions"]) == (
        "after_epoch", "always", 2
    )
    assert (model.getRoughVersions(), model.getCacheVersions(), model.getKeepVersions()) == (
        "after_epoch", "always", 2
    )
    model.save(str(tmp_path / "dbn"))
    loaded = DBNModel.load(str(tmp_path / "dbn"))
    assert_df_equality(
        model.transform(test_df).select("id", vector_to_array("hidden").alias("h")),
        loaded.transform(test_df).select("id", vector_to_array("hidden").alias("h")),
        ignore_row_order=True,
    )


def test_transform_rejects_rows_of_the_wrong_width(spark, pipeline_model):
    model = pipeline_model.stages[-1]
    df = spark.createDataFrame([(1, [0.5] * 10)], "id long, features array<double>")
    with pytest.raises(Exception, match="the model expects 784"):
        model.transform(df).collect()


# -- sparse text features -----------------------------------------------------------------------

# Real text without a network: docstrings of standard-library modules, labelled by topic.
TOPICS = {
    "files": ["os", "shutil", "pathlib", "glob", "tempfile", "fnmatch", "filecmp", "zipfile"],
    "math": ["math", "cmath", "decimal", "fractions", "statistics", "random", "numbers"],
    "text": ["string", "textwrap", "difflib", "re", "html", "codecs", "unicodedata", "locale"],
}


def docstring_corpus() -> list[tuple[int, str, str]]:
    """(id, topic, text): one document per documented public function or class."""
    seen: dict[str, str | None] = {}
    for topic, modules in TOPICS.items():
        for name in modules:
            for member, obj in sorted(vars(importlib.import_module(name)).items()):
                if member.startswith("_") or not (inspect.isroutine(obj) or inspect.isclass(obj)):
                    continue
                doc = inspect.getdoc(obj)
                if doc and len(doc.split()) >= 8:
                    # A docstring shared by two topics (re-exported names) has no one label.
                    seen[doc] = topic if seen.get(doc, topic) == topic else None
    docs = sorted((text, topic) for text, topic in seen.items() if topic is not None)
    return [(i, topic, text) for i, (text, topic) in enumerate(docs)]


def test_sparse_count_vectors_train_a_classifier(spark):
    corpus = spark.createDataFrame(docstring_corpus(), "id long, topic string, text string")
    train, test = corpus.randomSplit([0.75, 0.25], seed=3)
    pipeline = Pipeline(
        stages=[
            StringIndexer(inputCol="topic", outputCol="label"),  # labels arrive as doubles
            RegexTokenizer(inputCol="text", outputCol="words", pattern="[^a-z]+", minTokenLength=3),
            CountVectorizer(inputCol="words", outputCol="counts", binary=True, vocabSize=400,
                            minDF=3),
            DBNClassifier(featuresCol="counts", layers=[32], maxIter=3, finetuneEpochs=15,
                          batchSize=20, finetuneBatchSize=20, numPartitions=2, seed=4,
                          averaging="plain"),
        ]
    )
    model = pipeline.fit(train)
    predicted = model.transform(test).cache()
    assert isinstance(predicted.first()["counts"], SparseVector)
    assert model.stages[-1].numFeatures == 400 and model.stages[-1].numClasses == 3
    assert {row["prediction"] for row in predicted.select("prediction").collect()} <= {0, 1, 2}
    # Observed 0.76 on 121 held-out documents; always answering the largest topic gives 0.56.
    assert accuracy(predicted) > 0.65


# -- parameter validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "param"),
    [
        (DBNClassifier(k=0), "k"),
        (DBNClassifier(learningRate=-1.0), "learningRate"),
        (DBNClassifier(layers=[]), "layers"),
        (DBNClassifier(layers=[32, 0]), "layers"),
        (DBNClassifier(momentum=1.0), "momentum"),
        (DBNClassifier(finetuneEpochs=0), "finetuneEpochs"),
        (DBNClassifier(visible="poisson"), "visible"),
        (DBNClassifier(finetuneLrSchedule="step"), "finetuneLrSchedule"),
        (DBN(schedule="pipelined", maxIter=1, finalEpochs=2), "finalEpochs"),
        (DBN(numPartitions=0), "numPartitions"),
        (DBN(roughVersions="never"), "roughVersions"),
        (DBN(cacheVersions="sometimes"), "cacheVersions"),
        (DBN(keepVersions=0), "keepVersions"),
        (DBN(averaging="mean"), "averaging"),
        (DBN(roundsPerEpoch=0), "roundsPerEpoch"),
        (DBNClassifier(blockMomentum=1.0), "blockMomentum"),
        (DBNClassifier(blockLearningRate=0.0), "blockLearningRate"),
        (RBM(localMomentum="kept"), "localMomentum"),
        (RBM(localLrScale=-1.0), "localLrScale"),
        (RBM(lrWarmupEpochs=-1.0), "lrWarmupEpochs"),
        (RBM(numHidden=0), "numHidden"),
        (RBM(seed=-1), "seed"),
        (RBM(learningRate=float("nan")), "learningRate"),
        (RBM(weightDecay=float("inf")), "weightDecay"),
        (DBNClassifier(finetuneLrDecay=float("nan")), "finetuneLrDecay"),
        (RBM(checkpointInterval=0), "checkpointInterval"),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_invalid_params_fail_the_fit_naming_the_param(test_df, stage, param):
    with pytest.raises(InputError, match=rf"param {param} must"):
        stage.fit(test_df)


def test_missing_columns_fail_clearly(test_df):
    with pytest.raises(InputError, match="label column 'y' not found"):
        DBNClassifier(labelCol="y").fit(test_df)
    with pytest.raises(InputError, match="features column 'pixels' not found"):
        RBM(featuresCol="pixels").fit(test_df)


def test_fractional_labels_are_refused(test_df):
    halves = test_df.withColumn("label", F.col("label") + F.lit(0.5))
    with pytest.raises(Exception, match="must hold whole numbers"):
        DBNClassifier(layers=[8], maxIter=1, finetuneEpochs=1).fit(halves)
