"""Tests for 01_diffusion.py: the forward process, posteriors and KLs against independent closed
forms or Monte Carlo, the bound K against exact log-likelihoods of linear-Gaussian chains, the
binomial variant, gradients, and the script's command line. Thresholds come from the maths (a
few standard errors) or from the paper's claims, never from what the code happened to print."""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load, quick_run
from jax.flatten_util import ravel_pytree
from jax.test_util import check_grads

m = load("01_diffusion")
LOG2PIE = np.log(2 * np.pi * np.e)


def f64_betas(**kw):
    with jax.enable_x64(True):
        return np.asarray(m.fixed_betas(m.Config(**kw)), np.float64)


def within(mc, se, target, k=4.0):
    return abs(float(mc) - float(target)) < k * float(se)


def test_forward_marginal_by_iterating_the_kernel():
    """xᵗ from t kernel steps has mean √ᾱ_t x⁰ and variance 1 − ᾱ_t (β is a variance)."""
    betas = m.fixed_betas(m.Config(beta1=1e-3))
    n = 100_000
    x0 = 1.5
    x = jnp.full((n,), x0)
    key = jax.random.key(0)
    om = np.asarray(m.one_minus_alpha_bar(betas), np.float64)
    for t in range(1, 41):
        key, sub = jax.random.split(key)
        x = jnp.sqrt(1 - betas[t - 1]) * x + jnp.sqrt(betas[t - 1]) * jax.random.normal(sub, (n,))
        if t in (1, 5, 20, 40):
            mean = np.sqrt(1 - om[t]) * x0
            var = om[t]
            assert within(x.mean(), np.sqrt(var / n), mean)
            assert within(x.var(), var * np.sqrt(2 / n), var)
            xq = m.q_sample(jax.random.key(t), jnp.full((n,), x0), t, betas)  # the closed form
            assert within(xq.mean(), np.sqrt(var / n), mean)
            assert within(xq.var(), var * np.sqrt(2 / n), var)
    assert abs(om[40] - (1 - np.prod(1 - np.asarray(betas, np.float64)))) < 1e-6
    assert om[0] == 0 and om[40] > 0.95  # xᵀ is close to π = N(0, I)


def test_posterior_equals_gaussian_conditioning_and_precision_form():
    with jax.enable_x64(True):
        betas = m.fixed_betas(m.Config(beta1=1e-4))
        om = np.asarray(m.one_minus_alpha_bar(betas))
        x0 = np.array([0.3, -1.2])
        xt = np.array([1.1, 0.4])
        for t in (2, 3, 20, 40):
            mean, var = m.gaussian_posterior(jnp.asarray(x0), jnp.asarray(xt), t, betas)
            b = float(betas[t - 1])
            # joint of (x^{t-1}, x^t) given x⁰, built from the two kernels, then conditioned
            m_prev = np.sqrt(1 - om[t - 1]) * x0
            v_prev = om[t - 1]
            cov = np.sqrt(1 - b) * v_prev
            v_t = (1 - b) * v_prev + b
            np.testing.assert_allclose(v_t, om[t], rtol=1e-12)
            np.testing.assert_allclose(
                mean, m_prev + cov / v_t * (xt - np.sqrt(1 - b) * m_prev), rtol=1e-10
            )
            np.testing.assert_allclose(var, v_prev - cov**2 / v_t, rtol=1e-10)
            lam = 1 / om[t - 1] + (1 - b) / b  # the authors' precision form
            np.testing.assert_allclose(var, 1 / lam, rtol=1e-10)
            np.testing.assert_allclose(
                mean,
                (np.sqrt(1 - om[t - 1]) * x0 / om[t - 1] + np.sqrt(1 - b) * xt / b) / lam,
                rtol=1e-10,
            )


