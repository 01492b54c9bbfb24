"""pyspark.ml Estimators and Models over the sparkdbn engine: RBM, DBN and DBNClassifier.

They behave like Spark's own stages, so they compose with `Pipeline`, `CrossValidator` and
`ParamGridBuilder`: Params with getters and setters, `keyword_only` constructors, `fit`,
`transform`, `save` and `load`. Fitting runs `sparkdbn.engine.training.train`; transforming
runs the numpy forward pass in one `mapInArrow`. Both use DataFrame APIs only (no RDDs,
broadcasts or SparkContext), so they also work over Spark Connect.

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
import hashlib
import io
import math
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

import numpy as np
import pyarrow as pa
from pyspark import keyword_only
from pyspark.ml.base import Estimator, Model
from pyspark.ml.classification import ClassificationModel, Classifier
from pyspark.ml.functions import array_to_vector
from pyspark.ml.linalg import DenseVector, Vector
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import (
    HasCheckpointInterval,
    HasFeaturesCol,
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
from sparkdbn.config import (
    CACHE_VERSIONS,
    FINETUNE_EPOCHS,
    REPRESENTATIONS,
    ROUGH_VERSIONS,
    SCHEDULES,
    VISIBLE,
    TrainConfig,
)
from sparkdbn.engine.checkpoint import Checkpoint
from sparkdbn.engine.filesystem import filesystem
from sparkdbn.engine.training import TrainingResult, train
from sparkdbn.errors import InputError
from sparkdbn.kernels.averaging import CHOICES, LOCAL_MOMENTUM
from sparkdbn.kernels.mlp import LR_SCHEDULES, class_scores
from sparkdbn.outputs import metrics_dict

__all__ = ["DBN", "RBM", "DBNClassificationModel", "DBNClassifier", "DBNModel", "RBMModel"]

MODEL_DIR = "model"
_DEFAULTS = TrainConfig()
M = TypeVar("M", bound="_StackModel")


# -- Params -------------------------------------------------------------------------------------


def _param(name: str, doc: str, converter: Callable[[Any], Any]) -> Param:
    return Param(Params._dummy(), name, doc, typeConverter=converter)


class _PretrainParams(HasFeaturesCol, HasMaxIter, HasSeed, HasCheckpointInterval):
    """CD-k pretraining settings shared by every estimator; maxIter is epochs per layer."""

    visible: Param[str] = _param(
        "visible", "visible units: bernoulli (data in [0, 1]) or gaussian (standardized data)",
        TypeConverters.toString,
    )
    k: Param[int] = _param("k", "Gibbs steps of CD-k (> 0)", TypeConverters.toInt)
    learningRate: Param[float] = _param(
        "learningRate", "CD learning rate (> 0)", TypeConverters.toFloat
    )
    momentum: Param[float] = _param("momentum", "CD momentum in [0, 1)", TypeConverters.toFloat)
    weightDecay: Param[float] = _param(
        "weightDecay", "L2 weight decay of CD (>= 0)", TypeConverters.toFloat
    )
    batchSize: Param[int] = _param("batchSize", "mini-batch rows (> 0)", TypeConverters.toInt)
    numPartitions: Param[int] = _param(
        "numPartitions",
        "repartition the training data into this many partitions (by id); unset: as given",
        TypeConverters.toInt,
    )
    averaging: Param[str] = _param(
        "averaging",
        "how the partitions' models are combined, in pretraining and fine-tuning: auto (derived "
        "from the partitions and their rows) | plain (the paper's average, once per epoch) | "
        "block | nesterov (block momentum)",
        TypeConverters.toString,
    )
    roundsPerEpoch: Param[int] = _param(
        "roundsPerEpoch",
        "averaging rounds per epoch (> 0); unset: derived (plain: 1)",
        TypeConverters.toInt,
    )
    blockMomentum: Param[float] = _param(
        "blockMomentum", "block momentum in [0, 1); unset: derived",
        TypeConverters.toFloat,
    )
    blockLearningRate: Param[float] = _param(
        "blockLearningRate", "block learning rate (> 0); unset: 1", TypeConverters.toFloat
    )
    localMomentum: Param[str] = _param(
        "localMomentum",
        "the partitions' momentum at each round: averaged | reset; unset: derived",
        TypeConverters.toString,
    )
    localLrScale: Param[float] = _param(
        "localLrScale", "factor on the partitions' learning rates (> 0); unset: derived",
        TypeConverters.toFloat,
    )
    localBatchSize: Param[int] = _param(
        "localBatchSize",
        "the partitions' mini-batch rows (> 0); unset: derived (auto: smaller for small "
        "partitions)",
        TypeConverters.toInt,
    )
    lrWarmupEpochs: Param[float] = _param(
        "lrWarmupEpochs", "epochs to reach localLrScale from 1 (>= 0); unset: derived",
        TypeConverters.toFloat,
    )
    checkpointDir: Param[str] = _param(
        "checkpointDir",
        "a directory on the driver's file system for the fit's checkpoint, saved every "
        "checkpointInterval epochs: a fit that fails or is killed continues from it when fitted "
        "again with the same params and data; removed when the fit succeeds. Unset: none",
        TypeConverters.toString,
    )

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(
            visible=_DEFAULTS.visible, k=_DEFAULTS.k, learningRate=_DEFAULTS.learning_rate,
            momentum=_DEFAULTS.momentum, weightDecay=_DEFAULTS.weight_decay,
            batchSize=_DEFAULTS.batch_size, maxIter=_DEFAULTS.epochs, seed=_DEFAULTS.seed,
            averaging=_DEFAULTS.averaging, checkpointInterval=_DEFAULTS.checkpoint_every,
        )

    def getVisible(self) -> str:
        return self.getOrDefault(self.visible)

    def getK(self) -> int:
        return self.getOrDefault(self.k)

    def getLearningRate(self) -> float:
        return self.getOrDefault(self.learningRate)

    def getMomentum(self) -> float:
        return self.getOrDefault(self.momentum)

    def getWeightDecay(self) -> float:
        return self.getOrDefault(self.weightDecay)

    def getBatchSize(self) -> int:
        return self.getOrDefault(self.batchSize)

    def getNumPartitions(self) -> int | None:
        return self.getOrDefault(self.numPartitions) if self.isDefined(self.numPartitions) else None

    def getAveraging(self) -> str:
        return self.getOrDefault(self.averaging)

    def getRoundsPerEpoch(self) -> int | None:
        return self._optional(self.roundsPerEpoch)

    def getBlockMomentum(self) -> float | None:
        return self._optional(self.blockMomentum)

    def getBlockLearningRate(self) -> float | None:
        return self._optional(self.blockLearningRate)

    def getLocalMomentum(self) -> str | None:
        return self._optional(self.localMomentum)

    def getLocalLrScale(self) -> float | None:
        return self._optional(self.localLrScale)

    def getLocalBatchSize(self) -> int | None:
        return self._optional(self.localBatchSize)

    def getLrWarmupEpochs(self) -> float | None:
        return self._optional(self.lrWarmupEpochs)

    def getCheckpointDir(self) -> str | None:
        return self._optional(self.checkpointDir)

    def _optional(self, param: Param) -> Any:
        return self.getOrDefault(param) if self.isDefined(param) else None


class _RBMParams(_PretrainParams, HasOutputCol):
    numHidden: Param[int] = _param("numHidden", "hidden units (> 0)", TypeConverters.toInt)

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(outputCol="hidden", numHidden=_DEFAULTS.layers[-1])

    def getNumHidden(self) -> int:
        return self.getOrDefault(self.numHidden)


class _StackParams(_PretrainParams):
    """A stack of RBMs and ParDBN's layer schedule (see `sparkdbn.engine.schedules`)."""

    layers: Param[list[int]] = _param(
        "layers",
        "hidden layer sizes, bottom first; the visible size is the features' width",
        TypeConverters.toListInt,
    )
    schedule: Param[str] = _param(
        "schedule",
        "layer schedule: sequential|pipelined|tied (tied needs each layer's shape to equal, or "
        "be the transpose of, the one below, counting the visible width: e.g. 784 with [500, 784])",
        TypeConverters.toString,
    )
    startAfter: Param[int] = _param(
        "startAfter", "epochs before a layer publishes its first rough version (> 0)",
        TypeConverters.toInt,
    )
    publishEvery: Param[int] = _param(
        "publishEvery", "epochs between a layer's rough versions (> 0)", TypeConverters.toInt
    )
    finalEpochs: Param[int] = _param(
        "finalEpochs",
        "epochs an upper layer trains on the final version of its input (> 0, <= maxIter)",
        TypeConverters.toInt,
    )
    representation: Param[str] = _param(
        "representation", "what upper layers train on: probabilities|sample",
        TypeConverters.toString,
    )
    roughVersions: Param[str] = _param(
        "roughVersions",
        "how rough versions are made: in_epoch (the epoch's own positive phase, no extra "
        "pass) | after_epoch (a pass with the epoch's averaged weights)",
        TypeConverters.toString,
    )
    cacheVersions: Param[str] = _param(
        "cacheVersions",
        "keep the versions an upper layer loads in Spark's cache: auto (unless the store is on "
        "the local disk of a classic application, where rereading costs no more) | always | "
        "never",
        TypeConverters.toString,
    )
    keepVersions: Param[int] = _param(
        "keepVersions", "versions the store keeps per layer, besides leased and final ones (> 0)",
        TypeConverters.toInt,
    )
    storePath: Param[str] = _param(
        "storePath",
        "directory for the rough representations of the pipelined and tied schedules (any "
        "Hadoop file system; under Spark Connect a path the client and the cluster share); "
        "each fit writes a new subdirectory and keeps it; unset: a temporary directory, removed "
        "after the fit",
        TypeConverters.toString,
    )

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(
            layers=_DEFAULTS.layers[1:], schedule=_DEFAULTS.schedule,
            startAfter=_DEFAULTS.start_after, publishEvery=_DEFAULTS.publish_every,
            finalEpochs=_DEFAULTS.final_epochs, representation=_DEFAULTS.representation,
            roughVersions=_DEFAULTS.rough_versions, cacheVersions=_DEFAULTS.cache_versions,
            keepVersions=_DEFAULTS.keep_versions,
        )

    def getLayers(self) -> list[int]:
        return self.getOrDefault(self.layers)

    def getSchedule(self) -> str:
        return self.getOrDefault(self.schedule)

    def getStartAfter(self) -> int:
        return self.getOrDefault(self.startAfter)

    def getPublishEvery(self) -> int:
        return self.getOrDefault(self.publishEvery)

    def getFinalEpochs(self) -> int:
        return self.getOrDefault(self.finalEpochs)

    def getRepresentation(self) -> str:
        return self.getOrDefault(self.representation)

    def getRoughVersions(self) -> str:
        return self.getOrDefault(self.roughVersions)

    def getCacheVersions(self) -> str:
        return self.getOrDefault(self.cacheVersions)

    def getKeepVersions(self) -> int:
        return self.getOrDefault(self.keepVersions)

    def getStorePath(self) -> str | None:
        return self.getOrDefault(self.storePath) if self.isDefined(self.storePath) else None


