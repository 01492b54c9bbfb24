"""pyspark.ml Estimators and Models over the sparkdbn engine: RBM, DBN and DBNClassifier.

They behave like Spark's own stages, so they compose with `Pipeline`, `CrossValidator` and
`ParamGridBuilder`: Params with getters and setters (made from the settings schema),
keyword-only constructors, `fit`, `transform`, `save` and `load`. Fitting runs
`sparkdbn.engine.training.train`; transforming runs the numpy forward pass in one
`mapInArrow`. Both use DataFrame APIs only (no RDDs, broadcasts or SparkContext), so they also
work over Spark Connect.

Features may be `array<float>`, `array<double>` or pyspark.ml Vectors, dense or sparse (sparse
rows are densified one Arrow batch at a time). `layers` lists the *hidden* sizes only; the
visible size is the width of the features column.

A saved model is Spark's params metadata (`metadata/`, written by `DefaultParamsWriter`, so a
`PipelineModel` can find and load the stage) plus the sparkdbn model directory (`model/`:
`layer_{i}.npz`, `classifier.npz`, `model.json`); never pickle. Without a SparkContext (Spark
Connect) the model files need a path that the client and the cluster share, e.g. /Volumes/….
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import io
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

import numpy as np
import pyarrow as pa
from pyspark.ml.base import Estimator, Model
from pyspark.ml.classification import ClassificationModel, Classifier
from pyspark.ml.functions import array_to_vector
from pyspark.ml.linalg import DenseVector, Vector
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import (
    HasCheckpointInterval,
    HasFeaturesCol,
    HasLabelCol,
    HasMaxIter,
    HasOutputCol,
    HasProbabilityCol,
    HasSeed,
)
from pyspark.ml.util import (
    DefaultParamsReadable,
    DefaultParamsReader,
    DefaultParamsWritable,
    DefaultParamsWriter,
    MLReadable,
    MLReader,
    MLWritable,
    MLWriter,
)
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.utils import is_remote

import sparkdbn.model as dbn_model
from sparkdbn.columns import features_to_numpy
from sparkdbn.config import BY_KEY, SETTINGS, TrainConfig, check_relations
from sparkdbn.data import prepare
from sparkdbn.engine.checkpoint import Checkpoint
from sparkdbn.engine.filesystem import filesystem
from sparkdbn.engine.likelihood import AISSettings, model_likelihood
from sparkdbn.engine.training import TrainingResult, train
from sparkdbn.errors import InputError
from sparkdbn.kernels.likelihood import DEFAULT_BETAS, DEFAULT_CHAINS
from sparkdbn.kernels.mlp import class_scores
from sparkdbn.logs import Reporter
from sparkdbn.outputs import metrics_dict
from sparkdbn.settings import (
    CLASSIFIER,
    POSITIVE,
    PRETRAIN,
    STACK,
    Rule,
    Setting,
    check,
    stage_source,
)
from sparkdbn.tracking import tracking_for

__all__ = ["DBN", "RBM", "DBNClassificationModel", "DBNClassifier", "DBNModel", "RBMModel"]

MODEL_DIR = "model"
M = TypeVar("M", bound="_StackModel")
P = TypeVar("P", bound=Params)


# -- Params -------------------------------------------------------------------------------------
#
# The Params, getters, setters, defaults and keyword signatures are all made from the settings
# schema (`sparkdbn.config.SETTINGS`, each setting's `param` and `group`), plus the few settings
# a fit has and a job has not (below). pyspark's shared params (maxIter, seed, featuresCol, …)
# keep their own Param, doc and getter; the schema gives them their default.

_LAYERS = BY_KEY["layers"].default
_SIZES = Rule("be a non-empty list of positive sizes", lambda v: len(v) > 0 and min(v) > 0)
_RBM = "rbm"
_FIT_SETTINGS = (
    Setting(None, int, _LAYERS[-1], "hidden units", POSITIVE, param="numHidden", group=_RBM),
    Setting(
        None, list, _LAYERS[1:],
        "hidden layer sizes, bottom first; the visible size is the features' width",
        _SIZES, param="layers", group=STACK,
    ),
    Setting(
        None, str, None,
        "a directory on the driver's file system for the fit's checkpoint, saved every "
        "checkpointInterval epochs: a fit that fails or is killed continues from it when fitted "
        "again with the same params and data; removed when the fit succeeds. Unset: none",
        param="checkpointDir", group=PRETRAIN,
    ),
    Setting(
        None, str, None,
        "directory for the rough representations of the pipelined and tied schedules (any "
        "Hadoop file system; under Spark Connect a path the client and the cluster share); "
        "each fit writes a new subdirectory and keeps it; unset: a temporary directory, removed "
        "after the fit",
        param="storePath", group=STACK,
    ),
)
PARAM_SETTINGS: tuple[Setting, ...] = tuple(
    s for s in (*SETTINGS, *_FIT_SETTINGS) if s.param is not None
)
CONVERTERS: dict[type, Callable[[Any], Any]] = {
    bool: TypeConverters.toBoolean, int: TypeConverters.toInt, float: TypeConverters.toFloat,
    str: TypeConverters.toString, list: TypeConverters.toListInt,
}
OUTPUT_COL = "hidden"


def _group(group: str) -> tuple[Setting, ...]:
    return tuple(s for s in PARAM_SETTINGS if s.group == group)


def _defaults(group: str) -> dict[str, Any]:
    return {s.param: s.ml_default for s in _group(group) if s.ml_default is not None}


def _getter(name: str) -> Callable[[Params], Any]:
    def get(self: Params) -> Any:
        return self.getOrDefault(name) if self.isDefined(name) else None

    return get


def _setter(name: str) -> Callable[[Params, Any], Any]:
    def set_(self: Params, value: Any) -> Any:
        return self._set(**{name: value})

    return set_


def _declare(group: str) -> Callable[[type[P]], type[P]]:
    """A Params mixin gets the group's settings as Params, each with its getter (None while
    unset); `_settings` lists every setting the class has, its bases' included."""

    def decorate(cls: type[P]) -> type[P]:
        settings = _group(group)
        for s in settings:
            name = str(s.param)
            if not hasattr(cls, name):
                doc, converter = s.describe(s.ml_rule), CONVERTERS[s.kind]
                setattr(cls, name, Param(Params._dummy(), name, doc, typeConverter=converter))
            if not hasattr(cls, f"get{s.title}"):
                setattr(cls, f"get{s.title}", _getter(name))
        cls._settings = (*getattr(cls, "_settings", ()), *settings)
        return cls

    return decorate


