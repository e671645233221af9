"""Tests for 03_hierarchical_rnn_opt.py: exact reductions of the learned optimizer, its
invariances and wiring, the meta-gradient, the problem families (unbiased minibatches, no
degenerate family, every 2-D function in every split), TaskSet's list and the random-search
expectation, the analysis code on known optimizers (heavy ball, RMSProp), and the script's
command line. Thresholds come from the maths or the issue's claim, never from a printout."""

import itertools
from dataclasses import replace
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load, quick_run
from jax.test_util import check_grads

m = load("03_hierarchical_rnn_opt")
SEG = np.array([0, 0, 0, 0, 1, 1, 2])  # three tensors of sizes 4, 2, 1


def quadratic(key, n=len(SEG)):
    k_a, k_star = jax.random.split(key)
    A = jax.random.normal(k_a, (2 * n, n), jnp.float64)
    x_star = jax.random.normal(k_star, (n,), jnp.float64)

    def f(theta):
        return 0.5 * jnp.mean((A @ (theta - x_star)) ** 2)

    return f, A, x_star


def full_grad(f):
    """The stochastic-gradient interface, grad(θ, key), for an exact gradient."""

    def grad(theta, key):
        return jax.grad(f)(theta)

    return grad


def meta64(key, cfg, **overrides):
    meta = jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, jnp.float64), m.init_meta_params(key, cfg)
    )
    return {**meta, **{k: jnp.asarray(v, jnp.float64) for k, v in overrides.items()}}


@partial(jax.jit, static_argnums=4)
def hrnn_update(meta, g, state, theta, cfg):
    """One step of the learned optimizer on SEG's layout; φ is an argument, so one compile per
    (Config, dtype) serves every φ of every test (eager, each first use of an op compiles)."""
    return m.make_hrnn_optimizer(meta, SEG, cfg)[1](g, state, theta)


def trajectory(meta, f, theta, cfg, steps, key=jax.random.key(0)):
    state = m.make_hrnn_optimizer(meta, SEG, cfg)[0](theta, key)
    out = []
    for _ in range(steps):
        g = jax.grad(f)(theta)
        out.append((theta, g))
        theta, state = hrnn_update(meta, g, state, theta, cfg)
    return theta, state, out


def sign_meta(key, cfg, b_inp):
    """w_u = 0, w_s = (1, 0, ...), decays through biases only, no learned step: sign methods."""
    z = np.zeros(cfg.H0)
    return meta64(
        key,
        cfg,
        w_u=z,
        w_s=np.eye(cfg.K)[0],
        w_scl=z,
        b_scl=-30.0,
        w_inp=z,
        b_inp=b_inp,
        w_eta=z,
        b_eta=0.0,
        c=0.0,
    )


CONST = m.Config(eta_lo=0.01, eta_hi=0.01)  # η = 0.01 for every coordinate


@pytest.mark.parametrize("seed", [1, 2])  # any GRU weights: two random draws
def test_reduces_to_sign_sgd(seed):
    with jax.enable_x64(True):
        meta = sign_meta(jax.random.key(seed), CONST, -30.0)
        f, _, _ = quadratic(jax.random.key(3))
        theta0 = jnp.zeros(len(SEG), jnp.float64)
        state = m.make_hrnn_optimizer(meta, SEG, CONST)[0](theta0, jax.random.key(0))
        keys = jax.random.split(jax.random.key(1), 20)
        theta, _, fs, _ = m.unroll(meta, f, full_grad(f), theta0, state, keys, SEG, CONST)
        x = np.zeros(len(SEG))
        for _ in range(20):  # float64 numpy loop
            x = x - 0.01 * np.sign(np.asarray(jax.grad(f)(jnp.asarray(x))))
        np.testing.assert_allclose(theta, x, atol=1e-8)
        np.testing.assert_allclose(fs[-1], f(jnp.asarray(x)), rtol=1e-8)


def test_reduces_to_sign_of_momentum():
    with jax.enable_x64(True):
        meta = sign_meta(jax.random.key(4), CONST, np.log(0.9 / 0.1))  # β = sigmoid(b) = 0.9
        f, _, _ = quadratic(jax.random.key(5))
        _, _, out = trajectory(meta, f, jnp.zeros(len(SEG), jnp.float64), CONST, 20)
        x = np.zeros(len(SEG))
        mom = np.zeros(len(SEG))
        for t, (theta, g) in enumerate(out):
            np.testing.assert_allclose(theta, x, atol=1e-8)
            beta = 0.0 if t == 0 else 0.9  # the decay state starts at 0: no averaging at step 1
            mom = beta * mom + (1 - beta) * np.asarray(jax.grad(f)(jnp.asarray(x)))
            x = x - 0.01 * np.sign(mom)