class _DBNParams(_StackParams, HasOutputCol):
    def __init__(self) -> None:
        super().__init__()
        self._setDefault(outputCol="hidden")


class _DBNClassifierParams(_StackParams, HasProbabilityCol):
    """Backprop fine-tuning of the unrolled stack with a softmax layer on top."""

    finetuneEpochs: Param[int] = _param(
        "finetuneEpochs", "backprop fine-tuning epochs (> 0)", TypeConverters.toInt
    )
    finetuneLearningRate: Param[float] = _param(
        "finetuneLearningRate", "fine-tuning SGD rate (> 0)", TypeConverters.toFloat
    )
    finetuneMomentum: Param[float] = _param(
        "finetuneMomentum", "fine-tuning momentum in [0, 1)", TypeConverters.toFloat
    )
    finetuneWeightDecay: Param[float] = _param(
        "finetuneWeightDecay", "fine-tuning L2 weight decay (>= 0)", TypeConverters.toFloat
    )
    finetuneBatchSize: Param[int] = _param(
        "finetuneBatchSize", "fine-tuning mini-batch rows (> 0)", TypeConverters.toInt
    )
    finetuneLrDecay: Param[float] = _param(
        "finetuneLrDecay", "fine-tuning learning rate factor per epoch (> 0), exponential schedule",
        TypeConverters.toFloat,
    )
    finetuneLrSchedule: Param[str] = _param(
        "finetuneLrSchedule", "fine-tuning learning rate schedule: exponential|cosine",
        TypeConverters.toString,
    )

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(
            finetuneEpochs=FINETUNE_EPOCHS, finetuneLearningRate=_DEFAULTS.finetune_learning_rate,
            finetuneMomentum=_DEFAULTS.finetune_momentum,
            finetuneWeightDecay=_DEFAULTS.finetune_weight_decay,
            finetuneBatchSize=_DEFAULTS.finetune_batch_size,
            finetuneLrDecay=_DEFAULTS.finetune_lr_decay,
            finetuneLrSchedule=_DEFAULTS.finetune_lr_schedule,
        )

    def getFinetuneEpochs(self) -> int:
        return self.getOrDefault(self.finetuneEpochs)

    def getFinetuneLearningRate(self) -> float:
        return self.getOrDefault(self.finetuneLearningRate)

    def getFinetuneMomentum(self) -> float:
        return self.getOrDefault(self.finetuneMomentum)

    def getFinetuneWeightDecay(self) -> float:
        return self.getOrDefault(self.finetuneWeightDecay)

    def getFinetuneBatchSize(self) -> int:
        return self.getOrDefault(self.finetuneBatchSize)

    def getFinetuneLrDecay(self) -> float:
        return self.getOrDefault(self.finetuneLrDecay)

    def getFinetuneLrSchedule(self) -> str:
        return self.getOrDefault(self.finetuneLrSchedule)