def _keyword_only(func: Callable[..., Any], signature: inspect.Signature) -> Callable[..., Any]:
    """pyspark's keyword_only, with the stage's own signature: unknown keywords are a
    TypeError, and `help` and `inspect` show every param with its default."""

    @functools.wraps(func)
    def wrapper(self: Params, *args: Any, **kwargs: Any) -> Any:
        signature.bind(self, *args, **kwargs)
        self._input_kwargs = kwargs
        return func(self, **kwargs)

    wrapper.__signature__ = signature  # type: ignore[attr-defined]
    return wrapper


def _estimator(**columns: Any) -> Callable[[type[P]], type[P]]:
    """An estimator gets `__init__` and `setParams` taking `columns` and every setting it has
    as keywords, at their defaults, and a setter per param (pyspark's own setters stay)."""

    def decorate(cls: type[P]) -> type[P]:
        keywords = {**columns, **{str(s.param): s.ml_default for s in cls._settings}}
        signature = inspect.Signature([
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY),
            *(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
              for name, default in keywords.items()),
        ])

        def __init__(self: Params, **kwargs: Any) -> None:
            super(cls, self).__init__()
            self._set(**kwargs)

        def setParams(self: Params, **kwargs: Any) -> Params:
            return self._set(**kwargs)

        cls.__init__ = _keyword_only(__init__, signature)
        cls.setParams = _keyword_only(setParams, signature)
        for name in keywords:
            setter = f"set{name[0].upper()}{name[1:]}"
            if not hasattr(cls, setter):
                setattr(cls, setter, _setter(name))
        return cls

    return decorate


