"""The defaults give a model a user would keep: scikit-learn's digits against its MLPClassifier.

Half of the 1,797 8×8 digits train (pixels scaled to [0, 1]), half are held out; the
comparison is scikit-learn's own MLPClassifier() with all its defaults on the same split.
"""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.ml.evaluation import MulticlassClassificationEvaluator
from pyspark.ml.linalg import Vectors

from sparkdbn.ml import DBNClassifier

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits(spark):
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    train, test = train_test_split(np.arange(len(X)), test_size=0.5, random_state=0)

    def frame(rows: np.ndarray):
        data = [(int(i), Vectors.dense(X[i]), int(y[i])) for i in rows]
        return spark.createDataFrame(data, ["id", "features", "label"]).cache()

    mlp = MLPClassifier(random_state=0).fit(X[train], y[train]).score(X[test], y[test])
    return frame(train), frame(test), mlp


def accuracy(model, test) -> float:
    return MulticlassClassificationEvaluator(metricName="accuracy").evaluate(
        model.transform(test)
    )


def test_only_layers_set_matches_scikit_learns_mlp(digits) -> None:
    """DBNClassifier(layers=[32]), everything else at its default, on the input's own two
    partitions: at least MLPClassifier()'s accuracy, within one point."""
    train, test, mlp = digits
    assert mlp > 0.95
    assert accuracy(DBNClassifier(layers=[32]).fit(train), test) >= mlp - 0.01


def test_a_short_grid_point_still_learns(digits) -> None:
    """maxIter=2, finetuneEpochs=3 (a cheap CrossValidator grid point) is far above chance."""
    train, test, _ = digits
    model = DBNClassifier(layers=[32], maxIter=2, finetuneEpochs=3).fit(train)
    assert accuracy(model, test) > 0.7