class _PretrainSetters(Params):
    """Setters of the training params, for the estimators; a fitted model's stay as trained."""

    def setFeaturesCol(self, value: str) -> Self:
        return self._set(featuresCol=value)

    def setVisible(self, value: str) -> Self:
        return self._set(visible=value)

    def setK(self, value: int) -> Self:
        return self._set(k=value)

    def setLearningRate(self, value: float) -> Self:
        return self._set(learningRate=value)

    def setMomentum(self, value: float) -> Self:
        return self._set(momentum=value)

    def setWeightDecay(self, value: float) -> Self:
        return self._set(weightDecay=value)

    def setBatchSize(self, value: int) -> Self:
        return self._set(batchSize=value)

    def setMaxIter(self, value: int) -> Self:
        return self._set(maxIter=value)

    def setSeed(self, value: int) -> Self:
        return self._set(seed=value)

    def setNumPartitions(self, value: int) -> Self:
        return self._set(numPartitions=value)

    def setAveraging(self, value: str) -> Self:
        return self._set(averaging=value)

    def setRoundsPerEpoch(self, value: int) -> Self:
        return self._set(roundsPerEpoch=value)

    def setBlockMomentum(self, value: float) -> Self:
        return self._set(blockMomentum=value)

    def setBlockLearningRate(self, value: float) -> Self:
        return self._set(blockLearningRate=value)

    def setLocalMomentum(self, value: str) -> Self:
        return self._set(localMomentum=value)

    def setLocalLrScale(self, value: float) -> Self:
        return self._set(localLrScale=value)

    def setLocalBatchSize(self, value: int) -> Self:
        return self._set(localBatchSize=value)

    def setLrWarmupEpochs(self, value: float) -> Self:
        return self._set(lrWarmupEpochs=value)

    def setCheckpointDir(self, value: str) -> Self:
        return self._set(checkpointDir=value)

    def setCheckpointInterval(self, value: int) -> Self:
        return self._set(checkpointInterval=value)