def test_gaussian_kl_against_monte_carlo():
    mu_q = 0.3
    var_q = 0.5
    mu_p = -0.4
    var_p = 1.7
    n = 1_000_000
    x = mu_q + np.sqrt(var_q) * np.random.default_rng(0).standard_normal(n)
    log_ratio = (
        -0.5 * np.log(var_q)
        - (x - mu_q) ** 2 / (2 * var_q)
        + 0.5 * np.log(var_p)
        + (x - mu_p) ** 2 / (2 * var_p)
    )
    kl = float(m.gaussian_kl(mu_q, var_q, mu_p, var_p))
    assert within(log_ratio.mean(), log_ratio.std() / np.sqrt(n), kl)
    assert abs(float(m.gaussian_kl(0.7, 0.2, 0.7, 0.2))) < 1e-7
    k1, k2, k3, k4 = jax.random.split(jax.random.key(1), 4)

    def r(k):
        return jax.random.normal(k, (1000,))

    assert np.all(m.gaussian_kl(r(k1), jnp.exp(r(k2)), r(k3), jnp.exp(r(k4))) >= -1e-6)


# -- the bound K: closed forms for 1-D data N(mu, var) and linear-Gaussian reverse kernels
# p(x^{t-1}|x^t) = N(a_t x^t + b_t, v_t), written independently of the script


def exact_K(betas, a, b, v, mu, var):
    """Eq. 14 in nats, every expectation in closed form (all quantities linear-Gaussian)."""
    ab = np.cumprod(1 - betas)
    total = 0.0
    for t in range(2, len(betas) + 1):
        bt = betas[t - 1]
        at = ab[t - 1]
        ap = ab[t - 2]
        A = np.sqrt(ap) * bt / (1 - at)  # the posterior mean is A x⁰ + B xᵗ
        B = np.sqrt(1 - bt) * (1 - ap) / (1 - at)
        var_q = bt * (1 - ap) / (1 - at)
        c1 = A + (B - a[t - 1]) * np.sqrt(at)
        c2 = B - a[t - 1]
        mse = c1**2 * (var + mu**2) - 2 * c1 * b[t - 1] * mu + b[t - 1] ** 2 + c2**2 * (1 - at)
        total += 0.5 * (np.log(v[t - 1] / var_q) + (var_q + mse) / v[t - 1] - 1)
    return -total + 0.5 * (
        np.log(2 * np.pi * np.e * (1 - ab[-1])) - np.log(2 * np.pi * np.e * betas[0]) - LOG2PIE
    )


def exact_L(betas, a, b, v, mu, var):
    """E log p(x⁰): propagate the Gaussian marginal from π down the chain, then the fixed step."""
    mm = 0.0
    s = 1.0
    for t in range(len(betas), 1, -1):
        mm = a[t - 1] * mm + b[t - 1]
        s = a[t - 1] ** 2 * s + v[t - 1]
    mm = np.sqrt(1 - betas[0]) * mm
    s = (1 - betas[0]) * s + betas[0]
    return -0.5 * np.log(2 * np.pi * s) - ((mu - mm) ** 2 + var) / (2 * s)


def optimal_kernels(betas, mu, var):
    """The true reverse conditionals q(x^{t-1}|x^t) for data N(mu, var)."""
    ab = np.cumprod(1 - betas)
    M = np.concatenate([[mu], np.sqrt(ab) * mu])
    V = np.concatenate([[var], ab * var + 1 - ab])
    a = np.sqrt(1 - betas) * V[:-1] / V[1:]
    return a, M[:-1] - a * M[1:], V[:-1] - (1 - betas) * V[:-1] ** 2 / V[1:]


def script_K(betas, a, b, v, x0, key=2):
    """The script's Monte Carlo K (per point, nats) with a linear-Gaussian reverse kernel."""
    A, B, V = (jnp.asarray(z, jnp.float32)[:, None, None] for z in (a, b, v))

    def reverse(xt, ts):
        return A[ts - 2] * xt + B[ts - 2], jnp.broadcast_to(V[ts - 2], xt.shape)

    return jax.jit(lambda k, x: m.gaussian_K(k, x, jnp.asarray(betas, jnp.float32), reverse))(
        jax.random.key(key), x0
    )


def pad(z):  # kernels indexed by t = 1..T; script_K takes t = 2..T
    return z[1:]