def test_loss_scale_invariance():
    """Features and outputs are ratios of gradient statistics: c·f gives the same trajectory.
    Only the 1e-12 inside v breaks it, by ~1e-12/(c g)² ≤ 1e-6 here, hence rtol 1e-5."""
    with jax.enable_x64(True):
        cfg = m.Config()
        meta = meta64(jax.random.key(6), cfg)
        f, _, _ = quadratic(jax.random.key(7))
        theta0 = jax.random.normal(jax.random.key(8), (len(SEG),), jnp.float64)
        runs = {}
        for c in (1e-3, 1.0, 1e3):

            def scaled(th, c=c):
                return c * f(th)

            runs[c] = trajectory(meta, scaled, theta0, cfg, 50)[0]
        for c in (1e-3, 1e3):
            np.testing.assert_allclose(runs[c], runs[1.0], rtol=1e-5)
        fs = jnp.array([3.0, 2.0, 0.5])
        for c in (1e-3, 1e3):
            np.testing.assert_allclose(
                m.meta_objective(c * fs, c * 4.0), m.meta_objective(fs, 4.0), rtol=1e-12
            )


def test_meta_objective_values():
    assert abs(float(m.meta_objective(jnp.full(5, 2.0), 2.0))) < 1e-5  # log(1 + 1e-6)
    assert float(m.meta_objective(jnp.array([1.0, 0.5, 0.1]), 2.0)) < 0
    nan_inf = m.meta_objective(jnp.array([jnp.nan, jnp.inf]), 1.0)
    assert float(nan_inf) == pytest.approx(np.log(1e3))
    assert float(m.meta_objective(jnp.array([1.0, 3.0]), 2.0, linear=True)) == pytest.approx(1.0)


def test_permutation_equivariance():
    """Permuting a tensor's coordinates (and the problem's) permutes the trajectory."""
    with jax.enable_x64(True):
        meta = meta64(jax.random.key(9), CONST)
        f, _, _ = quadratic(jax.random.key(10))
        perm = np.array([2, 0, 3, 1, 5, 4, 6])  # within tensors 0 and 1
        theta0 = jax.random.normal(jax.random.key(11), (len(SEG),), jnp.float64)

        def g(th):  # g(θ[perm]) = f(θ)
            return f(th[np.argsort(perm)])

        a = trajectory(meta, f, theta0, CONST, 20)[0]
        b = trajectory(meta, g, theta0[perm], CONST, 20)[0]
        np.testing.assert_allclose(b, a[perm], rtol=1e-10, atol=1e-12)


def test_hierarchy_wiring():
    """With the bias maps A at 0 no tensor influences another; the global state sees them all."""
    with jax.enable_x64(True):
        cfg = m.Config()
        f, _, _ = quadratic(jax.random.key(12))
        theta0 = jax.random.normal(jax.random.key(13), (len(SEG),), jnp.float64)
        g1 = jax.random.normal(jax.random.key(14), (len(SEG),), jnp.float64)

        @jax.jit  # one compile serves both φ below
        def jacobians(meta):  # after 3 warm-up steps: at step 1 the features are only signs of g
            theta, st, _ = trajectory(meta, f, theta0, cfg, 3)

            def two_steps(g0):  # θ_{t+2} as a function of g_t
                th, s = hrnn_update(meta, g0, st, theta, cfg)
                return hrnn_update(meta, g1, s, th, cfg)[0]

            def global_state(g0):  # h2 after one step, as a function of g_t
                return hrnn_update(meta, g0, st, theta, cfg)[1]["h2"]

            g = jax.grad(f)(theta)
            return jax.jacobian(two_steps)(g), jax.jacobian(global_state)(g)

        cross = SEG[:, None] != SEG[None, :]
        meta = meta64(jax.random.key(15), cfg)
        zero = {**meta, **{a: jnp.zeros_like(meta[a]) for a in ("A10", "A20", "A21")}}
        jac_zero = np.asarray(jacobians(zero)[0])
        assert np.all(jac_zero[cross] == 0)
        assert np.abs(jac_zero[~cross]).max() > 1e-3
        # through h2 the cross path is a product of many (1 - u) ≈ 0.1 gates: small, but a real
        # path, not rounding: float64 rounding of the within-tensor entries is ~1e-16 of them,
        # and we ask the cross-tensor entries for 1e-8 of them, eight orders above it
        jac, dh2 = (np.asarray(a) for a in jacobians(meta))
        within = np.abs(jac[~cross]).max()
        assert np.abs(jac[cross]).max() > 1e-8 * within
        for t in range(3):  # the code feeds only the last tensor up; we take the mean of all
            assert np.abs(dh2[:, SEG == t]).max() > 1e-9