class _StackSetters(_PretrainSetters):
    def setLayers(self, value: list[int]) -> Self:
        return self._set(layers=value)

    def setSchedule(self, value: str) -> Self:
        return self._set(schedule=value)

    def setStartAfter(self, value: int) -> Self:
        return self._set(startAfter=value)

    def setPublishEvery(self, value: int) -> Self:
        return self._set(publishEvery=value)

    def setFinalEpochs(self, value: int) -> Self:
        return self._set(finalEpochs=value)

    def setRepresentation(self, value: str) -> Self:
        return self._set(representation=value)

    def setRoughVersions(self, value: str) -> Self:
        return self._set(roughVersions=value)

    def setCacheVersions(self, value: str) -> Self:
        return self._set(cacheVersions=value)

    def setKeepVersions(self, value: int) -> Self:
        return self._set(keepVersions=value)

    def setStorePath(self, value: str) -> Self:
        return self._set(storePath=value)


# -- fitting ------------------------------------------------------------------------------------

# Param name → TrainConfig field, for the params an estimator has.
_CONFIG_FIELDS = {
    "featuresCol": "features_col", "labelCol": "label_col", "visible": "visible", "k": "k",
    "learningRate": "learning_rate", "momentum": "momentum", "weightDecay": "weight_decay",
    "batchSize": "batch_size", "maxIter": "epochs", "seed": "seed",
    "numPartitions": "partitions", "averaging": "averaging",
    "roundsPerEpoch": "rounds_per_epoch", "blockMomentum": "block_momentum",
    "blockLearningRate": "block_learning_rate", "localMomentum": "local_momentum",
    "localLrScale": "local_lr_scale", "lrWarmupEpochs": "lr_warmup_epochs",
    "localBatchSize": "local_batch_size", "checkpointInterval": "checkpoint_every",
    "schedule": "schedule", "startAfter": "start_after",
    "publishEvery": "publish_every", "finalEpochs": "final_epochs",
    "representation": "representation", "roughVersions": "rough_versions",
    "cacheVersions": "cache_versions", "keepVersions": "keep_versions",
    "finetuneEpochs": "finetune_epochs",
    "finetuneLearningRate": "finetune_learning_rate", "finetuneMomentum": "finetune_momentum",
    "finetuneWeightDecay": "finetune_weight_decay", "finetuneBatchSize": "finetune_batch_size",
    "finetuneLrDecay": "finetune_lr_decay", "finetuneLrSchedule": "finetune_lr_schedule",
}

