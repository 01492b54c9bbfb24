"""Rules the schedules and the session apply, checked without Spark: tie plans and ties,
when loaded versions are cached, which masters get the worker daemon."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from sparkdbn.config import TrainConfig, tie_plan
from sparkdbn.engine.schedules import caches_versions, tie
from sparkdbn.errors import InputError
from sparkdbn.kernels.rbm import RBMParams
from sparkdbn.staging import is_local


@pytest.mark.parametrize(
    ("setting", "local", "cached"),
    [("auto", True, False), ("auto", False, True), ("always", True, True),
     ("never", False, False)],
)
def test_cache_versions_setting(setting: str, local: bool, cached: bool) -> None:
    """auto keeps loaded versions in Spark's cache unless the store is on local disk."""
    store = SimpleNamespace(on_local_disk=local)
    assert caches_versions(TrainConfig(cache_versions=setting).validate(), store) is cached
    with pytest.raises(InputError, match=r"cache_versions must be one of auto\|always\|never"):
        TrainConfig(cache_versions="sometimes").validate()


def test_tie_copies_w_or_transposes_with_swapped_biases() -> None:
    rng = np.random.default_rng(0)
    below = RBMParams.init(5, 3, rng)
    below.vbias[:] = rng.standard_normal(5)
    below.hbias[:] = rng.standard_normal(3)
    same = tie(below, "W")
    assert np.array_equal(same.W, below.W) and same.W is not below.W
    flipped = tie(below, "WT")
    assert flipped.W.shape == (3, 5) and np.array_equal(flipped.W, below.W.T)
    assert np.array_equal(flipped.vbias, below.hbias) and np.array_equal(flipped.hbias, below.vbias)


def test_tie_plan_shapes_and_error() -> None:
    assert tie_plan([500, 500, 500, 500]) == ["W", "W"]
    assert tie_plan([784, 500, 784, 500]) == ["WT", "WT"]
    with pytest.raises(InputError, match=r"layer 1 is 500x500 but layer 0 is 784x500"):
        TrainConfig(layers=[784, 500, 500, 2000], schedule="tied").validate()


def test_only_local_masters_get_the_daemon() -> None:
    assert is_local("local") and is_local("local[2]") and is_local("local[2,4]")
    assert not is_local("spark://127.0.0.1:7077") and not is_local("yarn")
    assert not is_local("local-cluster[2,1,1024]")