def test_straight_through_clip():
    x = jnp.array([-50.0, -1.0, 0.0, 20.0, 40.0])
    np.testing.assert_array_equal(m.st_clip(x), jnp.clip(x, -33, 33))
    np.testing.assert_array_equal(jax.grad(lambda z: m.st_clip(z).sum())(x), jnp.ones(5))


SMALL = m.Config(K=2, H0=4, H1=4, H2=4)


def small_meta_loss():
    f, _, _ = quadratic(jax.random.key(16), n=3)
    seg = np.array([0, 0, 1])

    def meta_loss(meta, c):
        theta0 = jnp.ones(3, jnp.float64)
        state = m.make_hrnn_optimizer(meta, seg, SMALL)[0](theta0, jax.random.key(0))

        def scaled(th):
            return c * f(th)

        keys = jax.random.split(jax.random.key(1), 5)
        fs = m.unroll(meta, scaled, full_grad(scaled), theta0, state, keys, seg, SMALL)[2]
        return m.meta_objective(fs, c * f(theta0))

    return jax.jit(meta_loss)


def test_meta_gradient_and_finiteness():
    """Second-order meta-gradient against finite differences (float64), and finite meta-gradients
    for huge (1e8) and tiny (1e-10) gradient scales."""
    with jax.enable_x64(True):
        meta = meta64(jax.random.key(17), SMALL)
        meta_loss = small_meta_loss()
        check_grads(
            lambda mt: meta_loss(mt, 1.0), (meta,), order=1, modes=("rev",), atol=1e-5, rtol=1e-5
        )
        for c in (1e8, 1e-10):
            grads = jax.grad(meta_loss)(meta, c)
            assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))


def test_zero_huge_tiny_gradients_keep_state_finite():
    with jax.enable_x64(False):
        cfg = replace(m.Config(), use_attention=True)
        meta = m.init_meta_params(jax.random.key(18), cfg)
        # int32 indices: SEG's int64 conversion, cached by JAX under x64 in earlier tests, fails
        # in this float32 test's eager indexing (lax.add of int64 and int32)
        init, update = m.make_hrnn_optimizer(meta, SEG.astype(np.int32), cfg)
        update = jax.jit(update)  # one compile for the 30 steps below
        for scale in (0.0, 1e8, 1e-10):
            theta = jnp.ones(len(SEG))
            state = init(theta, jax.random.key(1))
            for t in range(10):
                g = jax.random.normal(jax.random.fold_in(jax.random.key(19), t), theta.shape)
                theta, state = update(scale * g, state, theta)
            leaves = jax.tree_util.tree_leaves((theta, state))
            assert all(np.all(np.isfinite(x)) for x in leaves), scale
            assert np.abs(np.asarray(state["look"])).max() > 0  # attention looks ahead


# --- the problem families ------------------------------------------------------------------

TINY = m.Config(per_family=3)
# jitted once for the tests below: the family index is an argument, so one compile serves all
# four families (eager, vmap over a lax.switch compiles op by op)
make_problems = jax.jit(jax.vmap(m.make_problem, (0, None, None, None)), static_argnums=3)
noisy_grads = jax.jit(jax.vmap(m.stochastic_grad, (None, None, 0, None)), static_argnums=3)
exact_grad = jax.jit(jax.grad(m.loss), static_argnums=2)


def make_problem(key, kind, which, cfg=TINY):
    """m.make_problem through the jitted, vmapped helper."""
    return jax.tree_util.tree_map(lambda a: a[0], make_problems(key[None], kind, which, cfg))


@pytest.fixture(scope="module")
def splits():
    """The three splits of three seeds at 3 instances per family (the quick run's shapes: one
    compile serves both), built twice from the same seeds."""
    return m.make_splits(TINY, [0, 1, 2]), m.make_splits(TINY, [0, 1, 2])