_Rule = tuple[Callable[[Any], bool], str]
_POSITIVE: _Rule = (lambda v: v > 0, "> 0")
_FRACTION: _Rule = (lambda v: 0 <= v < 1, "in [0, 1)")
_NON_NEGATIVE: _Rule = (lambda v: v >= 0, ">= 0")


def _one_of(choices: tuple[str, ...]) -> _Rule:
    return (lambda v: v in choices, f"one of {'|'.join(choices)}")


_RULES: dict[str, _Rule] = {
    **dict.fromkeys(
        ("numHidden", "k", "learningRate", "batchSize", "maxIter", "numPartitions", "startAfter",
         "publishEvery", "finalEpochs", "keepVersions", "finetuneEpochs", "finetuneLearningRate",
         "finetuneBatchSize", "finetuneLrDecay", "roundsPerEpoch", "blockLearningRate",
         "localLrScale", "localBatchSize", "checkpointInterval"),
        _POSITIVE,
    ),
    **dict.fromkeys(("momentum", "finetuneMomentum", "blockMomentum"), _FRACTION),
    **dict.fromkeys(("weightDecay", "finetuneWeightDecay", "seed", "lrWarmupEpochs"),
                    _NON_NEGATIVE),
    "layers": (lambda v: len(v) > 0 and min(v) > 0, "a non-empty list of positive sizes"),
    "visible": _one_of(VISIBLE),
    "schedule": _one_of(SCHEDULES),
    "representation": _one_of(REPRESENTATIONS),
    "roughVersions": _one_of(ROUGH_VERSIONS),
    "cacheVersions": _one_of(CACHE_VERSIONS),
    "finetuneLrSchedule": _one_of(LR_SCHEDULES),
    "averaging": _one_of(CHOICES),
    "localMomentum": _one_of(LOCAL_MOMENTUM),
}


def _check_params(stage: Params) -> None:
    """Every param against its range, so a bad value fails the fit naming the param."""
    where = type(stage).__name__
    for param in stage.params:
        rule = _RULES.get(param.name)
        value = stage.getOrDefault(param) if stage.isDefined(param) else None
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{where} param {param.name} must be a finite number, got {value!r}")
        if rule is not None and value is not None and not rule[0](value):
            raise InputError(f"{where} param {param.name} must be {rule[1]}, got {value!r}")
    if (
        stage.hasParam("schedule")
        and stage.getOrDefault("schedule") != "sequential"
        and stage.getOrDefault("finalEpochs") > stage.getOrDefault("maxIter")
    ):
        raise InputError(
            f"{where} param finalEpochs must not exceed maxIter "
            f"({stage.getOrDefault('maxIter')}) under schedule {stage.getOrDefault('schedule')}, "
            f"got {stage.getOrDefault('finalEpochs')}"
        )


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
    settings = {
        name: stage.getOrDefault(param)
        for param, name in _CONFIG_FIELDS.items()
        if stage.hasParam(param) and stage.isDefined(param)
    }
    return TrainConfig(layers=[width, *hidden], **settings).validate()


def _train(stage: Params, dataset: DataFrame, hidden: list[int], label: bool) -> TrainingResult:
    """Check the params, build the TrainConfig and run the engine quietly."""
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
    if directory is None:
        with _store(spark, base, stage.uid) as store:
            return train(spark, cfg, store, train_data=dataset.select(*columns), out=io.StringIO())
    return _train_checkpointed(spark, cfg, dataset.select(*columns), Path(directory), base)


def _train_checkpointed(
    spark: SparkSession, cfg: TrainConfig, data: DataFrame, directory: Path, base: str | None
) -> TrainingResult:
    """A fit that saves its state in `directory` and continues from it when fitted again.

    Its representation store must outlive a failed fit too, so it has a fixed place: inside
    `directory`, or under storePath, named after `directory`.
    """
    checkpoint = Checkpoint(directory / "state", cfg.to_dict(), cfg.checkpoint_every)
    checkpoint.prepare("resume")
    key = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:12]
    store = f"{base.rstrip('/')}/checkpointed-{key}" if base else str(directory / "store")
    result = train(spark, cfg, store, train_data=data, out=io.StringIO(), checkpoint=checkpoint)
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
    epochs, fine-tuning curve); it is not saved, so it is None for a loaded model.
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


