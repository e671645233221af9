"""Tests for 02_guided_es.py: the sampler, the estimator against closed forms, the analysis,
the race, and the script's command line. Thresholds come from the maths (a few standard errors)
or from the paper's claim, never from what the code happened to print."""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load, quick_run

ges = load("02_guided_es")


def sigma_matrix(U, alpha):
    n, k = U.shape
    return alpha / n * np.eye(n) + (1 - alpha) / k * U @ U.T


def random_basis(key, n, k):
    return ges.orthonormal_basis(jax.random.normal(key, (n, k)))


def mean_and_se(g):
    g = np.asarray(g, np.float64)
    return g.mean(0), g.std(0) / np.sqrt(len(g))


def test_orthonormal_basis_shape_and_columns():
    U = random_basis(jax.random.key(0), 50, 4)
    assert U.shape == (50, 4)
    np.testing.assert_allclose(U.T @ U, np.eye(4), atol=1e-5)


def test_sampler_covariance():
    n, k, sigma, alpha, N = 10, 2, 0.5, 0.3, 200_000
    U = random_basis(jax.random.key(1), n, k)
    eps = np.asarray(ges.sample_perturbations(jax.random.key(2), U, sigma, alpha, N), np.float64)
    C = sigma**2 * sigma_matrix(np.asarray(U, np.float64), alpha)
    # standard error of an empirical covariance entry: sqrt((C_ii C_jj + C_ij²) / N)
    se = np.sqrt((np.outer(np.diag(C), np.diag(C)) + C**2) / N)
    assert np.all(np.abs(eps.T @ eps / N - C) < 5 * se)
    # tr Σ = 1, so E|ε|² = σ² for every α
    assert abs(np.mean(np.sum(eps**2, 1)) / sigma**2 - 1) < 0.01


@pytest.mark.parametrize("sigma", [0.5, 2.0])  # exact for quadratics at any σ
def test_unbiased_on_quadratic(sigma):
    n, k, alpha, beta, N = 10, 2, 0.3, 1.7, 200_000
    kH, kc, kx, kU, kg = jax.random.split(jax.random.key(3), 5)
    M = jax.random.normal(kH, (n, n))
    H = M @ M.T / n + jnp.eye(n)
    c = jax.random.normal(kc, (n,))
    x0 = jax.random.normal(kx, (n,))

    def f(x):
        return 0.5 * x @ H @ x + c @ x

    U = random_basis(kU, n, k)
    g = jax.vmap(lambda key: ges.guided_es_grad(key, f, x0, U, sigma, alpha, beta, 1))(
        jax.random.split(kg, N)
    )
    mean, se = mean_and_se(g)
    expected = beta * sigma_matrix(np.asarray(U, np.float64), alpha) @ np.asarray(H @ x0 + c)
    assert np.all(np.abs(mean - expected) < 4 * se)


def test_vanilla_es_with_beta_n_is_unbiased():
    n, N = 6, 200_000
    x0 = jnp.linspace(-1.0, 1.0, n)

    def f(x):
        return jnp.sum(x**2) + x[0] * x[1]

    true = np.asarray(jax.grad(f)(x0))
    U = jnp.eye(n, 1)
    g = jax.vmap(lambda key: ges.guided_es_grad(key, f, x0, U, 0.3, 1.0, float(n), 1))(
        jax.random.split(jax.random.key(4), N)
    )
    mean, se = mean_and_se(g)
    assert np.all(np.abs(mean - true) < 4 * se)


def test_smoothed_gradient_identity_on_quartic():
    """For f = Σx⁴, E[g] = βΣ∇f_σ with ∇f_σ = 4x³ + 12 x diag(σ²Σ): the O(σ²) term is real."""
    n, k, alpha, beta, N = 8, 2, 0.4, 2.0, 400_000
    U = random_basis(jax.random.key(5), n, k)
    x0 = jnp.linspace(-1.0, 1.0, n)

    def f(x):
        return jnp.sum(x**4)

    S = sigma_matrix(np.asarray(U, np.float64), alpha)
    x = np.asarray(x0, np.float64)
    for sigma in (1.0, 0.3):
        g = jax.vmap(lambda key: ges.guided_es_grad(key, f, x0, U, sigma, alpha, beta, 1))(
            jax.random.split(jax.random.key(6), N)
        )
        mean, se = mean_and_se(g)
        smoothed = beta * S @ (4 * x**3 + 12 * x * np.diag(sigma**2 * S))
        assert np.all(np.abs(mean - smoothed) / se < 4)
        if sigma == 1.0:  # the naive βΣ∇f is far off: the smoothing term is detectable
            assert np.max(np.abs(mean - beta * S @ (4 * x**3)) / se) > 10


def test_constant_offset_changes_nothing():
    U = random_basis(jax.random.key(7), 5, 1)
    x0 = jnp.ones(5)

    def f(x):
        return jnp.sum(jnp.sin(x))

    g1 = ges.guided_es_grad(jax.random.key(8), f, x0, U, 0.1, 0.5, 2.0, 3)
    g2 = ges.guided_es_grad(jax.random.key(8), lambda x: f(x) + 100.0, x0, U, 0.1, 0.5, 2.0, 3)
    np.testing.assert_allclose(g1, g2, rtol=1e-3, atol=1e-4)  # float32 rounding of f + 100