def horizon_cdf(x, cfg):
    """P(H <= x) of sample_horizon's law, from the code's definition (independently of the
    script's constants): N = 1 + round(Exp(40)), P(N = n) = P(n - 3/2 < Exp(40) < n - 1/2);
    given N = n, H_code = 50 n + 200 Gamma(n); H = c H_code with c = unrolls T / E[H_code]."""
    from scipy.special import gammainc

    n = np.arange(1, 3001)[:, None]  # P(N > 3000) = exp(-2999.5 / 40) ≈ 3e-33
    upper = np.exp(-np.maximum(n - 1.5, 0) / 40)  # P(Exp(40) > n - 3/2), 1 for n = 1
    p_n = upper - np.exp(-(n - 0.5) / 40)
    mean_n = 1 + np.sum(np.exp(-(np.arange(1, 10**4) - 0.5) / 40))  # 1 + Σ_k P(round(X) >= k)
    c = cfg.unrolls * cfg.T / (mean_n * 250)
    z = np.maximum(np.asarray(x, np.float64)[None] / c - 50 * n, 0) / 200
    return np.sum(p_n * gammainc(n, z), 0)


def test_heavy_tailed_horizons_follow_the_code_law():
    """The horizon sampler against its closed-form CDF (Dvoretzky-Kiefer-Wolfowitz: with 20,000
    draws, sup |F_n - F| > 0.02 has probability <= 2 exp(-2 n 0.02^2) = 2e-7), its mean against
    unrolls·T (5 standard errors), and the unrolls per problem that meta-training draws (at least
    one; their mean against 1 + Σ_{k>=2} P(H > (k - 1/2) T), 5 standard errors)."""
    cfg = replace(TINY, heavy_tailed=True)
    draws = 20_000
    keys = jax.random.split(jax.random.key(40), draws)
    h = np.asarray(jax.jit(jax.vmap(lambda k: m.sample_horizon(k, cfg)))(keys), np.float64)
    x = np.array([5.0, 20, 50, 100, 200, 400, 800, 1600])
    empirical = (h[:, None] <= x[None]).mean(0)
    assert np.max(np.abs(empirical - horizon_cdf(x, cfg))) < 0.02
    mean = cfg.unrolls * cfg.T
    assert abs(h.mean() - mean) < 5 * h.std() / np.sqrt(draws)
    meta = m.init_meta_params(jax.random.key(41), cfg)
    new = jax.jit(jax.vmap(m.new_problem, (0, None, None)), static_argnums=2)
    left = np.asarray(new(keys[:4000], meta, cfg)["left"])
    assert left.min() >= 1 and left.dtype == np.int32
    k = np.arange(2, 2000)
    expected = 1 + np.sum(1 - horizon_cdf((k - 0.5) * cfg.T, cfg))
    assert abs(left.mean() - expected) < 5 * left.std() / np.sqrt(len(left))


def test_every_split_holds_every_family_and_2d_function(splits):
    for name in ("train", "val", "test"):
        for seed in range(3):
            kinds = np.asarray(splits[0][name]["probs"]["kind"][seed])
            which = np.asarray(splits[0][name]["probs"]["which"][seed])
            assert sorted(set(kinds)) == [0, 1, 2, 3]
            assert sorted(set(which[kinds == 1])) == [0, 1, 2]  # Rosenbrock, Booth and Matyas


def test_start_draws_are_independent():
    """The first edition drew the normal and the uniform start from one key: θ0 of the
    quadratic and of the 2-D family were then functions of the same numbers."""
    keys = jax.random.split(jax.random.key(21), 50)
    normal = make_problems(keys, 0, 0, TINY)["theta0"].ravel()
    uniform = make_problems(keys, 1, 0, TINY)["theta0"].ravel()
    r = np.corrcoef(np.asarray(normal), np.asarray(np.sign(uniform) * np.abs(uniform)))[0, 1]
    assert abs(r) < 4 / np.sqrt(len(normal))  # 4 standard errors of a null correlation


@pytest.mark.parametrize("kind", [0, 2, 3])
def test_minibatch_gradient_is_unbiased(kind):
    """Rows drawn without replacement: E[∇f_batch] = ∇f, within 4 standard errors."""
    prob = make_problem(jax.random.key(22), kind, 0)
    theta = prob["theta0"] + 0.1
    grads = noisy_grads(theta, prob, jax.random.split(jax.random.key(23), 4000), TINY)
    grads = np.asarray(grads, np.float64)
    se = grads.std(0) / np.sqrt(len(grads)) + 1e-6
    exact = np.asarray(exact_grad(theta, prob, TINY))
    assert np.all(np.abs(grads.mean(0) - exact) < 4 * se)
    assert np.all(grads.std(0).max() > 0)  # and it is noisy


def test_2d_gradients_are_noisy_and_unbiased():
    prob = make_problem(jax.random.key(24), 1, 0)
    theta = prob["theta0"]
    grads = noisy_grads(theta, prob, jax.random.split(jax.random.key(25), 4000), TINY)
    exact = np.asarray(exact_grad(theta, prob, TINY))
    noise = float(prob["grad_noise"])
    assert noise == pytest.approx(TINY.noise_2d * np.sqrt(np.mean(exact**2)), rel=1e-4)
    assert np.all(np.abs(np.asarray(grads).mean(0) - exact) < 4 * noise / np.sqrt(4000))


