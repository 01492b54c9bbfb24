"""The fine-tuning kernel against exact math: finite differences, hand-computed SGD steps."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from sparkdbn.kernels.mlp import (
    PREDICT_BATCH,
    EpochStats,
    MLPParams,
    SGDConfig,
    class_scores,
    forward,
    from_pretrained,
    init_mlp,
    loss_and_grads,
    predict_proba,
    sgd_epoch,
)
from sparkdbn.kernels.rates import learning_rate_at


def random_params(sizes: list[int], rng: np.random.Generator) -> MLPParams:
    """float64 unit-scale weights and biases, so every layer's gradient is far from zero."""
    return MLPParams(
        [rng.standard_normal((a, b)) for a, b in pairwise(sizes)],
        [rng.standard_normal(b) for b in sizes[1:]],
    )


def blobs(n_per_class: int, n_features: int, n_classes: int, seed: int):
    """Well separated Gaussian blobs: a problem a small net must fit."""
    rng = np.random.default_rng(seed)
    centers = 5.0 * np.eye(n_classes, n_features)  # pairwise distance 7 standard deviations
    y = np.repeat(np.arange(n_classes, dtype=np.int64), n_per_class)
    X = (centers[y] + rng.standard_normal((y.size, n_features))).astype(np.float32)
    return X, y


def mean_loss(params: MLPParams, X: np.ndarray, y: np.ndarray) -> float:
    return loss_and_grads(params, X, y)[0]


def test_gradients_match_central_finite_differences():
    rng = np.random.default_rng(0)
    params = random_params([5, 4, 3, 3], rng)
    X = rng.standard_normal((7, 5))
    y = rng.integers(0, 3, 7)
    _, grads = loss_and_grads(params, X, y)

    eps = 1e-6
    for analytic, arrays in (
        (grads.weights, params.weights),
        (grads.biases, params.biases),
    ):
        for grad, p in zip(analytic, arrays, strict=True):
            numeric = np.empty_like(p)
            for idx in np.ndindex(p.shape):
                saved = p[idx]
                p[idx] = saved + eps
                up = mean_loss(params, X, y)
                p[idx] = saved - eps
                down = mean_loss(params, X, y)
                p[idx] = saved
                numeric[idx] = (up - down) / (2 * eps)
            np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-9)


def test_float32_gradients_agree_with_float64():
    rng = np.random.default_rng(1)
    p64 = random_params([6, 5, 4], rng)
    p32 = MLPParams.from_flat(p64.to_flat().astype(np.float32), p64.sizes)
    X = rng.standard_normal((20, 6))
    y = rng.integers(0, 4, 20)
    loss64, g64 = loss_and_grads(p64, X, y)
    loss32, g32 = loss_and_grads(p32, X.astype(np.float32), y)
    assert g32.dtype == np.float32
    assert loss32 == pytest.approx(loss64, rel=1e-5)
    np.testing.assert_allclose(g32.to_flat(), g64.to_flat(), rtol=1e-3, atol=1e-6)


def test_loss_is_mean_cross_entropy():
    rng = np.random.default_rng(2)
    params = random_params([3, 4], rng)
    X = rng.standard_normal((5, 3))
    y = np.array([0, 1, 2, 3, 0])
    logits = X @ params.weights[0] + params.biases[0]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert mean_loss(params, X, y) == pytest.approx(-np.log(p[np.arange(5), y]).mean())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_rows_sum_to_one_for_huge_logits(dtype):
    params = MLPParams([np.array([[1e30, -1e30, 0.0]], dtype)], [np.zeros(3, dtype)])
    X = np.array([[1.0], [-1.0], [0.0], [3.0]], dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        proba = predict_proba(params, X)
        loss = mean_loss(params, X, np.array([1, 0, 2, 1]))
    assert proba.dtype == dtype
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(proba.argmax(axis=1), [0, 1, 0, 0])
    np.testing.assert_allclose(proba[2], 1 / 3, rtol=1e-6)
    assert np.isfinite(loss) and loss > 1e29


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_is_stable_and_exact(dtype):
    pre = np.array([-1000, -50, -3, 0, 0.5, 3, 50, 1000], dtype)
    # One hidden unit whose pre-activation is the input itself, then a 2-class output.
    params = MLPParams(
        [np.ones((1, 1), dtype), np.ones((1, 2), dtype)], [np.zeros(1, dtype), np.zeros(2, dtype)]
    )
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        hidden = forward(params, pre[:, None])[1][:, 0]
    expected = 1 / (1 + np.exp(-pre.astype(np.float64).clip(-700, 700)))
    np.testing.assert_allclose(hidden, expected, rtol=1e-6, atol=1e-30)
    assert hidden[0] == pytest.approx(0, abs=1e-30) and hidden[-1] == 1


def test_forward_shapes_and_predict_proba_in_batches():
    rng = np.random.default_rng(3)
    params = init_mlp([4, 6, 5, 3], rng)
    X = rng.standard_normal((PREDICT_BATCH + 17, 4)).astype(np.float32)
    acts = forward(params, X)
    assert [a.shape for a in acts] == [(X.shape[0], n) for n in params.sizes]
    assert acts[0] is X
    assert all(a.dtype == np.float32 for a in acts)
    proba = predict_proba(params, X)
    np.testing.assert_allclose(proba, acts[-1], rtol=1e-6)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)