@pytest.mark.parametrize("num_pairs", [1, 4])
def test_monte_carlo_error_matches_closed_form(num_pairs):
    n, k, rho2, beta, N = 30, 3, 0.3, 2.0, 50_000
    U = jnp.eye(n, k)
    h = jnp.zeros(n).at[0].set(np.sqrt(rho2)).at[k].set(np.sqrt(1 - rho2))
    closed, mc = [], []
    for alpha in (0.0, 0.25, 0.5, 0.75, 1.0):
        g = jax.vmap(
            lambda key: ges.guided_es_grad(
                key, lambda x: x @ h, jnp.zeros(n), U, 1.0, alpha, beta, num_pairs
            )
        )(jax.random.split(jax.random.key(9), N))
        err, se = mean_and_se(jnp.sum((g - h) ** 2, 1))
        mc.append((err, se))
        closed.append(float(ges.expected_error(alpha, beta, rho2, n, k, num_pairs)))
    (mc, se), closed = np.array(mc).T, np.array(closed)
    assert np.all(np.abs(mc / closed - 1) < 0.03)  # the bar
    assert np.all(np.abs(mc - closed) < 4 * se)  # and within Monte Carlo noise (se ~ 0.3%)


def test_mc_error_at_optimal_beta():
    n, k, P, rho2 = 100, 5, 10, 0.4
    for alpha in (0.0, 1.0):
        mc, se = ges.mc_error(jax.random.key(10), alpha, rho2, n, k, P, 10_000)
        closed = float(
            ges.expected_error(alpha, ges.optimal_beta(alpha, rho2, n, k, P), rho2, n, k, P)
        )
        assert abs(float(mc) - closed) < 4 * float(se)  # within Monte Carlo noise


def test_optimal_beta_closed_forms():
    n, P = 100, 1
    assert np.isclose(float(ges.optimal_beta(1.0, 0.3, n, 5, P)), n / (n + 2), rtol=1e-6)
    betas = np.linspace(0.0, 5.0, 50_001)
    for alpha, rho2 in [(0.2, 0.3), (0.7, 0.05), (0.0, 0.9)]:
        e = ges.expected_error(alpha, betas, rho2, 40, 4, 3)
        assert abs(betas[np.argmin(e)] - float(ges.optimal_beta(alpha, rho2, 40, 4, 3))) < 2e-4