@_declare(PRETRAIN)
class _PretrainParams(HasFeaturesCol, HasMaxIter, HasSeed, HasCheckpointInterval):
    """CD-k pretraining settings shared by every estimator; maxIter is epochs per layer."""

    _settings: tuple[Setting, ...]

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(**_defaults(PRETRAIN))


@_declare(_RBM)
class _RBMParams(_PretrainParams, HasOutputCol):
    def __init__(self) -> None:
        super().__init__()
        self._setDefault(outputCol=OUTPUT_COL, **_defaults(_RBM))


@_declare(STACK)
class _StackParams(_PretrainParams):
    """A stack of RBMs and ParDBN's layer schedule (see `sparkdbn.engine.schedules`)."""

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(**_defaults(STACK))


class _DBNParams(_StackParams, HasOutputCol):
    def __init__(self) -> None:
        super().__init__()
        self._setDefault(outputCol=OUTPUT_COL)


@_declare(CLASSIFIER)
class _DBNClassifierParams(HasLabelCol, _StackParams, HasProbabilityCol):
    """Backprop fine-tuning of the unrolled stack with a softmax layer on top."""

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(**_defaults(CLASSIFIER))


# -- fitting ------------------------------------------------------------------------------------


def _values(stage: Params) -> list[tuple[Setting, Any]]:
    """Every setting the stage has, with its value (None while unset)."""
    return [(s, _getter(str(s.param))(stage)) for s in type(stage)._settings]


def _check_params(stage: Params) -> None:
    """Every param against its setting's rule, and the rules between them, before any Spark
    work, so that a bad value fails the fit naming the param."""
    source = stage_source(type(stage).__name__)
    values = {str(s.key): s.default for s in SETTINGS}
    for s, value in _values(stage):
        check(s, value, source)
        if s.key is not None:
            values[s.key] = value
    check_relations(values, source)


def _feature_width(dataset: DataFrame, column: str) -> int:
    """The visible layer's size: the width of the first non-null features value.

    `prepare` then checks every row against it, so ragged data still gets its clear error.
    """
    if column not in dataset.columns:
        raise InputError(f"features column {column!r} not found; columns are {dataset.columns}")
    row = dataset.select(column).where(F.col(column).isNotNull()).first()
    if row is None:
        raise InputError(f"features column {column!r} has no non-null rows")
    value = row[0]
    return value.size if isinstance(value, Vector) else len(value)


def _integer_label(dataset: DataFrame, column: str) -> Column:
    """Spark ML labels are often doubles (StringIndexer); the engine wants whole numbers."""
    label = F.col(column)
    if not isinstance(dataset.schema[column].dataType, T.FractionalType):
        return label
    return F.when(label.isNull() | (label == F.floor(label)), label.cast("long")).otherwise(
        F.raise_error(
            F.concat(F.lit(f"label column {column!r} must hold whole numbers, got "),
                     label.cast("string"))
        )
    )


@contextlib.contextmanager
def _store(spark: SparkSession, base: str | None, uid: str) -> Iterator[str]:
    """A fresh representation store per fit, so no fit can read another fit's versions."""
    if base is not None:
        yield f"{base.rstrip('/')}/{uid}-{uuid.uuid4().hex[:8]}"
        return
    path = f"{tempfile.gettempdir()}/sparkdbn-store-{uuid.uuid4().hex}"
    try:
        yield path
    finally:
        filesystem(spark, path).delete(path, recursive=True)