class RBM(
    Estimator["RBMModel"],
    _RBMParams,
    _PretrainSetters,
    DefaultParamsWritable,
    DefaultParamsReadable["RBM"],
):
    """One Restricted Boltzmann Machine trained by data-parallel CD-k (one epoch = one stage)."""

    @keyword_only
    def __init__(
        self,
        *,
        featuresCol: str = "features",
        outputCol: str = "hidden",
        numHidden: int = _DEFAULTS.layers[-1],
        visible: str = _DEFAULTS.visible,
        k: int = _DEFAULTS.k,
        learningRate: float = _DEFAULTS.learning_rate,
        momentum: float = _DEFAULTS.momentum,
        weightDecay: float = _DEFAULTS.weight_decay,
        batchSize: int = _DEFAULTS.batch_size,
        maxIter: int = _DEFAULTS.epochs,
        seed: int = _DEFAULTS.seed,
        numPartitions: int | None = None,
        averaging: str = _DEFAULTS.averaging,
        roundsPerEpoch: int | None = None,
        blockMomentum: float | None = None,
        blockLearningRate: float | None = None,
        localMomentum: str | None = None,
        localLrScale: float | None = None,
        lrWarmupEpochs: float | None = None,
        localBatchSize: int | None = None,
        checkpointDir: str | None = None,
        checkpointInterval: int = _DEFAULTS.checkpoint_every,
    ) -> None:
        super().__init__()
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(
        self,
        *,
        featuresCol: str = "features",
        outputCol: str = "hidden",
        numHidden: int = _DEFAULTS.layers[-1],
        visible: str = _DEFAULTS.visible,
        k: int = _DEFAULTS.k,
        learningRate: float = _DEFAULTS.learning_rate,
        momentum: float = _DEFAULTS.momentum,
        weightDecay: float = _DEFAULTS.weight_decay,
        batchSize: int = _DEFAULTS.batch_size,
        maxIter: int = _DEFAULTS.epochs,
        seed: int = _DEFAULTS.seed,
        numPartitions: int | None = None,
        averaging: str = _DEFAULTS.averaging,
        roundsPerEpoch: int | None = None,
        blockMomentum: float | None = None,
        blockLearningRate: float | None = None,
        localMomentum: str | None = None,
        localLrScale: float | None = None,
        lrWarmupEpochs: float | None = None,
        localBatchSize: int | None = None,
        checkpointDir: str | None = None,
        checkpointInterval: int = _DEFAULTS.checkpoint_every,
    ) -> RBM:
        return self._set(**self._input_kwargs)

    def setOutputCol(self, value: str) -> RBM:
        return self._set(outputCol=value)

    def setNumHidden(self, value: int) -> RBM:
        return self._set(numHidden=value)

    def _fit(self, dataset: DataFrame) -> RBMModel:
        result = _train(self, dataset, [self.getNumHidden()], label=False)
        model = RBMModel(result.model)
        model.trainingMetrics = metrics_dict(result)
        return self._copyValues(model)


class RBMModel(_HiddenModel, _RBMParams):
    """Hidden probabilities of a trained RBM as a DenseVector column (outputCol)."""


# -- DBN ----------------------------------------------------------------------------------------