def test_optimal_alpha_against_dense_grid_and_regimes():
    rng = np.random.default_rng(0)
    alphas = np.linspace(0.0, 1.0, 4001)
    for _ in range(40):
        n = int(rng.integers(10, 2000))
        k, P = int(rng.integers(1, n // 4 + 2)), int(rng.integers(1, 17))
        lo, hi = k / n, (k + 2 * P + 2) / (n + 2 * P + 2)
        rho2 = rng.uniform(0.5 * lo, min(1.0, 1.5 * hi))
        e = ges.expected_error(alphas, ges.optimal_beta(alphas, rho2, n, k, P), rho2, n, k, P)
        assert abs(alphas[np.argmin(e)] - float(ges.optimal_alpha(rho2, n, k, P))) < 1e-3
    n, k, P = 100, 10, 1
    assert float(ges.optimal_alpha(0.9 * k / n, n, k, P)) == 1.0  # no better than a random subspace
    assert float(ges.optimal_alpha(0.2, n, k, P)) == 0.0  # above (k + 4) / (n + 4)
    assert abs(float(ges.optimal_alpha(0.12, n, k, P)) - 0.477) < 1e-3  # worked example


def test_zero_surrogate_gives_no_nan():
    U = ges.orthonormal_basis(jnp.zeros((20, 1)))
    assert np.all(np.isfinite(U))
    g = ges.guided_es_grad(
        jax.random.key(11), lambda x: jnp.sum(x**2), jnp.ones(20), U, 0.1, 0.5, 2.0, 1
    )
    assert np.all(np.isfinite(g))


def test_hand_written_gradient_and_residual_gap():
    with jax.enable_x64(True):
        cfg = ges.Config(n=6, m=9)
        prob = ges.make_data(jax.random.key(12), cfg)
        prob = dict(prob, bias=jnp.zeros(6))
        x = jax.random.normal(jax.random.key(13), (6,), jnp.float64)
        g = ges.surrogate(jax.random.key(14), ges.residual(x, prob), prob, 0.0)  # no bias, no noise
        np.testing.assert_allclose(g, jax.grad(ges.loss)(x, prob), rtol=1e-10)
        # the residual form of the gap equals f(x) - f(x*)
        x_star = jnp.linalg.lstsq(prob["A"], prob["b"])[0]
        np.testing.assert_allclose(
            ges.gap(ges.residual(x, prob), prob),
            ges.loss(x, prob) - ges.loss(x_star, prob),
            rtol=1e-8,
        )


SMALL = ges.Config(n=20, m=40, steps=60, chunks=3)


def run_small(method, cfg, seed, hp):
    keys = jax.random.split(jax.random.key(seed), 2)
    probs = jax.jit(jax.vmap(ges.make_data, in_axes=(0, None)), static_argnums=1)(keys, cfg)
    hp = {k: jnp.array([v]) for k, v in hp.items()}
    return ges.race(cfg, method, keys, probs, hp, method, 0.0)[0][0], probs


def test_scan_matches_numpy_loop():
    """Surrogate SGD without noise is deterministic: the scanned run equals a float64 loop."""
    cfg = replace(SMALL, noise=0.0)
    gaps, probs = run_small("sgd", cfg, 15, dict(lr=0.05, alpha=1.0, beta=1.0))
    for s in range(2):
        A, b = np.asarray(probs["A"][s], np.float64), np.asarray(probs["b"][s], np.float64)
        bias = np.asarray(probs["bias"][s], np.float64)
        x_star = np.linalg.lstsq(A, b, rcond=None)[0]
        x, ref = np.zeros(cfg.n), []
        for _ in range(cfg.steps + 1):
            ref.append(0.5 * np.mean((A @ (x - x_star)) ** 2))
            grad = A.T @ (A @ x - b) / cfg.m
            x = x - 0.05 * (grad + bias * np.linalg.norm(grad))
        np.testing.assert_allclose(gaps[s], ref, rtol=2e-4, atol=1e-7)


def test_same_key_same_trajectory():
    hp = dict(lr=0.2, alpha=0.5, beta=2.0)
    a, _ = run_small("ges", SMALL, 16, hp)
    b, _ = run_small("ges", SMALL, 16, hp)
    c, _ = run_small("ges", SMALL, 17, hp)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_race_guided_es_beats_both_baselines():
    """n = 100, 2000 steps, the TF1 notebook's settings, seeds 0-2 (shared/papers/02 §4.7)."""
    cfg = ges.Config(**ges.QUICK)
    keys = jax.random.split(jax.random.key(0), 3)
    probs = jax.jit(jax.vmap(ges.make_data, in_axes=(0, None)), static_argnums=1)(keys, cfg)
    final = {}
    for method, (lr, alpha, beta) in {
        "sgd": (cfg.lr_sgd, 1.0, 1.0),
        "es": (cfg.lr_es, 1.0, 1.0),
        "ges": (cfg.lr, cfg.alpha, cfg.beta),
    }.items():
        hp = dict(lr=jnp.array([lr]), alpha=jnp.array([alpha]), beta=jnp.array([beta]))
        final[method] = ges.race(cfg, method, keys, probs, hp, method, 0.0)[0][0]
    med = {m: np.median(g, axis=0) for m, g in final.items()}
    assert med["ges"][-1] < 0.2 * med["es"][-1]  # the headline thresholds
    assert med["ges"][-1] < 0.1 * med["sgd"][-1]
    assert med["sgd"][-1] > 0.02  # the biased surrogate stalls SGD at a wrong point
    assert med["sgd"][200] < med["es"][200]  # ...but SGD starts faster than random search
    assert med["ges"][200] < min(med["sgd"][200], med["es"][200])


def test_quick_run_reproduces_the_ordering(tmp_path_factory):
    """The session's one quick run (tests/conftest.py runs it as a notebook): the closed form
    holds within Monte Carlo noise and, at the notebook's settings, Guided ES beats both
    baselines on every seed (shared/papers/02 §4.7)."""
    metrics = quick_run("02_guided_es", tmp_path_factory)["record"]["metrics"]
    # 33 points, each within 4 standard errors: a false alarm has probability 33 · 6e-5 ≈ 0.2%
    assert metrics["mc_max_z"]["mean"] < 4
    assert max(metrics["gap_ratio_ges_to_es"]["per_seed"]) < 1
    assert max(metrics["gap_ratio_ges_to_sgd"]["per_seed"]) < 1


def test_grid_edges():
    cfg = ges.Config(eff_lrs=(0.1, 0.2, 0.4), tuned_alphas=(0.5, 0.75, 0.9))
    assert ges.grid_edges("es", 1, cfg) == []
    assert ges.grid_edges("es", 2, cfg) == ["vanilla ES step size"]
    assert ges.grid_edges("ges", 4, cfg) == []  # step size 0.2, α = 0.75: inside both grids
    assert ges.grid_edges("ges", 7, cfg) == ["Guided ES α"]  # step size 0.2, α = 0.9
    assert ges.grid_edges("sgd", 0, cfg) == ["SGD on surrogate step size"]


@pytest.mark.parametrize(
    "argv, allowed",
    [
        (["--alpha", "1.5"], "[0, 1]"),
        (["--sigma", "0"], "> 0"),
        (["--steps", "-3"], "> 0"),
        (["--seeds", "0"], "> 0"),
        (["--bogus"], "unrecognized"),
        (["--k", "100", "--quick"], "below n"),
    ],
)
def test_bad_input_is_refused(argv, allowed, capsys):
    with pytest.raises(SystemExit) as e:
        ges.main(argv)
    assert e.value.code == 2
    assert allowed in capsys.readouterr().err