def _config(stage: Params, width: int, hidden: list[int]) -> TrainConfig:
    """The engine's config of a fit: the stage's params on a `width`-wide input."""
    settings = {s.key: value for s, value in _values(stage) if s.key is not None}
    source = stage_source(type(stage).__name__)
    return TrainConfig(layers=[width, *hidden], **settings).validate(source)


def _train(stage: Params, dataset: DataFrame, hidden: list[int], label: bool) -> TrainingResult:
    """Check the params, build the TrainConfig and run the engine quietly, tracked in MLflow
    when a run is active or MLFLOW_TRACKING_URI is set (`sparkdbn.tracking`)."""
    _check_params(stage)
    if label and stage.getOrDefault("labelCol") not in dataset.columns:
        raise InputError(
            f"label column {stage.getOrDefault('labelCol')!r} not found; columns are "
            f"{dataset.columns}"
        )
    features = stage.getOrDefault("featuresCol")
    cfg = _config(stage, _feature_width(dataset, features), hidden)
    columns = [F.col(features)]
    if "id" in dataset.columns and features != "id":
        columns.append(F.col("id"))
    if label:
        columns.append(_integer_label(dataset, cfg.label_col).alias(cfg.label_col))
    spark = dataset.sparkSession
    base = stage.getStorePath() if isinstance(stage, _StackParams) else None
    directory = stage.getCheckpointDir()
    tracking = tracking_for(cfg)
    reporter = tracking.watch(Reporter(out=io.StringIO()))
    with tracking.run(spark, type(stage).__name__):
        if directory is None:
            with _store(spark, base, stage.uid) as store:
                result = train(
                    spark, cfg, store, train_data=dataset.select(*columns), reporter=reporter
                )
        else:
            result = _train_checkpointed(
                spark, cfg, dataset.select(*columns), Path(directory), base, reporter
            )
        tracking.log_outputs(result)
    return result


def _train_checkpointed(
    spark: SparkSession, cfg: TrainConfig, data: DataFrame, directory: Path, base: str | None,
    reporter: Reporter,
) -> TrainingResult:
    """A fit that saves its state in `directory` and continues from it when fitted again.

    Its representation store must outlive a failed fit too, so it has a fixed place: inside
    `directory`, or under storePath, named after `directory`.
    """
    checkpoint = Checkpoint(directory / "state", cfg.to_dict(), cfg.checkpoint_every)
    checkpoint.prepare("resume")
    key = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:12]
    store = f"{base.rstrip('/')}/checkpointed-{key}" if base else str(directory / "store")
    result = train(spark, cfg, store, train_data=data, checkpoint=checkpoint, reporter=reporter)
    if base is None:
        filesystem(spark, store).delete(store, recursive=True)
    checkpoint.remove()
    with contextlib.suppress(OSError):
        directory.rmdir()  # only if nothing else is in it
    return result


# -- transforming -------------------------------------------------------------------------------

_Outputs = Callable[[np.ndarray], dict[str, np.ndarray]]


def _arrow(values: np.ndarray) -> pa.Array:
    """A 1-D result as double, a 2-D one as array<double> (one list per row)."""
    values = np.ascontiguousarray(values, np.float64)
    if values.ndim == 1:
        return pa.array(values)
    flat = pa.array(values.reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1]).cast(pa.list_(pa.float64()))


def _score_batches(compute: _Outputs, features_col: str, width: int, names: list[str]):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            X, widths = features_to_numpy(batch.column(features_col))
            wrong = np.flatnonzero(widths != width)
            if wrong.size:
                got = widths[wrong[0]]
                what = "a null value" if got < 0 else f"{got} values"
                raise ValueError(
                    f"column {features_col!r} has a row with {what}; the model expects {width}"
                )
            results = compute(X.reshape(-1, width))
            columns = {name: batch.column(name) for name in batch.schema.names}
            columns.update({name: _arrow(results[name]) for name in names})
            yield pa.RecordBatch.from_pydict(columns)

    return run