def test_class_scores_are_the_nets_logits_and_their_softmax():
    rng = np.random.default_rng(11)
    params = init_mlp([5, 7, 4], rng)
    X = rng.standard_normal((PREDICT_BATCH + 3, 5)).astype(np.float32)
    logits, proba = class_scores(params, X)
    hidden = 1 / (1 + np.exp(-(X.astype(np.float64) @ params.weights[0] + params.biases[0])))
    expected = hidden @ params.weights[1] + params.biases[1]
    assert logits.dtype == proba.dtype == np.float64
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(proba, softmax / softmax.sum(axis=1, keepdims=True), atol=1e-15)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=0, atol=1e-12)


def test_sgd_fits_separable_blobs():
    X, y = blobs(100, 4, 3, seed=4)
    rng = np.random.default_rng(5)
    params = init_mlp([4, 16, 3], rng)
    velocity = params.zeros_like()
    cfg = SGDConfig(learning_rate=0.1, momentum=0.9, batch_size=32)
    losses = [mean_loss(params, X, y)]
    for _ in range(10):
        stats = sgd_epoch(params, velocity, X, y, cfg, rng)
        losses.append(mean_loss(params, X, y))
    assert stats.n_rows == 300
    assert losses[-1] < 0.5 * losses[0]
    assert stats.accuracy >= 0.95
    accuracy = (predict_proba(params, X).argmax(axis=1) == y).mean()
    assert accuracy >= 0.95


def test_epoch_stats_are_measured_before_each_update():
    X, y = blobs(10, 3, 2, seed=6)
    params = init_mlp([3, 4, 2], np.random.default_rng(7))
    before = params.copy()
    # One full batch: the stats are exactly those of the starting parameters.
    stats = sgd_epoch(
        params, params.zeros_like(), X, y, SGDConfig(batch_size=64), np.random.default_rng(8)
    )
    proba = predict_proba(before, X)
    assert stats.n_rows == 20
    assert stats.loss_sum == pytest.approx(mean_loss(before, X, y) * 20, rel=1e-5)
    assert stats.correct == int((proba.argmax(axis=1) == y).sum())