def test_null_model_identity():
    """N(0, I) data and the reverse kernel = forward form: K = −(d/2) log 2πe exactly."""
    betas = f64_betas(beta1=1e-3)
    null = (np.sqrt(1 - betas), np.zeros(40), betas)
    np.testing.assert_allclose(exact_K(betas, *null, 0.0, 1.0), -0.5 * LOG2PIE, rtol=1e-12)
    np.testing.assert_allclose(exact_L(betas, *null, 0.0, 1.0), -0.5 * LOG2PIE, rtol=1e-12)
    x0 = jax.random.normal(jax.random.key(3), (50_000, 2))
    K = script_K(betas, *map(pad, null), x0)
    assert within(K.mean(), K.std() / np.sqrt(K.size), -LOG2PIE)  # d = 2


def test_bound_holds_and_is_tight_for_linear_gaussian_chains():
    betas = f64_betas(beta1=1e-3)
    mu = 0.6
    var = 0.64  # unit second moment: 0.36 + 0.64
    rng = np.random.default_rng(4)
    for _ in range(3):  # random kernels: K ≤ L (far below)
        a = 1 + 0.3 * rng.standard_normal(40)
        b = 0.3 * rng.standard_normal(40)
        v = betas * np.exp(rng.standard_normal(40))
        assert exact_K(betas, a, b, v, mu, var) < exact_L(betas, a, b, v, mu, var)
    opt = optimal_kernels(betas, mu, var)
    null = (np.sqrt(1 - betas), np.zeros(40), betas)
    K = exact_K(betas, *opt, mu, var)
    L = exact_L(betas, *opt, mu, var)
    K_null = exact_K(betas, *null, mu, var)
    L_null = exact_L(betas, *null, mu, var)
    # at the true reverse conditionals only the fixed last step and q(xᵀ) ≠ π leave a gap,
    # O(β₁ + ᾱ_T²) ~ 1e-3 nats, small against what they gain over the null model (0.22 nats)
    assert 0 <= L - K < 3e-3 and K - K_null > 0.2
    assert abs(L_null - K_null) < 1e-10  # the null chain is reversible: no Jensen gap at all
    # the script's Monte Carlo K agrees with the closed form for both kernels
    x0 = mu + np.sqrt(var) * jax.random.normal(jax.random.key(5), (100_000, 1))
    for kernels in (opt, null):
        Kmc = script_K(betas, *map(pad, kernels), x0)
        assert within(Kmc.mean(), Kmc.std() / np.sqrt(Kmc.size), exact_K(betas, *kernels, mu, var))


def test_eq14_needs_unit_second_moment():
    """Data N(0, 9), null kernel: eq. 14 exceeds the true log-likelihood; eq. 12 (eq. 14 minus
    ½(β₁ + ᾱ_T)(E x² − d)) does not. For the null chain the Jensen gap is 0, so eq. 12 = L."""
    betas = f64_betas(beta1=1e-3)
    null = (np.sqrt(1 - betas), np.zeros(40), betas)
    K14 = exact_K(betas, *null, 0.0, 9.0)
    L = exact_L(betas, *null, 0.0, 9.0)
    np.testing.assert_allclose(L, -0.5 * np.log(2 * np.pi) - 4.5, rtol=1e-12)
    correction = -0.5 * (betas[0] + np.prod(1 - betas)) * (9.0 - 1.0)
    assert K14 > L + 0.02  # not a bound any more
    np.testing.assert_allclose(K14 + correction, L, rtol=1e-10)
    x0 = 3.0 * jax.random.normal(jax.random.key(6), (200_000, 1))
    K = script_K(betas, *map(pad, null), x0)
    assert within(K.mean(), K.std() / np.sqrt(K.size), K14)
    # the script standardizes its data exactly: E|x⁰|² = d = 2
    x = np.asarray(m.make_swiss_roll(jax.random.key(7), 400_000, m.Config()), np.float64)
    assert within(np.sum(x**2, 1).mean(), np.sum(x**2, 1).std() / np.sqrt(len(x)), 2.0)