def to64(prob):
    """An instance with its float arrays in float64 (family indices stay integers)."""

    def convert(a):
        a = jnp.asarray(a)
        return a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a

    return jax.tree_util.tree_map(convert, prob)


def test_no_family_reaches_the_float_floor():
    """The least-squares minimum is positive (64 noisy rows, 36 unknowns), and the L2 term
    gives logistic regression a finite minimiser on any labels: f* / f0 is far above the
    score's 1e-6 floor (we demand > 1e-4)."""
    quadratic_prob = make_problem(jax.random.key(26), 0, 0)  # drawn in float32, as the script
    logistic_prob = make_problem(jax.random.key(27), 2, 0)
    with jax.enable_x64(True):
        prob = to64(quadratic_prob)
        theta_star = jnp.linalg.lstsq(prob["A"], prob["y"])[0]
        f0 = m.loss(prob["theta0"], prob, TINY)
        assert m.loss(theta_star, prob, TINY) / f0 > 1e-4
        prob = to64(logistic_prob)

        def newton(theta, _):  # the L2 term makes the Hessian positive definite
            g = jax.grad(m.loss)(theta, prob, TINY)
            return theta - jnp.linalg.solve(jax.hessian(m.loss)(theta, prob, TINY), g), None

        theta_star = jax.lax.scan(newton, prob["theta0"], None, length=30)[0]
        assert np.linalg.norm(jax.grad(m.loss)(theta_star, prob, TINY)) < 1e-8  # it exists
        assert np.all(np.isfinite(theta_star))
        assert m.loss(theta_star, prob, TINY) / m.loss(prob["theta0"], prob, TINY) > 1e-4


# --- TaskSet -------------------------------------------------------------------------------


def test_expected_best_of_k_against_monte_carlo_and_limits():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=12)
    assert m.expected_best_of_k(scores, 1) == pytest.approx(scores.mean())
    assert m.expected_best_of_k(scores, 12) == pytest.approx(scores.min())
    for k in (2, 5):
        draws = np.array([rng.choice(scores, k, replace=False).min() for _ in range(40_000)])
        se = draws.std() / np.sqrt(len(draws))
        assert abs(draws.mean() - m.expected_best_of_k(scores, k)) < 4 * se
    curve = m.random_search_curve(np.stack([scores, scores[::-1]], 1))
    np.testing.assert_allclose(curve, [m.expected_best_of_k(scores, k) for k in range(1, 13)])
    assert m.trials_to_match(curve, curve[3]) == 4
    assert m.trials_to_match(curve, scores.min() - 1) == 13  # never: one past the end
    with pytest.raises(ValueError):
        m.expected_best_of_k(scores, 0)


def test_greedy_list_recovers_one_prototype_per_cluster():
    """Clusters of 6, 3 and 3 tasks (columns), each solved best by one prototype (rows 1, 4, 7:
    score 0, or 0.3 for the third) and nearly as well by its two neighbours (1); every other
    score is 5. Ranking the rows by their mean score takes the big cluster's prototype and then
    its two neighbours (means 2.5, 3, 3; the small clusters' prototypes have 3.75 and 3.83):
    it covers one cluster three times. Greedy takes the big cluster's prototype (the mean best
    score falls to 2.5), then the second cluster's (to 1.25; a neighbour of the first gains 0),
    then the third's (to 0.075)."""
    s = np.full((9, 12), 5.0)
    clusters = [(slice(0, 6), 1, 0.0), (slice(6, 9), 4, 0.0), (slice(9, 12), 7, 0.3)]
    for cols, p, best in clusters:
        s[p - 1, cols] = 1.0
        s[p + 1, cols] = 1.0
        s[p, cols] = best
    by_mean = list(np.argsort(s.mean(1), kind="stable")[:3])
    assert by_mean == [1, 0, 2]  # the alternative the test must tell greedy from
    assert m.greedy_list(s, 3) == [1, 4, 7]
    # a generalist scoring 2 on every task is the best single setting (mean 2 < 2.5): greedy
    # takes it first, then the prototypes by cluster size (gains 1.0, then 0.5, then 0.425)
    s = np.vstack([s, np.full(12, 2.0)])
    assert m.greedy_list(s, 4) == [9, 1, 4, 7]