def test_same_seed_is_bit_identical_and_other_seed_differs():
    X, y = blobs(25, 5, 3, seed=9)
    start = init_mlp([5, 8, 3], np.random.default_rng(10))
    cfg = SGDConfig(batch_size=16)

    def run(seed: int) -> np.ndarray:
        params, velocity = start.copy(), start.zeros_like()
        rng = np.random.default_rng(seed)
        for _ in range(3):
            sgd_epoch(params, velocity, X, y, cfg, rng)
        return np.concatenate([params.to_flat(), velocity.to_flat()])

    np.testing.assert_array_equal(run(11), run(11))
    assert not np.array_equal(run(11), run(12))


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_one_full_batch_without_momentum_is_a_plain_gradient_step(weight_decay):
    X, y = blobs(6, 4, 3, seed=13)
    params = init_mlp([4, 5, 3], np.random.default_rng(14))
    lr = 0.5
    _, grads = loss_and_grads(params, X, y)
    expected = MLPParams(
        [
            W - lr * (g + weight_decay * W)
            for W, g in zip(params.weights, grads.weights, strict=True)
        ],
        [b - lr * g for b, g in zip(params.biases, grads.biases, strict=True)],
    )
    start, velocity = params.to_flat(), params.zeros_like()
    cfg = SGDConfig(learning_rate=lr, momentum=0.0, weight_decay=weight_decay, batch_size=100)
    sgd_epoch(params, velocity, X, y, cfg, np.random.default_rng(15))
    # The shuffle only reorders the batch's rows, which changes float32 sums in the last bit.
    np.testing.assert_allclose(params.to_flat(), expected.to_flat(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(velocity.to_flat(), expected.to_flat() - start, atol=1e-6)


def test_momentum_accumulates_the_previous_step():
    X, y = blobs(6, 4, 3, seed=16)
    params = init_mlp([4, 5, 3], np.random.default_rng(17))
    velocity = params.zeros_like()
    velocity.weights[0][:] = 1.0
    lr, mom = 0.1, 0.5
    _, grads = loss_and_grads(params, X, y)
    expected_v = mom * 1.0 - lr * grads.weights[0]
    expected_w = params.weights[0] + expected_v
    cfg = SGDConfig(learning_rate=lr, momentum=mom, weight_decay=0.0, batch_size=100)
    sgd_epoch(params, velocity, X, y, cfg, np.random.default_rng(18))
    np.testing.assert_allclose(velocity.weights[0], expected_v, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(params.weights[0], expected_w, rtol=1e-5, atol=1e-7)


def test_short_last_batch_and_empty_partition():
    X, y = blobs(7, 3, 2, seed=19)
    params = init_mlp([3, 4, 2], np.random.default_rng(20))
    stats = sgd_epoch(
        params, params.zeros_like(), X, y, SGDConfig(batch_size=5), np.random.default_rng(21)
    )
    assert stats.n_rows == 14 and np.isfinite(stats.loss_sum)

    before = params.to_flat()
    empty = sgd_epoch(
        params, params.zeros_like(), X[:0], y[:0], SGDConfig(), np.random.default_rng(22)
    )
    assert empty == EpochStats(0, 0.0, 0)
    np.testing.assert_array_equal(params.to_flat(), before)


def test_epoch_stats_add_up():
    total = EpochStats(10, 5.0, 7)
    total.add(EpochStats(30, 3.0, 29))
    assert total == EpochStats(40, 8.0, 36)
    assert total.mean_loss == pytest.approx(0.2) and total.accuracy == pytest.approx(0.9)
    assert np.isnan(EpochStats().accuracy)


def test_from_pretrained_keeps_the_stack_and_adds_a_softmax_layer():
    rng = np.random.default_rng(23)
    stack = [
        (rng.standard_normal((6, 5)).astype(np.float32), rng.standard_normal(5).astype(np.float32)),
        (rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)),
    ]
    params = from_pretrained(stack, n_classes=3, rng=rng)
    assert params.sizes == [6, 5, 4, 3]
    for (W, hbias), pW, pb in zip(stack, params.weights[:-1], params.biases[:-1], strict=True):
        np.testing.assert_array_equal(pW, W)
        np.testing.assert_array_equal(pb, hbias)
        assert not np.shares_memory(pW, W)
    assert params.weights[-1].shape == (4, 3) and params.weights[-1].dtype == np.float32
    assert 0 < np.abs(params.weights[-1]).max() < 0.1
    np.testing.assert_array_equal(params.biases[-1], np.zeros(3, np.float32))


def test_init_mlp_layout():
    params = init_mlp([8, 6, 4, 2], np.random.default_rng(24))
    assert params.sizes == [8, 6, 4, 2]
    assert params.dtype == np.float32
    assert all(not b.any() for b in params.biases)
    bound = np.sqrt(12 / (8 + 6))
    assert np.abs(params.weights[0]).max() <= bound
    assert np.abs(params.weights[0]).max() > 0.5 * bound
    assert np.abs(params.weights[-1]).max() < 0.1


def test_flat_round_trip_copy_and_zeros_like():
    params = init_mlp([5, 4, 3], np.random.default_rng(25))
    flat = params.to_flat()
    assert flat.dtype == np.float32 and flat.shape == (5 * 4 + 4 + 4 * 3 + 3,)
    np.testing.assert_array_equal(flat[:20], params.weights[0].ravel())
    np.testing.assert_array_equal(flat[20:24], params.biases[0])
    flat.setflags(write=False)  # as if it came from an Arrow buffer
    back = MLPParams.from_flat(flat, params.sizes)
    np.testing.assert_array_equal(back.to_flat(), flat)
    back.weights[0][0, 0] += 1  # writable and independent
    assert params.copy().weights[0] is not params.weights[0]
    assert not params.zeros_like().to_flat().any()
    with pytest.raises(ValueError, match="does not fit sizes"):
        MLPParams.from_flat(flat[:-1], params.sizes)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("learning_rate", 0.0),
        ("momentum", 1.0),
        ("momentum", -0.1),
        ("weight_decay", -1e-3),
        ("batch_size", 0),
        ("batch_size", 2.5),
    ],
)
def test_sgd_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        SGDConfig(**{field: value})