def test_bits_conversion_reproduces_table_1():
    assert abs(m.L_null_bits(2) + 4.094) < 1e-3
    assert abs(2.35 - m.L_null_bits(2) - 6.45) < 0.01  # swiss roll row
    assert abs(-0.55 - m.L_null_bits(1) - 1.50) < 0.01  # bark, per pixel
    assert abs(1.489 - m.L_null_bits(1) - 3.536) < 1e-3  # dead leaves, per pixel
    assert abs(5.4 - 3 * m.L_null_bits(1) - 11.5) < 0.05  # CIFAR-10, 3 colours per pixel


def test_ceiling_matches_the_arc_length_formula():
    """E log q(x¹) ≈ E log p_arc − ½ log 2πeβ₁ for a thin noiseless roll (codimension 1)."""
    cfg = m.Config()
    a = cfg.phi_lo
    b = cfg.phi_hi
    s = np.sqrt(2 / ((a * a + a * b + b * b) / 3))
    phi = np.linspace(a, b, 100_001)
    e_log_arc = np.mean(-np.log((b - a) * s * np.sqrt(1 + phi**2)))
    approx = (e_log_arc - 0.5 * np.log(2 * np.pi * np.e * cfg.beta1)) / np.log(2)
    mean, se = jax.jit(m.roll_ceiling, static_argnums=(1, 2))(jax.random.key(8), cfg, 2000)
    # the same quadrature, x¹ drawn with its own keys for data and noise
    assert within(mean, se, approx)
    lo, up = m.entropy_bounds(m.fixed_betas(cfg))  # eq. 24: a non-empty interval
    assert np.all(lo <= up) and np.all(np.isfinite(lo))


def test_best_gaussian_kernel_bound_equals_closed_form_for_gaussian_data():
    """For 1-D data N(mu, var) the true reverse conditionals are linear-Gaussian, so the best
    Gaussian kernel's K is exact_K at optimal_kernels; the quadrature must reproduce it."""
    betas = f64_betas(beta1=1e-3)
    mu = 0.6
    var = 0.64
    want = exact_K(betas, *optimal_kernels(betas, mu, var), mu, var)
    grid = jnp.linspace(mu - 8 * np.sqrt(var), mu + 8 * np.sqrt(var), 4096)[:, None]
    log_prior = -((grid[:, 0] - mu) ** 2) / (2 * var)
    # 256 points: each gives the same K (below), so their number only sets the cost
    x0 = mu + np.sqrt(var) * jax.random.normal(jax.random.key(40), (256, 1))
    b32 = jnp.asarray(betas, jnp.float32)
    K_diag, K_full = jax.jit(m.kernel_bounds)(jax.random.key(41), x0, b32, grid, log_prior)
    # the posterior of Gaussian data has a constant covariance, so every point gives the same
    # value: agreement to float32 precision over 39 summed terms (1e-5 relative)
    assert abs(float(K_diag.mean()) - want) < 4 * float(K_diag.std()) + 1e-5 * abs(want)
    np.testing.assert_allclose(K_diag, K_full, rtol=1e-5)  # d = 1: diagonal = full
    # a kernel family that ignores the data (the null model) does worse: the bound is not vacuous
    null = (np.sqrt(1 - betas), np.zeros(40), betas)
    assert want > exact_K(betas, *null, mu, var) + 0.2


def test_roll_bounds_are_ordered():
    """diagonal ≤ full covariance per point, exactly: with r = c·Cov[x⁰|xᵗ] positive
    semi-definite, each t's minimal KL is ½ Σᵢ log(1 + rᵢᵢ) for the diagonal kernel and
    ½ log det(I + r) for the full one, and Hadamard's inequality gives det ≤ Π of the diagonal,
    for every point and every noise draw (both kernels see the same xᵗ). Then full ≤ ceiling
    up to Monte Carlo error, on a thick roll (β₁ = 1e-3) and a coarse grid."""
    cfg = m.Config(beta1=1e-3, n_test=500, bound_points=100, quad_grid=2**11)
    x0 = m.make_swiss_roll(jax.random.key(43), cfg.bound_points, cfg)
    grid = m.roll_grid(cfg)
    K_diag, K_full = jax.jit(m.kernel_bounds)(
        jax.random.key(44), x0, m.fixed_betas(cfg), grid, jnp.zeros(len(grid))
    )
    K_diag = np.asarray(K_diag, np.float64)
    K_full = np.asarray(K_full, np.float64)
    # float32 sums of 39 terms of a few nats each: rounding below 1e-5 nats
    assert np.all(K_diag <= K_full + 1e-5)
    # not an identity here: the roll's posterior covariance is not diagonal (gap above rounding)
    assert np.any(K_full > K_diag + 1e-3)
    b = jax.jit(m.roll_bounds, static_argnums=1)(jax.random.key(42), cfg)
    assert float(b["full"]) < float(b["ceiling"]) + 4 * np.hypot(b["full_se"], b["ceiling_se"])
    assert float(b["diag"]) > m.L_null_bits(2) + 2  # far above the null model (−4.09)