@pytest.mark.parametrize("seed", range(5))
def test_greedy_list_within_1_minus_1_over_e_of_brute_force(seed):
    """The gain F(list) = mean_τ (worst_τ − best in list_τ) is monotone submodular: greedy
    reaches at least (1 − 1/e) of the best list of the same length (Nemhauser et al. 1978)."""
    rng = np.random.default_rng(seed)
    s = rng.exponential(size=(10, 7)) * rng.exponential(size=(1, 7))
    worst = s.max(0)

    def gain(chosen):
        return np.mean(worst - s[list(chosen)].min(0))

    for k in (1, 2, 3):
        best = max(gain(c) for c in itertools.combinations(range(10), k))
        assert gain(m.greedy_list(s, k)) >= (1 - 1 / np.e) * best - 1e-12
        if k == 1:
            assert gain(m.greedy_list(s, 1)) == pytest.approx(best)  # exact for one


# --- the analysis ----------------------------------------------------------------------------


def test_heavy_ball_identity():
    """The analysis code on heavy ball as a 1-unit RNN, h' = βh + g, Δ = -αh', recovers α, β."""
    beta, alpha = 0.87, 0.3

    def cell(h, g):
        return beta * h + g

    def readout(h):
        return -alpha * h[0]

    h_fp, q = m.fixed_points(cell, jnp.array([[1.0], [-2.5]]))
    np.testing.assert_allclose(h_fp, 0.0, atol=1e-6)
    modes = m.linearize(cell, readout, jnp.zeros(1))
    assert abs(modes["lam"][0] - beta) < 1e-5 and abs(modes["alpha"][0] - alpha) < 1e-5
    d = np.array([float(readout(cell(jnp.zeros(1), g))) for g in (0.0, 1.0, 10.0)])
    np.testing.assert_allclose(d, [0.0, -alpha, -10 * alpha], rtol=1e-6)  # linear: no clipping
    h = jnp.zeros(1)
    resp = []
    for g in [1.0] + [0.0] * 5:  # impulse response decays by β per step
        h = cell(h, g)
        resp.append(float(readout(h)))
    np.testing.assert_allclose(np.array(resp[1:]) / np.array(resp[:-1]), beta, rtol=1e-6)
    a, b = m.heavy_ball_optimum(1e-3, 1.0)
    assert abs(a - 3.759) < 1e-3 and abs(b - 0.881) < 1e-3  # 4/(a+b)², ((b-a)/(b+a))²


def test_rmsprop_learning_rate_adaptation():
    """RMSProp as a one-unit RNN: v' = βv + (1-β)g², Δ = -αg/√v'. Under constant g0 the fixed
    point is v* = g0² and the local learning rate is exactly αβ/|g0| (slope -1 in log-log);
    a momentum cell (no adaptation) gives slope 0."""
    with jax.enable_x64(True):
        alpha, beta = 0.01, 0.9

        def cell(v, g):
            return beta * v + (1 - beta) * g**2

        def delta(v, g):
            return -alpha * g / jnp.sqrt(cell(v, g))[0]

        g0s = np.array([-3.0, -0.1, 0.02, 0.5, 4.0])
        etas = []
        for g0 in g0s:
            v_star, eta, q = m.local_learning_rate(cell, delta, g0, jnp.array([1.0]))
            np.testing.assert_allclose(v_star, [g0**2], rtol=1e-8)
            np.testing.assert_allclose(eta, alpha * beta / abs(g0), rtol=1e-8)
            assert q < 1e-20
            etas.append(float(eta))
        assert m.adaptation_exponent(g0s, np.array(etas)) == pytest.approx(-1.0, abs=1e-8)

        def momentum(h, g):
            return 0.9 * h + g

        def momentum_delta(h, g):
            return -0.1 * momentum(h, g)[0]

        etas = [
            float(m.local_learning_rate(momentum, momentum_delta, g, jnp.zeros(1))[1]) for g in g0s
        ]
        assert m.adaptation_exponent(g0s, np.array(etas)) == pytest.approx(0.0, abs=1e-8)


def test_first_reach_and_steps_to_match():
    learned = np.array([[5.0, 3.0, 1.0, 0.5], [5.0, 4.0, 4.0, 4.0]])
    adam = np.array([[4.0, 2.0, 1.0, 1.0], [4.0, 2.0, 1.0, 1.0]])
    np.testing.assert_array_equal(m.first_reach(learned, np.array([1.0, 1.0])), [3, 5])
    # Adam reaches its loss after 3 steps (1.0) at step 3; learned at 3 (ratio 1) and never
    # (censored at the runs' length 4: ratio 4/3)
    np.testing.assert_allclose(m.steps_to_match(learned, adam, 3), [1.0, 4 / 3])