class DBN(
    Estimator["DBNModel"],
    _DBNParams,
    _StackSetters,
    DefaultParamsWritable,
    DefaultParamsReadable["DBN"],
):
    """A Deep Belief Network pretrained layer by layer under a ParDBN schedule (no labels)."""

    @keyword_only
    def __init__(
        self,
        *,
        featuresCol: str = "features",
        outputCol: str = "hidden",
        layers: list[int] = _DEFAULTS.layers[1:],
        visible: str = _DEFAULTS.visible,
        k: int = _DEFAULTS.k,
        learningRate: float = _DEFAULTS.learning_rate,
        momentum: float = _DEFAULTS.momentum,
        weightDecay: float = _DEFAULTS.weight_decay,
        batchSize: int = _DEFAULTS.batch_size,
        maxIter: int = _DEFAULTS.epochs,
        seed: int = _DEFAULTS.seed,
        numPartitions: int | None = None,
        averaging: str = _DEFAULTS.averaging,
        roundsPerEpoch: int | None = None,
        blockMomentum: float | None = None,
        blockLearningRate: float | None = None,
        localMomentum: str | None = None,
        localLrScale: float | None = None,
        lrWarmupEpochs: float | None = None,
        localBatchSize: int | None = None,
        checkpointDir: str | None = None,
        checkpointInterval: int = _DEFAULTS.checkpoint_every,
        schedule: str = _DEFAULTS.schedule,
        startAfter: int = _DEFAULTS.start_after,
        publishEvery: int = _DEFAULTS.publish_every,
        finalEpochs: int = _DEFAULTS.final_epochs,
        representation: str = _DEFAULTS.representation,
        roughVersions: str = _DEFAULTS.rough_versions,
        cacheVersions: str = _DEFAULTS.cache_versions,
        keepVersions: int = _DEFAULTS.keep_versions,
        storePath: str | None = None,
    ) -> None:
        super().__init__()
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(
        self,
        *,
        featuresCol: str = "features",
        outputCol: str = "hidden",
        layers: list[int] = _DEFAULTS.layers[1:],
        visible: str = _DEFAULTS.visible,
        k: int = _DEFAULTS.k,
        learningRate: float = _DEFAULTS.learning_rate,
        momentum: float = _DEFAULTS.momentum,
        weightDecay: float = _DEFAULTS.weight_decay,
        batchSize: int = _DEFAULTS.batch_size,
        maxIter: int = _DEFAULTS.epochs,
        seed: int = _DEFAULTS.seed,
        numPartitions: int | None = None,
        averaging: str = _DEFAULTS.averaging,
        roundsPerEpoch: int | None = None,
        blockMomentum: float | None = None,
        blockLearningRate: float | None = None,
        localMomentum: str | None = None,
        localLrScale: float | None = None,
        lrWarmupEpochs: float | None = None,
        localBatchSize: int | None = None,
        checkpointDir: str | None = None,
        checkpointInterval: int = _DEFAULTS.checkpoint_every,
        schedule: str = _DEFAULTS.schedule,
        startAfter: int = _DEFAULTS.start_after,
        publishEvery: int = _DEFAULTS.publish_every,
        finalEpochs: int = _DEFAULTS.final_epochs,
        representation: str = _DEFAULTS.representation,
        roughVersions: str = _DEFAULTS.rough_versions,
        cacheVersions: str = _DEFAULTS.cache_versions,
        keepVersions: int = _DEFAULTS.keep_versions,
        storePath: str | None = None,
    ) -> DBN:
        return self._set(**self._input_kwargs)

    def setOutputCol(self, value: str) -> DBN:
        return self._set(outputCol=value)

    def _fit(self, dataset: DataFrame) -> DBNModel:
        result = _train(self, dataset, self.getLayers(), label=False)
        model = DBNModel(result.model)
        model.trainingMetrics = metrics_dict(result)
        return self._copyValues(model)


class DBNModel(_HiddenModel, _DBNParams):
    """The top layer's hidden probabilities of a pretrained DBN as a DenseVector (outputCol)."""


# -- DBNClassifier ------------------------------------------------------------------------------


