"""Log-likelihood of each RBM layer of a DBN on Spark: free energies over the data's
partitions, AIS chains over tasks (`kernels.likelihood`).

Two stages, whatever the number of layers. The first passes over the data once and, for each
batch of rows, computes every layer's free energies and visible sums, the rows moving up the
stack by their hidden probabilities (the representation the layer above sees). The second runs
one task per (layer, group of chains), each group seeded by (seed, layer, group), and the
driver combines the groups' log-weights in group order, so the estimate is the one
`kernels.likelihood.ais` computes, bit for bit. Both stages are DataFrame stages, so they run
under Spark Connect too.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark.sql import SparkSession

from sparkdbn.columns import unpack_rows
from sparkdbn.data import PACKED_X, PackedData
from sparkdbn.engine.threads import task_blas_threads
from sparkdbn.kernels.likelihood import (
    DEFAULT_BETAS,
    DEFAULT_CHAINS,
    DEFAULT_GROUPS,
    DEFAULT_SCHEDULE,
    LogZEstimate,
    annealing_schedule,
    base_log_z,
    base_rate_vbias,
    chain_groups,
    combine_log_weights,
    group_log_weights,
)
from sparkdbn.kernels.monitors import BOUND_SAMPLES, dbn_bound_terms
from sparkdbn.kernels.rbm import RBMParams, free_energy, hidden_probs
from sparkdbn.model import DBNModel

_STATS_SCHEMA = "layer long, n long, free_energy double, visible_sum binary"
_WEIGHTS_SCHEMA = "layer long, grp long, log_weights binary"
_BOUND_SCHEMA = "n long, bound double"
# The lower bound's samples draw from (seed, BOUND_STREAM, partition), apart from AIS's.
BOUND_STREAM = 1_000_003


@dataclass(frozen=True)
class AISSettings:
    """How many chains, annealing steps and chain groups (Spark tasks per layer) AIS runs."""

    chains: int = DEFAULT_CHAINS
    betas: int = DEFAULT_BETAS
    groups: int = DEFAULT_GROUPS
    schedule: str = DEFAULT_SCHEDULE
    seed: int = 0

    def __post_init__(self) -> None:
        if self.chains < 2:
            raise ValueError(f"AIS needs at least 2 chains for its uncertainty, got {self.chains}")
        if self.groups < 1:
            raise ValueError(f"AIS needs at least 1 group of chains, got {self.groups}")
        annealing_schedule(self.betas, self.schedule)  # raises for a bad count or schedule

    def to_dict(self) -> dict:
        return {"chains": self.chains, "betas": self.betas, "groups": self.groups,
                "schedule": self.schedule, "seed": self.seed}


@dataclass(frozen=True)
class LayerLikelihood:
    """Layer `layer`'s mean log-likelihood of its input rows, -mean F - log Z, with the
    interval that log Z's interval gives."""

    layer: int
    n_rows: int
    mean_free_energy: float
    log_z: LogZEstimate

    @property
    def log_likelihood(self) -> float:
        return -self.mean_free_energy - self.log_z.log_z

    def to_dict(self) -> dict:
        lower, upper = _minus_log_z(-self.mean_free_energy, self.log_z)
        return {
            "layer": self.layer,
            "n_rows": self.n_rows,
            "log_likelihood": self.log_likelihood,
            "log_likelihood_lower": lower,
            "log_likelihood_upper": upper,
            "log_z": self.log_z.log_z,
            "log_z_lower": _finite_or_none(self.log_z.lower),
            "log_z_upper": self.log_z.upper,
            "mean_free_energy": self.mean_free_energy,
        }

    def line(self) -> str:
        d = self.to_dict()
        return (
            f"layer {self.layer}: log-likelihood {self.log_likelihood:.2f} nats per row "
            f"[{d['log_likelihood_lower']:.2f}, {_end(d['log_likelihood_upper'])}], "
            f"log Z {self.log_z.log_z:.2f}, mean free energy {self.mean_free_energy:.2f}, "
            f"{self.n_rows} rows"
        )


def _minus_log_z(value: float, log_z: LogZEstimate) -> tuple[float, float | None]:
    """value − log Z at the ends of log Z's interval: (lower, upper), an unbounded end None."""
    return value - log_z.upper, _finite_or_none(value - log_z.lower)