def test_w_a_has_its_own_key():
    """The attention readout w_a once shared w_u's key, so the two started identical."""
    meta = m.init_meta_params(jax.random.key(30), m.Config())
    assert not np.allclose(meta["w_a"], meta["w_u"])


def test_splits_differ_and_same_key_gives_same_result(splits):
    """Training, validation and test instances (and seeds) are drawn apart; the same seeds give
    the same instances, and the same key the same learned-optimizer run."""
    cfg = TINY
    splits, again = splits
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(splits[name]["probs"]["A"], again[name]["probs"]["A"])
        np.testing.assert_array_equal(
            jax.random.key_data(splits[name]["keys"]), jax.random.key_data(again[name]["keys"])
        )
    for a, b in itertools.combinations(("train", "val", "test"), 2):
        assert not np.any(
            np.isclose(splits[a]["probs"]["A"], splits[b]["probs"]["A"]).all((-2, -1))
        )
        assert not np.any(np.isclose(splits[a]["f0"], splits[b]["f0"]))
    assert not np.isclose(splits["test"]["f0"][0], splits["test"]["f0"][1]).any()  # seeds
    meta = m.init_meta_params(jax.random.key(31), cfg)
    prob = jax.tree_util.tree_map(lambda a: a[0, 0], splits["test"]["probs"])
    run = jax.jit(lambda k: m.run_learned(meta, prob, k, cfg, 5)[0])
    first = np.asarray(run(jax.random.key(32)))
    np.testing.assert_array_equal(first, np.asarray(run(jax.random.key(32))))
    assert not np.array_equal(first, np.asarray(run(jax.random.key(33))))


def test_adam_tuned_by_final_loss_and_by_score_differ():
    """Two rates on one family: a fast one that stalls (lower mean over H) and a slow one that
    ends lower. Tuning by the final loss at H, the criterion of the win rate, picks the slow
    one; tuning by the score picks the fast one. The other families prefer rate 0 both ways."""
    H = 4
    fast = [0.1, 0.05, 0.05, 0.05]
    slow = [0.9, 0.5, 0.1, 0.01]
    up = [2.0] * H
    fs = np.array([[fast] * 5, [slow, slow, up, up, up]])[None]  # (S=1, G=2, N=5, H)
    f0 = np.ones((1, 1, 5))
    kinds = np.array([0, 0, 1, 2, 3])
    final = m.tune_per_family(m.final_log_ratio(fs, f0, H), kinds)
    by_score = m.tune_per_family(m.score(fs, f0, H), kinds)
    assert final[0].tolist() == [1, 0, 0, 0]
    assert by_score[0].tolist() == [0, 0, 0, 0]
    np.testing.assert_allclose(m.final_log_ratio(fs, f0, H)[0, 1, 0], np.log(0.01 + 1e-6))


def test_adaptation_slope_is_null_when_fixed_points_do_not_settle():
    """`analyse` reports the slope as None (null in JSON), not 0, when ≤ 2 fixed points under
    constant gradients settle; with η = 1/|g0| settled everywhere it is -1."""
    hidden = 4
    p = dict(
        gru=m.init_gru(jax.random.key(34), 1, hidden, 0.0), b=jnp.array(0.0), w=jnp.ones(hidden)
    )
    g0 = m.ADAPTATION_G0
    v = dict(
        h_fp=np.zeros((2, hidden)),
        q=np.array([np.nan, 1e-12]),
        fs=np.ones((2, 3)),
        gd=np.ones((2, 3)),
        lrs=np.ones(5),
        g_p99=1.0,
        etas=1 / np.abs(g0),
        etas_clip=np.ones(len(g0)),
        eta_residuals=np.where(np.arange(len(g0)) < 2, 0.0, 1.0),  # two settled
    )
    assert m.analyse(p, v)["adaptation_exponent"] is None
    v["eta_residuals"] = np.zeros(len(g0))
    assert m.analyse(p, v)["adaptation_exponent"] == pytest.approx(-1.0)


# --- the script ------------------------------------------------------------------------------