def _append_columns(
    dataset: DataFrame, features_col: str, width: int, compute: _Outputs, vectors: dict[str, bool]
) -> DataFrame:
    """`dataset` plus computed columns, all in one mapInArrow pass.

    `vectors` maps each new column to True for a DenseVector column, False for a double one;
    vectors leave Python as array<double> and become Vectors in the JVM (`array_to_vector`).
    """
    taken = [name for name in vectors if name in dataset.columns]
    if taken:
        raise ValueError(f"output column(s) {taken} already exist in the input")
    if features_col not in dataset.columns:
        raise ValueError(f"features column {features_col!r} not found in {dataset.columns}")
    schema = T.StructType(
        dataset.schema.fields
        + [
            T.StructField(name, T.ArrayType(T.DoubleType(), False) if vector else T.DoubleType())
            for name, vector in vectors.items()
        ]
    )
    out = dataset.mapInArrow(_score_batches(compute, features_col, width, list(vectors)), schema)
    as_vectors = {name: array_to_vector(F.col(name)) for name, vector in vectors.items() if vector}
    return out.withColumns(as_vectors) if as_vectors else out


def _hidden(stack: dbn_model.DBNModel, name: str) -> _Outputs:
    def compute(X: np.ndarray) -> dict[str, np.ndarray]:
        return {name: stack.transform(X)}

    return compute