def _end(x: float | None) -> str:
    return "?" if x is None else f"{x:.2f}"


def _finite_or_none(x: float) -> float | None:
    """JSON has no infinity: an unbounded end of an interval is null."""
    return x if math.isfinite(x) else None


def _stats_batches(layers: list[RBMParams]):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            X = unpack_rows(batch.column(PACKED_X), layers[0].n_visible)
            rows = []
            with task_blas_threads():
                for i, params in enumerate(layers):
                    rows.append({
                        "layer": i,
                        "n": X.shape[0],
                        "free_energy": float(free_energy(params, X, "bernoulli").sum()),
                        "visible_sum": X.sum(axis=0, dtype=np.float64).tobytes(),
                    })
                    if i + 1 < len(layers):
                        X = hidden_probs(params, X)
            yield pa.RecordBatch.from_pylist(rows)

    return run


def data_statistics(
    data: PackedData, layers: list[RBMParams]
) -> list[tuple[int, float, np.ndarray]]:
    """Per layer: rows, mean free energy and visible sums of the data as that layer sees it."""
    collected = data.df.select(PACKED_X).mapInArrow(_stats_batches(layers), _STATS_SCHEMA).collect()
    out = []
    for i, params in enumerate(layers):
        mine = [r for r in collected if r["layer"] == i]
        n = sum(r["n"] for r in mine)
        visible_sum = np.zeros(params.n_visible)
        for r in mine:
            visible_sum += np.frombuffer(r["visible_sum"], np.float64)
        out.append((n, math.fsum(r["free_energy"] for r in mine) / n, visible_sum))
    return out


def _ais_batches(
    layers: list[RBMParams], bases: list[np.ndarray], settings: AISSettings
):
    betas = annealing_schedule(settings.betas, settings.schedule)
    n_groups = len(chain_groups(settings.chains, settings.groups))

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            rows = []
            for task in batch.column("id").to_pylist():
                layer, group = divmod(task, n_groups)
                with task_blas_threads():
                    log_w = group_log_weights(
                        layers[layer], bases[layer], betas, settings.chains, settings.groups,
                        (settings.seed, layer), group,
                    )
                rows.append({"layer": layer, "grp": group, "log_weights": log_w.tobytes()})
            yield pa.RecordBatch.from_pylist(rows)

    return run


def ais_log_z(
    spark: SparkSession,
    layers: list[RBMParams],
    bases: list[np.ndarray],
    settings: AISSettings,
) -> list[LogZEstimate]:
    """Each layer's AIS estimate of log Z from its base-rate biases, one task per group."""
    n_groups = len(chain_groups(settings.chains, settings.groups))
    n_tasks = len(layers) * n_groups
    tasks = spark.range(0, n_tasks, 1, n_tasks)
    rows = tasks.mapInArrow(_ais_batches(layers, bases, settings), _WEIGHTS_SCHEMA).collect()
    weights = {(r["layer"], r["grp"]): np.frombuffer(r["log_weights"], np.float64) for r in rows}
    return [
        combine_log_weights(
            np.concatenate([weights[(layer, g)] for g in range(n_groups)]),
            base_log_z(bases[layer], params.n_hidden),
        )
        for layer, params in enumerate(layers)
    ]


def log_likelihood(
    spark: SparkSession, data: PackedData, model: DBNModel, settings: AISSettings
) -> list[LayerLikelihood]:
    """Every RBM layer's mean log-likelihood of `data` as it reaches that layer."""
    if model.visible != "bernoulli":
        raise ValueError(
            f"the log-likelihood by AIS needs Bernoulli visible units, the model has "
            f"{model.visible!r} ones"
        )
    stats = data_statistics(data, model.layers)
    bases = [base_rate_vbias(visible_sum, n) for n, _, visible_sum in stats]
    estimates = ais_log_z(spark, model.layers, bases, settings)
    return [
        LayerLikelihood(i, n, mean_f, est)
        for i, ((n, mean_f, _), est) in enumerate(zip(stats, estimates, strict=True))
    ]