def test_quick_run(tmp_path_factory):
    """Quick mode (run once, as a notebook): the headline metrics exist per seed, meta-training
    beats its starting point, TaskSet's list beats a random setting, and the 2021 readings hold
    (thresholds from the maths: β* and the linear update; see each comment)."""
    record = quick_run("03_hierarchical_rnn_opt", tmp_path_factory)["record"]
    met = {k: np.asarray(v["per_seed"]) for k, v in record["metrics"].items()}
    for name in (
        "win_rate_vs_tuned_adam",
        "steps_to_match_ratio",
        "heldout_family_win_rate",
        "taskset_trials_to_match_list1",
        "taskset_trials_to_match_list10",
    ):
        assert len(met[name]) == 3, name
    # meta-training helps: the checkpoint chosen on validation beats the untrained optimizer on
    # test (0 exactly if validation chose the untrained φ, negative if the choice misled)
    assert np.all(met["improvement_over_init_nats"] > 0)
    # TaskSet: the list's first setting, the best single one on training, beats one random
    # setting on test (in expectation over the draw): the paper's "list beats random search"
    assert np.all(met["taskset_list1_score"] < met["taskset_random1_score"])
    # the 2021 readings. A momentum mode on the timescale of the optimal heavy ball for these
    # quadratics' curvatures, 1/(1 - β*) ≈ 8.4 steps (β* computed here), within a factor 2
    # (a stated tolerance, not a paper number)
    beta_star = m.heavy_ball_optimum(1e-3, 1.0)[1]
    timescale = 1 / (1 - met["re_lambda1"].mean())
    assert 0.5 / (1 - beta_star) <= timescale <= 2 / (1 - beta_star)
    # clipping: the update at g = 10 falls short of its tangent at 0 (a linear update, as in
    # momentum without clipping, gives exactly 1)
    assert np.all(met["re_clip_ratio"] < 1)
    assert np.all(met["re_converged"] >= 1)
    exponents = record["re_adaptation_exponent_per_seed"]  # null where not measured
    assert len(exponents) == 3
    assert all(e is None or np.isfinite(e) for e in exponents)
    assert ("re_adaptation_exponent" in met) == (None not in exponents)
    assert np.all(met["re_objective"] < met["re_gd_objective"])


def test_ablation_runs_and_reports_every_variant(tmp_path_factory):
    """The ablation at the quick run's Config (one variant): meta-training, Adam and the test
    scoring then compile to the quick run's programs (the meta lr schedule has meta_steps in
    it, so the ablation's steps equal the quick run's) and come from the persistent cache,
    which is why this test follows test_quick_run. Its entry holds the overrides and every
    metric per seed, finite and in range, and its baseline, the quick run's meta-training
    repeated, reproduces the quick run's numbers (same keys, same programs). The non-default
    horizons inside meta-training are checked by test_heavy_tailed_horizons_follow_the_code_law.
    """
    cfg = m.Config(**m.QUICK)
    assert cfg.ablation_meta_steps == cfg.meta_steps
    seeds = [0, 1, 2]
    splits = m.make_splits(cfg, seeds)
    adam = m.adam_baselines(cfg, splits)
    lists = dict(list_best_test=adam["tuned"]["final"][..., : cfg.horizon])
    variants = {"baseline": {}}
    out = m.ablation(cfg, seeds, splits, adam, lists, 0.0, variants)["variants"]
    assert list(out) == list(variants)
    for name, row in out.items():
        assert row["overrides"] == variants[name] and row["meta_steps"] == cfg.meta_steps
        for metric in (
            "win_rate_vs_tuned_adam",
            "score_learned",
            "win_rate_last_iterate",
            "val_score_swing",
        ):
            per_seed = np.asarray(row[metric]["per_seed"])
            assert per_seed.shape == (3,) and np.all(np.isfinite(per_seed)), (name, metric)
        for metric in ("win_rate_vs_tuned_adam", "win_rate_last_iterate"):
            rate = np.asarray(row[metric]["per_seed"])
            assert np.all((rate >= 0) & (rate <= 1)), (name, metric)
        assert np.all(np.asarray(row["val_score_swing"]["per_seed"]) >= 0)
    record = quick_run("03_hierarchical_rnn_opt", tmp_path_factory)["record"]
    for metric in ("win_rate_vs_tuned_adam", "score_learned", "win_rate_last_iterate"):
        np.testing.assert_allclose(
            out["baseline"][metric]["per_seed"], record["metrics"][metric]["per_seed"], rtol=1e-6
        )


@pytest.mark.parametrize(
    "argv, allowed",
    [
        (["--meta-steps", "0"], "> 0"),
        (["--batch", "-2"], "> 0"),
        (["--seeds", "0"], "> 0"),
        (["--bogus"], "unrecognized"),
        (["--meta-steps", "30", "--quick"], "multiple of 40"),
        (["--scale", "huge"], "invalid choice"),
        (["--re-steps", "50"], ">= 100"),
    ],
)
def test_bad_input_is_refused(argv, allowed, capsys):
    with pytest.raises(SystemExit) as e:
        m.main(argv)
    assert e.value.code == 2
    assert allowed in capsys.readouterr().err