def test_learning_rate_schedules():
    # exponential: base·decay^e; decay 1 is constant
    assert [learning_rate_at(0.1, e, 4, "exponential", 0.5) for e in range(4)] == pytest.approx(
        [0.1, 0.05, 0.025, 0.0125]
    )
    assert learning_rate_at(0.1, 7, 10) == 0.1
    # cosine: full rate first, half way at the middle epoch, near 0 (never 0) at the last one
    rates = [learning_rate_at(0.2, e, 10, "cosine") for e in range(10)]
    assert rates[0] == 0.2 and rates[5] == pytest.approx(0.1)
    assert all(a > b for a, b in pairwise(rates)) and 0 < rates[-1] < 0.006
    assert rates[-1] == pytest.approx(0.2 * (1 - np.cos(np.pi / 10)) / 2)
    # linear: base·(1 − e/E), a tenth of the rate at the last of 10 epochs
    assert [learning_rate_at(0.2, e, 10, "linear") for e in (0, 5, 9)] == pytest.approx(
        [0.2, 0.1, 0.02]
    )
    with pytest.raises(ValueError, match="schedule must be one of"):
        learning_rate_at(0.1, 0, 10, "step")


def test_sgd_config_accepts_numpy_integers():
    assert SGDConfig(batch_size=np.int64(32)).batch_size == 32


def test_inputs_are_validated():
    params = init_mlp([3, 4, 2], np.random.default_rng(26))
    X = np.zeros((4, 3), np.float32)
    y = np.zeros(4, np.int64)
    cfg, rng = SGDConfig(), np.random.default_rng(27)
    with pytest.raises(ValueError, match=r"2-D array \(rows, 3\)"):
        forward(params, np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        predict_proba(params, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="dtype float64"):
        predict_proba(params, X.astype(np.float64))
    with pytest.raises(ValueError, match="4 labels"):
        loss_and_grads(params, X, y[:3])
    with pytest.raises(ValueError, match="integer"):
        sgd_epoch(params, params.zeros_like(), X, y.astype(np.float32), cfg, rng)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        sgd_epoch(params, params.zeros_like(), X, y + 2, cfg, rng)
    with pytest.raises(ValueError, match="velocity"):
        sgd_epoch(params, init_mlp([3, 5, 2], rng), X, y, cfg, rng)
    with pytest.raises(ValueError, match="do not fit"):
        MLPParams([np.zeros((3, 4), np.float32)], [np.zeros(5, np.float32)])
    with pytest.raises(ValueError, match="empty"):
        from_pretrained([], 3, rng)


def test_dropout_step_is_the_exact_gradient_of_the_masked_net():
    """With dropout, one full-batch step (lr 1, no momentum) equals minus the finite-difference
    gradient of the loss of the net with the very masks the kernel drew (replayed from the
    same seed: the row permutation first, then one uniform draw per hidden layer)."""
    rng = np.random.default_rng(3)
    sizes, n, keep, seed = [5, 4, 3, 3], 8, 0.6, 11
    params = random_params(sizes, rng)
    X = rng.standard_normal((n, 5))
    y = rng.integers(0, 3, n)
    replay = np.random.default_rng(seed)
    order = replay.permutation(n)
    masks = [(replay.random((n, h)) < keep) / keep for h in sizes[1:-1]]
    Xo, yo = X[order], y[order]

    def masked_loss(p: MLPParams) -> float:
        a = Xo
        for W, b, mask in zip(p.weights[:-1], p.biases[:-1], masks, strict=True):
            a = mask / (1 + np.exp(-(a @ W + b)))
        z = a @ p.weights[-1] + p.biases[-1]
        logp = z - z.max(axis=1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
        return -logp[np.arange(n), yo].mean()

    stepped = params.copy()
    cfg = SGDConfig(learning_rate=1.0, momentum=0.0, weight_decay=0.0, batch_size=n, dropout=0.4)
    sgd_epoch(stepped, stepped.zeros_like(), X, y, cfg, np.random.default_rng(seed))
    eps = 1e-6
    for before, after in (
        (params.weights, stepped.weights),
        (params.biases, stepped.biases),
    ):
        for p, q in zip(before, after, strict=True):
            numeric = np.empty_like(p)
            for idx in np.ndindex(p.shape):
                saved = p[idx]
                p[idx] = saved + eps
                up = masked_loss(params)
                p[idx] = saved - eps
                down = masked_loss(params)
                p[idx] = saved
                numeric[idx] = (up - down) / (2 * eps)
            np.testing.assert_allclose(p - q, numeric, rtol=1e-5, atol=1e-8)