def test_heartbeat_bound_is_minus_the_entropy_of_x1():
    """K ≤ −H_q(X¹) (the KLs vanish only for the true reverse process); by enumerating all
    2²⁰ sequences x¹ this equals −log₂5 − H_q(X¹|X⁰) to 1e-6 bits at T = 2000."""
    cfg = m.Config()
    phases = np.asarray(m.heartbeat(jnp.arange(cfg.period), cfg), np.float64)  # (5, 20)
    rate = np.asarray(m.binomial_rate(phases, 1, cfg.T_bin, cfg.p), np.float64)
    log1 = np.log2(rate)
    log0 = np.log2(1 - rate)
    H = 0.0
    for chunk in range(16):
        codes = np.arange(chunk << 16, (chunk + 1) << 16)
        x = ((codes[:, None] >> np.arange(cfg.seq_len)) & 1).astype(np.float64)  # (2¹⁶, 20)
        log_q = np.log2(np.mean(2.0 ** (x @ log1.T + (1 - x) @ log0.T), 1))  # q(x¹)
        H -= np.sum(2.0**log_q * log_q)
    assert m.heartbeat_bound_bits(cfg) == pytest.approx(-H, abs=1e-6)
    assert m.heartbeat_bound_bits(cfg) == pytest.approx(-2.366, abs=1e-3)


# -- binomial diffusion


def test_binomial_forward_marginal_and_posterior():
    T = 50
    p = 0.2
    n = 200_000
    x0 = (jnp.arange(n) % 2).astype(jnp.float32)  # half ones, half zeros
    x = x0
    key = jax.random.key(9)
    for t in range(1, T + 1):  # iterate q(xᵗ = 1|xᵗ⁻¹) = xᵗ⁻¹(1 − β_t) + pβ_t
        key, sub = jax.random.split(key)
        x = jax.random.bernoulli(sub, x * (1 - 1 / (T - t + 1)) + p / (T - t + 1)).astype(
            jnp.float32
        )
        if t in (1, 10, 25, T):
            for v in (0.0, 1.0):
                r = float(m.binomial_rate(v, t, T, p))
                assert within(x[x0 == v].mean(), np.sqrt(r * (1 - r) / (n / 2)), r)
    assert float(m.binomial_rate(1.0, T, T, p)) == pytest.approx(p)  # xᵀ independent of x⁰
    for t in (2, 3, 25, T):  # brute-force Bayes over x^{t-1} ∈ {0, 1}
        beta = 1 / (T - t + 1)
        for v0 in (0.0, 1.0):
            for vt in (0.0, 1.0):
                prior1 = v0 * (1 - (t - 1) / T) + p * (t - 1) / T

                def lik(prev):
                    one = prev * (1 - beta) + p * beta  # q(xᵗ = 1 | xᵗ⁻¹ = prev)
                    return one if vt else 1 - one

                want = prior1 * lik(1) / (prior1 * lik(1) + (1 - prior1) * lik(0))
                got = float(m.binomial_posterior(jnp.float32(v0), jnp.float32(vt), t, T, p))
                assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_binomial_null_model_identity():
    """iid B(p) data and f_b = xᵗ(1 − β_t) + pβ_t (the π-reversal): K = L_null exactly."""
    cfg = m.Config(T_bin=100)
    x0 = jax.random.bernoulli(jax.random.key(10), cfg.p, (2000, cfg.seq_len)).astype(jnp.float32)

    def null(xt, t):
        beta = 1 / (cfg.T_bin - t[..., None] + 1)
        return xt * (1 - beta) + cfg.p * beta

    K = jax.jit(lambda k: m.binomial_K(k, x0, null, cfg))(jax.random.key(11))
    L_null = cfg.seq_len * (cfg.p * np.log(cfg.p) + (1 - cfg.p) * np.log(1 - cfg.p))
    assert within(K.mean(), K.std() / np.sqrt(K.size), L_null)
    # the untrained network is this null model
    params = m.init_mlp(jax.random.key(12), cfg)
    xt = jax.random.bernoulli(jax.random.key(13), 0.3, (7, cfg.seq_len)).astype(jnp.float32)
    t = jnp.arange(2, 9)
    np.testing.assert_allclose(m.mlp_reverse(params, xt, t, cfg), null(xt, t), rtol=1e-5)


