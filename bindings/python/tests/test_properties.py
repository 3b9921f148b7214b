"""Properties every result must have, whatever the model: Σ pᵢ Jᵢ = 0, G PSD of rank ≤ C − 1,
KL ≈ ½ δᵀGδ, J against finite differences, leaf ⊕ kernel = everything, batch = one at a time."""

from __future__ import annotations

import numpy as np


def test_probability_weighted_rows_of_j_cancel(lenet5, golden_lenet5):
    log_probs, jacobian = lenet5.log_probs_and_jacobian(golden_lenet5["inputs"])
    weighted = (np.exp(log_probs.astype(np.float64))[:, :, None] * jacobian).sum(axis=1)
    assert np.abs(weighted).max() <= 1e-5 * np.abs(jacobian).max()


def test_g_is_psd_with_rank_below_c(lenet5, golden_lenet5):
    classes = len(lenet5.classes)
    for point in lenet5.geometry(golden_lenet5["inputs"]):
        eigenvalues = point.eigenvalues
        assert point.rank <= classes - 1
        assert eigenvalues.min() >= -1e-9 * eigenvalues.max()
        assert abs(eigenvalues.sum() - point.trace) <= 1e-6 * point.trace
        basis = point.leaf_basis().astype(np.float64)
        assert basis.shape == (point.rank, 784)
        assert np.abs(basis @ basis.T - np.eye(point.rank)).max() <= 1e-4
        # J's rows lie in the span of the leaf basis.
        rows = point.jacobian.astype(np.float64)
        residual = rows - (rows @ basis.T) @ basis
        assert np.abs(residual).max() <= 1e-3 * np.abs(rows).max()


def test_kl_is_half_the_quadratic_form(lenet5, golden_lenet5):
    x = golden_lenet5["inputs"][0].reshape(-1).astype(np.float64)
    point = lenet5.geometry(x)
    direction = point.leaf_basis(1)[0].astype(np.float64)
    for size in (0.05, 0.02):
        delta = size * direction
        p = np.exp(lenet5.log_probs(x).astype(np.float64))
        log_q = lenet5.log_probs(x + delta).astype(np.float64)
        kl = float((np.exp(log_q) * (log_q - np.log(p))).sum())
        quadratic = 0.5 * point.quadratic_form(delta[None, :].astype(np.float32))
        assert abs(kl - quadratic) <= 0.1 * quadratic


def test_jacobian_matches_central_differences(lenet5, golden_lenet5):
    x = golden_lenet5["inputs"][1].reshape(-1).astype(np.float32)
    jacobian = lenet5.jacobian(x)
    rng = np.random.default_rng(3)
    for pixel in rng.choice(784, size=8, replace=False):
        h = 1e-2
        up, down = x.copy(), x.copy()
        up[pixel] += h
        down[pixel] -= h
        difference = (lenet5.log_probs(up).astype(np.float64) - lenet5.log_probs(down)) / (2 * h)
        assert np.abs(difference - jacobian[:, pixel]).max() <= 2e-3 * max(np.abs(jacobian).max(), 1e-6)


def test_leaf_and_kernel_split_a_direction(lenet5, golden_lenet5):
    x = golden_lenet5["inputs"][2]
    v = np.random.default_rng(0).standard_normal(784).astype(np.float32)
    leaf = lenet5.project(v, x)
    kernel = lenet5.project(v, x, "kernel")
    assert np.abs(leaf + kernel - v).max() <= 1e-5
    assert abs(leaf @ kernel) <= 1e-6 * np.linalg.norm(v) ** 2
    # A kernel direction moves no log-probability to first order.
    assert np.abs(lenet5.jacobian(x).astype(np.float64) @ kernel).max() <= 1e-4 * np.linalg.norm(kernel)


def test_a_batch_equals_its_images_one_at_a_time(lenet5, golden_lenet5):
    x = golden_lenet5["inputs"]
    batch = lenet5.jacobian(x)
    single = np.stack([lenet5.jacobian(image) for image in x])
    assert np.array_equal(batch, single)
    # Shapes accepted: [B, c, h, w], [B, n], [c, h, w], [n]; any float dtype.
    assert np.array_equal(lenet5.log_probs(x.reshape(8, -1).astype(np.float64)), lenet5.log_probs(x))
    assert lenet5.log_probs(x[0].reshape(-1)).shape == (10,)