class DBNClassifier(
    Classifier["DBNClassificationModel"],
    _DBNClassifierParams,
    _StackSetters,
    DefaultParamsWritable,
    DefaultParamsReadable["DBNClassifier"],
):
    """Pretrain a DBN, then fine-tune it with a softmax layer by backprop (labels 0 … n-1).

    The label column may be integer or whole-valued double (as StringIndexer makes); the
    number of classes is the largest training label + 1.
    """

    @keyword_only
    def __init__(
        self,
        *,
        featuresCol: str = "features",
        labelCol: str = "label",
        predictionCol: str = "prediction",
        probabilityCol: str = "probability",
        rawPredictionCol: str = "rawPrediction",
        layers: list[int] = _DEFAULTS.layers[1:],
        visible: str = _DEFAULTS.visible,
        k: int = _DEFAULTS.k,
        learningRate: float = _DEFAULTS.learning_rate,
        momentum: float = _DEFAULTS.momentum,
        weightDecay: float = _DEFAULTS.weight_decay,
        batchSize: int = _DEFAULTS.batch_size,
        maxIter: int = _DEFAULTS.epochs,
        seed: int = _DEFAULTS.seed,
        numPartitions: int | None = None,
        averaging: str = _DEFAULTS.averaging,
        roundsPerEpoch: int | None = None,
        blockMomentum: float | None = None,
        blockLearningRate: float | None = None,
        localMomentum: str | None = None,
        localLrScale: float | None = None,
        lrWarmupEpochs: float | None = None,
        localBatchSize: int | None = None,
        checkpointDir: str | None = None,
        checkpointInterval: int = _DEFAULTS.checkpoint_every,
        schedule: str = _DEFAULTS.schedule,
        startAfter: int = _DEFAULTS.start_after,
        publishEvery: int = _DEFAULTS.publish_every,
        finalEpochs: int = _DEFAULTS.final_epochs,
        representation: str = _DEFAULTS.representation,
        roughVersions: str = _DEFAULTS.rough_versions,
        cacheVersions: str = _DEFAULTS.cache_versions,
        keepVersions: int = _DEFAULTS.keep_versions,
        storePath: str | None = None,
        finetuneEpochs: int = FINETUNE_EPOCHS,
        finetuneLearningRate: float = _DEFAULTS.finetune_learning_rate,
        finetuneMomentum: float = _DEFAULTS.finetune_momentum,
        finetuneWeightDecay: float = _DEFAULTS.finetune_weight_decay,
        finetuneBatchSize: int = _DEFAULTS.finetune_batch_size,
        finetuneLrDecay: float = _DEFAULTS.finetune_lr_decay,
        finetuneLrSchedule: str = _DEFAULTS.finetune_lr_schedule,
    ) -> None:
        super().__init__()
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(
        self,
        *,
        featuresCol: str = "features",
        labelCol: str = "label",
        predictionCol: str = "prediction",
        probabilityCol: str = "probability",
        rawPredictionCol: str = "rawPrediction",
        layers: list[int] = _DEFAULTS.layers[1:],
        visible: str = _DEFAULTS.visible,
        k: int = _DEFAULTS.k,
        learningRate: float = _DEFAULTS.learning_rate,
        momentum: float = _DEFAULTS.momentum,
        weightDecay: float = _DEFAULTS.weight_decay,
        batchSize: int = _DEFAULTS.batch_size,
        maxIter: int = _DEFAULTS.epochs,
        seed: int = _DEFAULTS.seed,
        numPartitions: int | None = None,
        averaging: str = _DEFAULTS.averaging,
        roundsPerEpoch: int | None = None,
        blockMomentum: float | None = None,
        blockLearningRate: float | None = None,
        localMomentum: str | None = None,
        localLrScale: float | None = None,
        lrWarmupEpochs: float | None = None,
        localBatchSize: int | None = None,
        checkpointDir: str | None = None,
        checkpointInterval: int = _DEFAULTS.checkpoint_every,
        schedule: str = _DEFAULTS.schedule,
        startAfter: int = _DEFAULTS.start_after,
        publishEvery: int = _DEFAULTS.publish_every,
        finalEpochs: int = _DEFAULTS.final_epochs,
        representation: str = _DEFAULTS.representation,
        roughVersions: str = _DEFAULTS.rough_versions,
        cacheVersions: str = _DEFAULTS.cache_versions,
        keepVersions: int = _DEFAULTS.keep_versions,
        storePath: str | None = None,
        finetuneEpochs: int = FINETUNE_EPOCHS,
        finetuneLearningRate: float = _DEFAULTS.finetune_learning_rate,
        finetuneMomentum: float = _DEFAULTS.finetune_momentum,
        finetuneWeightDecay: float = _DEFAULTS.finetune_weight_decay,
        finetuneBatchSize: int = _DEFAULTS.finetune_batch_size,
        finetuneLrDecay: float = _DEFAULTS.finetune_lr_decay,
        finetuneLrSchedule: str = _DEFAULTS.finetune_lr_schedule,
    ) -> DBNClassifier:
        return self._set(**self._input_kwargs)

    def setProbabilityCol(self, value: str) -> DBNClassifier:
        return self._set(probabilityCol=value)

    def setFinetuneEpochs(self, value: int) -> DBNClassifier:
        return self._set(finetuneEpochs=value)

    def setFinetuneLearningRate(self, value: float) -> DBNClassifier:
        return self._set(finetuneLearningRate=value)

    def setFinetuneMomentum(self, value: float) -> DBNClassifier:
        return self._set(finetuneMomentum=value)

    def setFinetuneWeightDecay(self, value: float) -> DBNClassifier:
        return self._set(finetuneWeightDecay=value)

    def setFinetuneBatchSize(self, value: int) -> DBNClassifier:
        return self._set(finetuneBatchSize=value)

    def setFinetuneLrDecay(self, value: float) -> DBNClassifier:
        return self._set(finetuneLrDecay=value)

    def setFinetuneLrSchedule(self, value: str) -> DBNClassifier:
        return self._set(finetuneLrSchedule=value)

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