# -- gradients, determinism, clamping


def test_check_grads_of_both_losses():
    """Both losses against finite differences in float64, β₂…T learned on the roll."""
    with jax.enable_x64(True):
        cfg = m.Config(T=6, hidden=3, roll_batch=4, T_bin=20, width=4, bumps=3, beat_batch=4)

        def perturbed(tree, key):
            keys = jax.random.split(key, len(jax.tree_util.tree_leaves(tree)))
            leaves, treedef = jax.tree_util.tree_flatten(tree)
            moved = [
                a.astype(jnp.float64) + 0.1 * jax.random.normal(k, a.shape)
                for a, k in zip(leaves, keys)
            ]
            return jax.tree_util.tree_unflatten(treedef, moved)

        # every parameter in one flat vector: check_grads's own eager arithmetic then runs on
        # one array instead of one per leaf (each new leaf shape is a new small compile)
        roll, unravel_roll = ravel_pytree(
            perturbed(m.init_rbf(jax.random.key(14), cfg), jax.random.key(15))
        )

        def roll_loss(flat):
            return m.roll_loss(cfg)(unravel_roll(flat), jax.random.key(16), True)

        check_grads(jax.jit(roll_loss), (roll,), order=1, modes=["rev"])
        beat, unravel_beat = ravel_pytree(
            perturbed(m.init_mlp(jax.random.key(17), cfg), jax.random.key(18))
        )

        def beat_loss(flat):
            return m.beat_loss(cfg)(unravel_beat(flat), jax.random.key(19))

        check_grads(jax.jit(beat_loss), (beat,), order=1, modes=["rev"])


def test_beta_offsets_get_a_gradient_only_when_learned():
    cfg = m.Config(T=6, hidden=3, roll_batch=8)
    params = m.init_rbf(jax.random.key(30), cfg)
    params = dict(params, W=0.1 * jax.random.normal(jax.random.key(31), params["W"].shape))
    grad = jax.jit(jax.grad(m.roll_loss(cfg)))  # one compile: the flag is traced
    fixed = grad(params, jax.random.key(32), False)
    learned = grad(params, jax.random.key(32), True)
    assert np.all(fixed["dlogit_beta"] == 0) and np.any(learned["dlogit_beta"] != 0)
    np.testing.assert_allclose(fixed["W"], learned["W"], rtol=1e-6)  # the rest is unchanged
    # zero offsets are the fixed schedule, and β₁ never moves
    np.testing.assert_allclose(m.roll_betas(params, cfg), m.fixed_betas(cfg), rtol=1e-5)
    moved = dict(params, dlogit_beta=jnp.ones(cfg.T - 1))
    assert m.roll_betas(moved, cfg)[0] == pytest.approx(cfg.beta1, rel=1e-5)


def test_cosine_schedule():
    rate = m.cosine_schedule(0.03, 100)
    assert float(rate(0)) == pytest.approx(0.03)
    assert float(rate(50)) == pytest.approx(0.015)
    assert float(rate(100)) == pytest.approx(0.0, abs=1e-9)