def summary(layers: list[LayerLikelihood], settings: AISSettings) -> dict:
    """The figures a job reports: layer 0's (the model of the data itself) at the top level,
    every layer's under `layers_log_likelihood`, and the AIS settings."""
    first = layers[0].to_dict()
    top = {key: first[key] for key in (
        "n_rows", "log_likelihood", "log_likelihood_lower", "log_likelihood_upper",
        "log_z", "log_z_lower", "log_z_upper",
    )}
    return {**top, "layers_log_likelihood": [layer.to_dict() for layer in layers],
            "ais": settings.to_dict()}


def table(layers: list[LayerLikelihood], settings: AISSettings) -> str:
    s = settings
    head = (
        f"log-likelihood by AIS ({s.chains} chains, {s.betas} annealing steps, {s.schedule} "
        f"schedule, {s.groups} groups, seed {s.seed}); intervals from ±3 standard errors"
    )
    return "\n".join([head, *(layer.line() for layer in layers)])


# --- the whole DBN: the lower bound on log p(v) -----------------------------------------------


@dataclass(frozen=True)
class LowerBound:
    """The DBN's variational lower bound on the mean log p(v) of `n_rows` rows: the mean of
    `kernels.monitors.dbn_bound_terms` less the top RBM's log Z, with the interval its AIS
    interval gives (the Monte Carlo average over `samples` draws per row is not in it)."""

    n_rows: int
    mean_terms: float
    top_log_z: LogZEstimate
    samples: int

    def to_dict(self) -> dict:
        lower, upper = _minus_log_z(self.mean_terms, self.top_log_z)
        return {
            "n_rows": self.n_rows,
            "log_likelihood_lower_bound": self.mean_terms - self.top_log_z.log_z,
            "lower": lower,
            "upper": upper,
            "top_log_z": self.top_log_z.log_z,
            "samples": self.samples,
        }

    def line(self) -> str:
        d = self.to_dict()
        return (
            f"DBN: log-likelihood ≥ {d['log_likelihood_lower_bound']:.2f} nats per row "
            f"[{d['lower']:.2f}, {_end(d['upper'])}] "
            f"(variational bound, {self.samples} samples per row)"
        )


def _bound_batches(layers: list[RBMParams], samples: int, seed: int):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        rng = np.random.default_rng([seed, BOUND_STREAM, TaskContext.get().partitionId()])
        for batch in batches:
            X = unpack_rows(batch.column(PACKED_X), layers[0].n_visible)
            with task_blas_threads():
                terms = dbn_bound_terms(layers, X, rng, samples)
            yield pa.RecordBatch.from_pylist([{"n": len(terms), "bound": float(terms.sum())}])

    return run


def dbn_lower_bound(
    data: PackedData, layers: list[RBMParams], top_log_z: LogZEstimate, seed: int,
    samples: int = BOUND_SAMPLES,
) -> LowerBound:
    """The bound over the rows of `data`, each partition's samples from its own generator
    (seed, BOUND_STREAM, partition): the same data and partitioning give the same figure."""
    found = data.df.select(PACKED_X).mapInArrow(
        _bound_batches(layers, samples, seed), _BOUND_SCHEMA
    ).collect()
    n = sum(r["n"] for r in found)
    return LowerBound(n, math.fsum(r["bound"] for r in found) / n, top_log_z, samples)


@dataclass(frozen=True)
class ModelLikelihood:
    """Every RBM layer's log-likelihood and, for two layers or more, the DBN's lower bound."""

    layers: list[LayerLikelihood]
    bound: LowerBound | None
    settings: AISSettings

    def to_dict(self) -> dict:
        out = {"n_rows": self.layers[0].n_rows,
               "layers": [layer.to_dict() for layer in self.layers]}
        if self.bound is not None:
            out["dbn_lower_bound"] = self.bound.to_dict()
        return {**out, "ais": self.settings.to_dict()}

    def table(self) -> str:
        lines = [table(self.layers, self.settings)]
        return "\n".join(lines + ([self.bound.line()] if self.bound is not None else []))


def model_likelihood(
    spark: SparkSession, data: PackedData, model: DBNModel, settings: AISSettings
) -> ModelLikelihood:
    """`log_likelihood` of every layer, and the DBN's bound from the top layer's log Z."""
    layers = log_likelihood(spark, data, model, settings)
    bound = None
    if len(model.layers) > 1:
        bound = dbn_lower_bound(data, model.layers, layers[-1].log_z, settings.seed)
    return ModelLikelihood(layers, bound, settings)
