"""The machine's ceiling and the in-process references the Spark epoch is compared with."""

from __future__ import annotations

import statistics

import numpy as np

from sparkdbn.bench.common import median_seconds, timed_runs
from sparkdbn.kernels.rbm import CDConfig, RBMParams, cd_epoch


def sgemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """float32 matrix-multiply rate with numpy's BLAS on all cores: the ceiling."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    return 2 * n**3 / median_seconds(lambda: a @ b, repeats) / 1e9


def cd_flops(n_rows: int, n_visible: int, n_hidden: int, k: int = 1) -> float:
    """(4k + 6)·N·n_v·n_h: positive phase, k Gibbs steps, two outer products."""
    return (4 * k + 6) * n_rows * n_visible * n_hidden


def numpy_epoch_runs(X: np.ndarray, n_hidden: int, cfg: CDConfig, repeats: int) -> list[float]:
    """Seconds of plain numpy CD epochs over all rows in this process (BLAS on all cores)."""
    params = RBMParams.init(X.shape[1], n_hidden, np.random.default_rng(0))
    velocity = params.zeros_like()
    rngs = iter(range(10**6))
    return timed_runs(
        lambda: cd_epoch(params, velocity, X, cfg, np.random.default_rng(next(rngs))), repeats
    )


def sklearn_epoch_runs(
    X: np.ndarray, n_hidden: int, batch: int, repeats: int
) -> list[float] | None:
    """scikit-learn's BernoulliRBM, one epoch (n_iter=1) over the same rows and units; it
    computes in X's dtype. None when scikit-learn is not installed."""
    try:
        from sklearn.neural_network import BernoulliRBM
    except ImportError:
        return None

    def fit() -> None:
        BernoulliRBM(
            n_components=n_hidden, batch_size=batch, n_iter=1, learning_rate=0.1, random_state=0
        ).fit(X)

    return timed_runs(fit, repeats)



class References:
    """The in-process references the Spark epoch is compared with: our numpy epoch and
    scikit-learn's, on float32 (like for like) and on float64 (its default for numpy data).

    They are timed in three windows, around and between the Spark epoch runs, and each figure
    is the median of all windows' runs (every run is kept in `reference_runs`). Two BLAS
    threads on 100-row products are fragile on a shared VM: whole windows ran at 3.4 s instead
    of 1.9 s here, so one window alone can halve or double a ratio.
    """

    def __init__(self, X: np.ndarray, hidden: int, cfg: CDConfig, repeats: int) -> None:
        self.X, self.hidden, self.cfg, self.repeats = X, hidden, cfg, repeats
        self.X64 = X.astype(np.float64)
        self.runs: dict[str, list[float]] = {}

    def measure(self) -> None:
        measured = {
            "numpy_epoch_seconds": numpy_epoch_runs(self.X, self.hidden, self.cfg, self.repeats),
            "sklearn_epoch_seconds": sklearn_epoch_runs(
                self.X, self.hidden, self.cfg.batch_size, self.repeats
            ),
            "sklearn_float64_epoch_seconds": sklearn_epoch_runs(
                self.X64, self.hidden, self.cfg.batch_size, self.repeats
            ),
        }
        for key, runs in measured.items():
            if runs is not None:
                self.runs.setdefault(key, []).extend(runs)

    def figures(self) -> dict:
        medians = {key: statistics.median(runs) for key, runs in self.runs.items()}
        rounded = {key: [round(t, 3) for t in runs] for key, runs in self.runs.items()}
        return {**medians, "reference_runs": rounded}