def test_jit_matches_eager_and_same_key_same_K():
    cfg = m.Config(hidden=8, roll_batch=16)
    params = m.init_rbf(jax.random.key(20), cfg)
    params = dict(params, W=0.1 * jax.random.normal(jax.random.key(21), params["W"].shape))
    loss = m.roll_loss(cfg)
    eager = loss(params, jax.random.key(22), False)
    jitted = jax.jit(loss)(params, jax.random.key(22), False)
    np.testing.assert_allclose(eager, jitted, rtol=1e-5)
    assert float(loss(params, jax.random.key(23), False)) != float(eager)


def test_local_linear_readout_is_linear_in_x_per_unit():
    """With one unit (h ≡ 1) the readout is exactly W + V x: f_μ is affine in x."""
    cfg = m.Config(T=4, hidden=1)
    params = m.init_rbf(jax.random.key(33), cfg)
    params = dict(params, W=jax.random.normal(jax.random.key(34), params["W"].shape))
    betas = m.fixed_betas(cfg)
    x = jax.random.normal(jax.random.key(35), (5, 2))
    mean, _ = m.rbf_reverse(params, x, jnp.array(3), betas)
    W = params["W"][2, 0]
    z = W[:4] + x[:, :1] * W[4:8] + x[:, 1:] * W[8:]
    want = jnp.sqrt(1 - betas[2]) * x + jnp.sqrt(betas[2]) * (z[:, :2] + params["b"][2, :2])
    np.testing.assert_allclose(mean, want, rtol=1e-5, atol=1e-6)
    plain = m.init_rbf(jax.random.key(33), replace(cfg, local_linear=False))
    assert plain["W"].shape[-1] == 4


def test_clamped_coordinates_stay_exact():
    cfg = m.Config(T=10, T_bin=20)
    betas = m.fixed_betas(cfg)
    n = 64
    mask = jnp.zeros((n, 2), bool).at[:, 0].set(True)
    x0 = m.sample_gaussian(
        jax.random.key(24), m.init_rbf(jax.random.key(25), cfg), betas, mask, jnp.full((n, 2), 0.5)
    )[0]
    assert np.all(x0[:, 0] == 0.5) and np.std(np.asarray(x0[:, 1])) > 0.1
    target = m.heartbeat(jnp.array(2), cfg)
    mask = jnp.zeros((n, cfg.seq_len), bool).at[:, :5].set(True)
    x = m.sample_binary(
        jax.random.key(26),
        m.init_mlp(jax.random.key(27), cfg),
        cfg,
        mask,
        jnp.broadcast_to(target, mask.shape),
    )
    assert np.all(x[:, :5] == target[:5])
    assert set(np.unique(np.asarray(x))) <= {0.0, 1.0}


# -- the script


