"""AIS and the free energies on Spark (engine/likelihood.py) against the numpy kernel and
against numpy's own free energies of the same rows."""

from __future__ import annotations

import numpy as np
import pytest

from sparkdbn.data import prepare
from sparkdbn.engine.likelihood import AISSettings, ais_log_z, data_statistics
from sparkdbn.kernels import likelihood as lk
from sparkdbn.kernels.rbm import DTYPE, RBMParams, free_energy
from sparkdbn.model import DBNModel


def random_model(sizes: list[int], seed: int) -> DBNModel:
    r = np.random.default_rng(seed)
    return DBNModel([
        RBMParams((r.standard_normal((a, b)) * 0.5).astype(DTYPE),
                  (r.standard_normal(a) * 0.5).astype(DTYPE),
                  (r.standard_normal(b) * 0.5).astype(DTYPE))
        for a, b in zip(sizes[:-1], sizes[1:], strict=True)
    ])


def test_spark_ais_is_the_kernel_run_group_by_group(spark) -> None:
    """One task per (layer, group) over several partitions gives the numpy estimate bit for
    bit, and again on a second run."""
    model = random_model([12, 8, 5], seed=1)
    bases = [lk.base_rate_vbias(np.linspace(1, 9, p.n_visible), 10) for p in model.layers]
    settings = AISSettings(chains=11, betas=60, groups=3, seed=7)
    got = ais_log_z(spark, model.layers, bases, settings)
    expected = [
        lk.ais(p, bases[i], (7, i), n_chains=11, n_betas=60, n_groups=3)
        for i, p in enumerate(model.layers)
    ]
    assert got == expected
    assert ais_log_z(spark, model.layers, bases, settings) == got
    assert got[0] != lk.ais(model.layers[0], bases[0], (8, 0), n_chains=11, n_betas=60,
                            n_groups=3)


def test_free_energies_and_base_rates_of_every_layer(spark) -> None:
    """Each layer sees the rows through the layers below (their hidden probabilities)."""
    model = random_model([10, 6, 4], seed=2)
    X = np.random.default_rng(3).random((300, 10)).astype(np.float32)
    rows = [(i, [float(x) for x in X[i]]) for i in range(len(X))]
    data = prepare(spark, spark.createDataFrame(rows, "id long, features array<float>"),
                   partitions=3)
    try:
        stats = data_statistics(data, model.layers)
    finally:
        data.unpersist()
    for i, (n, mean_f, visible_sum) in enumerate(stats):
        V = model.transform(X, upto=i)
        assert n == 300
        assert mean_f == pytest.approx(free_energy(model.layers[i], V, "bernoulli").mean(),
                                       rel=1e-6)
        np.testing.assert_allclose(visible_sum, V.sum(axis=0, dtype=np.float64), rtol=1e-6)