def _class_scores(stack: dbn_model.DBNModel, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return class_scores(stack.to_mlp(), np.asarray(X, np.float32))


def _classify(stack: dbn_model.DBNModel, prediction: str, probability: str, raw: str) -> _Outputs:
    def compute(X: np.ndarray) -> dict[str, np.ndarray]:
        logits, proba = _class_scores(stack, X)
        return {prediction: logits.argmax(axis=1), probability: proba, raw: logits}

    return compute


# -- persistence --------------------------------------------------------------------------------


def _save_stack(spark: SparkSession, stack: dbn_model.DBNModel, path: str) -> None:
    """`DBNModel.save` locally, then each file to `path` on the session's file system."""
    fs = filesystem(spark, path)
    with tempfile.TemporaryDirectory(prefix="sparkdbn-model-") as tmp:
        stack.save(tmp)
        for file in sorted(Path(tmp).iterdir()):
            fs.write_bytes(f"{path}/{file.name}", file.read_bytes())


def _load_stack(spark: SparkSession, path: str) -> dbn_model.DBNModel:
    """The model files copied to a local directory and checked by `DBNModel.load`."""
    fs = filesystem(spark, path)
    names = [n for n in fs.list(path) if n.endswith((".npz", ".json"))]
    if dbn_model.MODEL_JSON not in names:
        raise InputError(f"{path!r} has no {dbn_model.MODEL_JSON}: not a saved sparkdbn model")
    with tempfile.TemporaryDirectory(prefix="sparkdbn-model-") as tmp:
        for name in names:
            Path(tmp, name).write_bytes(fs.read_bytes(f"{path}/{name}"))
        try:
            return dbn_model.DBNModel.load(tmp)
        except InputError as err:
            raise InputError(str(err).replace(tmp, path)) from err


class _StackWriter(MLWriter):
    """Params metadata the way pyspark writes it, then the weights as npz files."""

    def __init__(self, instance: _StackModel) -> None:
        super().__init__()
        self.instance = instance

    def _handleOverwrite(self, path: str) -> None:
        # pyspark's own version reaches for the JVM, which a Connect client does not have.
        if is_remote():
            from pyspark.ml.connect.readwrite import RemoteMLWriter

            RemoteMLWriter.handleOverwrite(path, True)
        else:
            super()._handleOverwrite(path)

    def saveImpl(self, path: str) -> None:
        DefaultParamsWriter.saveMetadata(
            self.instance, path, self.sparkSession, extraMetadata={"sparkdbnModel": MODEL_DIR}
        )
        _save_stack(self.sparkSession, self.instance.stack, f"{path.rstrip('/')}/{MODEL_DIR}")


class _StackReader(MLReader[M], Generic[M]):
    def __init__(self, cls: type[M]) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> M:
        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        expected = f"{self.cls.__module__}.{self.cls.__name__}"
        if metadata["class"] != expected or "sparkdbnModel" not in metadata:
            raise InputError(f"{path!r} holds a {metadata['class']}, not a {expected}")
        stack = _load_stack(self.sparkSession, f"{path.rstrip('/')}/{metadata['sparkdbnModel']}")
        instance = self.cls(stack)
        instance._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(instance, metadata)
        return instance


class _StackModel(Model, MLWritable, MLReadable):
    """A fitted stage that holds a `sparkdbn.model.DBNModel` (numpy weights).

    `trainingMetrics` is what metrics.json would hold for the fit (per-layer timelines and
    epochs with the monitors' figures when validationFraction is set, fine-tuning curve); it
    is not saved, so it is None for a loaded model. `logLikelihood` measures the model on data.
    """

    def __init__(self, stack: dbn_model.DBNModel | None = None) -> None:
        super().__init__()
        self._stack = stack
        self.trainingMetrics: dict[str, Any] | None = None

    @property
    def stack(self) -> dbn_model.DBNModel:
        """The trained numpy model: layers of RBMParams, `transform`, `save`."""
        if self._stack is None:
            raise ValueError(f"{type(self).__name__} {self.uid} holds no trained model")
        return self._stack

    def logLikelihood(
        self, dataset: DataFrame, aisChains: int = DEFAULT_CHAINS,
        aisBetas: int = DEFAULT_BETAS, seed: int = 0,
    ) -> dict[str, Any]:
        """What `log_likelihood` writes into metrics.json, for this model on the rows of
        `dataset` (featuresCol, values in [0, 1]): each RBM layer's mean log-likelihood with
        its AIS log Z and interval, and for two layers or more the DBN's lower bound. A
        classifier's layers are its fine-tuned ones, so its figures measure those weights."""
        if self.stack.visible != "bernoulli":
            raise InputError(
                f"the log-likelihood needs Bernoulli visible units, the model has "
                f"{self.stack.visible!r} ones"
            )
        try:
            settings = AISSettings(aisChains, aisBetas, seed=seed)
        except ValueError as err:
            raise InputError(str(err)) from err
        features = self.getOrDefault("featuresCol")
        if features not in dataset.columns:
            raise InputError(f"features column {features!r} not found; columns are "
                             f"{dataset.columns}")
        columns = [features] + (["id"] if "id" in dataset.columns and features != "id" else [])
        data = prepare(dataset.sparkSession, dataset.select(*columns), features)
        try:
            if data.width != self.stack.sizes[0]:
                raise InputError(
                    f"column {features!r} has {data.width} values per row, the model expects "
                    f"{self.stack.sizes[0]}"
                )
            return model_likelihood(dataset.sparkSession, data, self.stack, settings).to_dict()
        finally:
            data.unpersist()

    def write(self) -> MLWriter:
        return _StackWriter(self)

    @classmethod
    def read(cls: type[M]) -> _StackReader[M]:
        return _StackReader(cls)


class _HiddenModel(_StackModel, HasFeaturesCol, HasOutputCol):
    """featuresCol → outputCol: the top layer's hidden probabilities P(h = 1 | v)."""

    def _transform(self, dataset: DataFrame) -> DataFrame:
        width = self.stack.sizes[0]
        compute = _hidden(self.stack, self.getOutputCol())
        return _append_columns(
            dataset, self.getFeaturesCol(), width, compute, {self.getOutputCol(): True}
        )

    def setFeaturesCol(self, value: str) -> Self:
        return self._set(featuresCol=value)

    def setOutputCol(self, value: str) -> Self:
        return self._set(outputCol=value)


# -- RBM ----------------------------------------------------------------------------------------


@_estimator(outputCol=OUTPUT_COL)
class RBM(
    Estimator["RBMModel"],
    _RBMParams,
    DefaultParamsWritable,
    DefaultParamsReadable["RBM"],
):
    """One Restricted Boltzmann Machine trained by data-parallel CD-k (one epoch = one stage)."""

    def _fit(self, dataset: DataFrame) -> RBMModel:
        result = _train(self, dataset, [self.getNumHidden()], label=False)
        model = RBMModel(result.model)
        model.trainingMetrics = metrics_dict(result)
        return self._copyValues(model)


class RBMModel(_HiddenModel, _RBMParams):
    """Hidden probabilities of a trained RBM as a DenseVector column (outputCol)."""


# -- DBN ----------------------------------------------------------------------------------------


@_estimator(outputCol=OUTPUT_COL)
class DBN(
    Estimator["DBNModel"],
    _DBNParams,
    DefaultParamsWritable,
    DefaultParamsReadable["DBN"],
):
    """A Deep Belief Network pretrained layer by layer under a ParDBN schedule (no labels)."""

    def _fit(self, dataset: DataFrame) -> DBNModel:
        result = _train(self, dataset, self.getLayers(), label=False)
        model = DBNModel(result.model)
        model.trainingMetrics = metrics_dict(result)
        return self._copyValues(model)


class DBNModel(_HiddenModel, _DBNParams):
    """The top layer's hidden probabilities of a pretrained DBN as a DenseVector (outputCol)."""


# -- DBNClassifier ------------------------------------------------------------------------------


@_estimator(
    predictionCol="prediction", probabilityCol="probability", rawPredictionCol="rawPrediction"
)
class DBNClassifier(
    Classifier["DBNClassificationModel"],
    _DBNClassifierParams,
    DefaultParamsWritable,
    DefaultParamsReadable["DBNClassifier"],
):
    """Pretrain a DBN, then fine-tune it with a softmax layer by backprop (labels 0 … n-1).

    The label column may be integer or whole-valued double (as StringIndexer makes); the
    number of classes is the largest training label + 1.
    """

    def _fit(self, dataset: DataFrame) -> DBNClassificationModel:
        result = _train(self, dataset, self.getLayers(), label=True)
        model = DBNClassificationModel(result.model)
        model.trainingMetrics = metrics_dict(result)
        return self._copyValues(model)


class DBNClassificationModel(_StackModel, ClassificationModel, _DBNClassifierParams):
    """A fine-tuned DBN: `prediction` (double), `probability` (softmax, DenseVector) and
    `rawPrediction` (the softmax layer's logits, DenseVector, as Spark's
    MultilayerPerceptronClassificationModel). An output column set to "" is not produced."""

    @property
    def numClasses(self) -> int:
        return int(self.stack.n_classes)

    @property
    def numFeatures(self) -> int:
        return self.stack.sizes[0]

    def setProbabilityCol(self, value: str) -> DBNClassificationModel:
        return self._set(probabilityCol=value)

    def predictRaw(self, value: Vector) -> DenseVector:
        return DenseVector(self._scores(value)[0])

    def predictProbability(self, value: Vector) -> DenseVector:
        return DenseVector(self._scores(value)[1])

    def predict(self, value: Vector) -> float:
        return float(np.argmax(self._scores(value)[0]))

    def _scores(self, value: Vector) -> tuple[np.ndarray, np.ndarray]:
        logits, proba = _class_scores(self.stack, value.toArray().astype(np.float32)[None, :])
        return logits[0], proba[0]

    def _transform(self, dataset: DataFrame) -> DataFrame:
        if self.stack.classifier is None:
            raise ValueError(f"{self.uid}: the model has no classifier layer")
        names = (self.getPredictionCol(), self.getProbabilityCol(), self.getRawPredictionCol())
        compute = _classify(self.stack, *names)
        kinds = zip(names, (False, True, True), strict=True)
        vectors = {name: vector for name, vector in kinds if name}
        if not vectors:
            return dataset
        return _append_columns(dataset, self.getFeaturesCol(), self.numFeatures, compute, vectors)