def test_quick_run_learns(tmp_path_factory):
    """The session's one quick run (tests/conftest.py runs it as a notebook)."""
    saved = quick_run("01_diffusion", tmp_path_factory)["record"]
    met = saved["metrics"]
    for name in ("K_bits_swiss_roll", "K_bits_heartbeat", "valid_fraction_heartbeat"):
        assert name in met and len(met[name]["per_seed"]) == 3
    for name in ("K_bound_diag_gaussian", "K_ceiling", "learned_beta_gain_bits"):
        assert name in met
    assert all(np.isfinite(v["mean"]) for v in met.values())
    K_roll = np.array(met["K_bits_swiss_roll"]["per_seed"])
    K_beat = np.array(met["K_bits_heartbeat"]["per_seed"])
    diag = met["K_bound_diag_gaussian"]["mean"]
    beat_bound = met["K_bound_heartbeat"]["mean"]
    # learning: the untrained network is the null model (K = L_null, test_binomial_null_model_
    # identity); the quick run must make more than half the gain over it that the best kernel
    # allows (the best diagonal Gaussian kernel on the roll, the tight bound on the heartbeat)
    L_null_roll = m.L_null_bits(2)
    L_null_beat = -14.439  # 20·(0.2 log₂ 0.2 + 0.8 log₂ 0.8), Table 1's accounting
    assert np.all(K_roll - L_null_roll > 0.5 * (diag - L_null_roll))
    assert np.all(K_beat - L_null_beat > 0.5 * (beat_bound - L_null_beat))
    assert met["K_minus_L_null_heartbeat"]["mean"] - K_beat.mean() == pytest.approx(
        -L_null_beat, abs=1e-3
    )
    # K is a lower bound. Our kernel is a diagonal Gaussian, so on the fixed schedule K cannot
    # exceed the best diagonal kernel's K, which cannot exceed the best full-covariance kernel's,
    # which cannot exceed the ceiling E log q(x¹) (each up to its Monte Carlo error, 4 s.e.)
    se_K = np.array(met["K_se_swiss_roll"]["per_seed"])
    se_diag = met["K_bound_diag_gaussian_se"]["mean"]
    full = met["K_bound_full_gaussian"]["mean"]
    se_full = met["K_bound_full_gaussian_se"]["mean"]
    ceiling = met["K_ceiling"]["mean"]
    se_ceiling = met["K_ceiling_se"]["mean"]
    assert np.all(K_roll < diag + 4 * np.hypot(se_K, se_diag))
    assert diag < full + 4 * np.hypot(se_diag, se_full)
    assert full < ceiling + 4 * np.hypot(se_full, se_ceiling)
    K_learned = np.array(met["K_bits_swiss_roll_learned_beta"]["per_seed"])
    assert np.all(K_learned < ceiling + 4 * np.hypot(se_K, se_ceiling))  # β₁ is never learned
    # the heartbeat's tight bound −log₂5 − H_q(X¹|X⁰) = −2.366 (test_heartbeat_bound_...)
    assert beat_bound == pytest.approx(-2.366, abs=1e-3)
    se_beat = np.array(met["K_se_heartbeat"]["per_seed"])
    assert np.all(K_beat < beat_bound + 4 * se_beat)
    # valid samples follow from K. K ≤ E_q log₂ p(x¹) ≤ log₂ Σ q(x¹)p(x¹) (Jensen); q puts less
    # than 1/5 on each of the 5 valid sequences and less than off = (1 − p)/T (one flip away) on
    # any other x¹, so the model's mass on valid x¹ is ≥ 5(2^K − off); the fixed last step keeps
    # a valid x¹ valid with probability keep = (1 − (1 − p)/T)⁴(1 − p/T)¹⁶ (no bin flips).
    # Estimates: K within 4 s.e., the fraction within 4 binomial s.e. of its n samples
    T = saved["config"]["T_bin"]
    p = saved["config"]["p"]
    n = saved["config"]["n_samples"]
    off = (1 - p) / T
    keep = (1 - (1 - p) / T) ** 4 * (1 - p / T) ** 16
    valid = np.array(met["valid_fraction_heartbeat"]["per_seed"])
    implied = keep * 5 * (2.0 ** (K_beat - 4 * se_beat) - off)
    assert np.all(valid > implied - 4 * np.sqrt(np.maximum(valid * (1 - valid), 0.01) / n))
    # clamping steers the completion: a sampler that ignored the clamp would complete phase 2
    # with probability p(its last 15 bins) ≈ valid/5 ≤ 0.2 for a model that treats the 5 phases
    # alike (the data do); 3 seeds × n samples, 4 binomial s.e.
    inpaint = met["inpaint_accuracy_heartbeat"]["mean"]
    assert inpaint > 0.2 + 4 * np.sqrt(0.2 * 0.8 / (3 * n))


@pytest.mark.parametrize(
    "argv, allowed",
    [
        (["--beta1", "0.7"], "(0, 0.5)"),
        (["--beta1", "nan"], "(0, 0.5)"),
        (["--hidden", "0"], "> 0"),
        (["--seeds", "0"], "> 0"),
        (["--bogus"], "unrecognized"),
    ],
)
def test_bad_input_is_refused(argv, allowed, capsys):
    with pytest.raises(SystemExit) as e:
        m.main(argv)
    assert e.value.code == 2
    assert allowed in capsys.readouterr().err
