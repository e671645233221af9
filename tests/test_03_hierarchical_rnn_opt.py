"""Tests for 03_hierarchical_rnn_opt.py: exact reductions of the learned optimizer, its
invariances and wiring, the meta-gradient, the analysis code on a known optimizer, and the
script's command line. Thresholds come from the maths or the issue's claim."""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load, quick_run
from jax.test_util import check_grads

m = load("03_hierarchical_rnn_opt")
SEG = np.array([0, 0, 0, 0, 1, 1, 2])  # three tensors of sizes 4, 2, 1


def quadratic(key, n=len(SEG)):
    kA, ks = jax.random.split(key)
    A = jax.random.normal(kA, (2 * n, n), jnp.float64)
    x_star = jax.random.normal(ks, (n,), jnp.float64)
    return (lambda th: 0.5 * jnp.mean((A @ (th - x_star)) ** 2)), A, x_star


def meta64(key, cfg, **overrides):
    meta = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64),
                                  m.init_meta_params(key, cfg))
    return {**meta, **{k: jnp.asarray(v, jnp.float64) for k, v in overrides.items()}}


def trajectory(meta, f, theta, cfg, steps, key=jax.random.key(0), seg=SEG):
    init, update = m.make_hrnn_optimizer(meta, seg, cfg)
    state, out = init(theta, key), []
    for _ in range(steps):
        g = jax.grad(f)(theta)
        out.append((theta, g))
        theta, state = update(g, state, theta)
    return theta, state, out


def sign_meta(key, cfg, b_inp):
    """w_u = 0, w_s = (1, 0, ...), decays through biases only, no learned step: sign methods."""
    z = np.zeros(cfg.H0)
    return meta64(key, cfg, w_u=z, w_s=np.eye(cfg.K)[0], w_scl=z, b_scl=-30.0, w_inp=z,
                  b_inp=b_inp, w_eta=z, b_eta=0.0, c=0.0)


CONST = m.Config(eta_lo=0.01, eta_hi=0.01)  # η = 0.01 for every coordinate


@pytest.mark.parametrize("seed", [1, 2])  # any GRU weights: two random draws
def test_reduces_to_sign_sgd(seed):
    with jax.enable_x64(True):
        meta = sign_meta(jax.random.key(seed), CONST, -30.0)
        f, _, _ = quadratic(jax.random.key(3))
        theta0 = jnp.zeros(len(SEG), jnp.float64)
        state = m.make_hrnn_optimizer(meta, SEG, CONST)[0](theta0, jax.random.key(0))
        theta, _, fs = m.unroll(meta, f, theta0, state, SEG, CONST, 20)  # the scanned version
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
        x, mom = np.zeros(len(SEG)), np.zeros(len(SEG))
        for t, (theta, g) in enumerate(out):
            np.testing.assert_allclose(theta, x, atol=1e-8)
            beta = 0.0 if t == 0 else 0.9  # the decay state starts at 0: no averaging at step 1
            mom = beta * mom + (1 - beta) * np.asarray(jax.grad(f)(jnp.asarray(x)))
            x = x - 0.01 * np.sign(mom)


def test_loss_scale_invariance():
    """Features and outputs are ratios of gradient statistics: c·f gives the same trajectory.
    Only the 1e-12 inside v breaks it, by ~1e-12/(c g)² ≤ 1e-6 here, hence rtol 1e-5."""
    with jax.enable_x64(True):
        meta = meta64(jax.random.key(6), m.Config())
        f, _, _ = quadratic(jax.random.key(7))
        theta0 = jax.random.normal(jax.random.key(8), (len(SEG),), jnp.float64)
        runs = {c: trajectory(meta, lambda th, c=c: c * f(th), theta0, m.Config(), 50)[0]
                for c in (1e-3, 1.0, 1e3)}
        for c in (1e-3, 1e3):
            np.testing.assert_allclose(runs[c], runs[1.0], rtol=1e-5)
        fs, f0 = jnp.array([3.0, 2.0, 0.5]), 4.0
        for c in (1e-3, 1e3):
            np.testing.assert_allclose(m.meta_objective(c * fs, c * f0), m.meta_objective(fs, f0),
                                       rtol=1e-12)


def test_meta_objective_values():
    assert abs(float(m.meta_objective(jnp.full(5, 2.0), 2.0))) < 1e-5  # log(1 + 1e-6)
    assert float(m.meta_objective(jnp.array([1.0, 0.5, 0.1]), 2.0)) < 0
    assert float(m.meta_objective(jnp.array([jnp.nan, jnp.inf]), 1.0)) == pytest.approx(np.log(1e3))
    assert float(m.meta_objective(jnp.array([1.0, 3.0]), 2.0, linear=True)) == pytest.approx(1.0)


def test_permutation_equivariance():
    """Permuting a tensor's coordinates (and the problem's) permutes the trajectory."""
    with jax.enable_x64(True):
        meta = meta64(jax.random.key(9), CONST)
        f, A, x_star = quadratic(jax.random.key(10))
        perm = np.array([2, 0, 3, 1, 5, 4, 6])  # within tensors 0 and 1
        theta0 = jax.random.normal(jax.random.key(11), (len(SEG),), jnp.float64)
        g = lambda th: f(th[np.argsort(perm)])  # noqa: E731  g(θ[perm]) = f(θ)
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

        def jac(meta):  # after 3 warm-up steps: at step 1 the features are only signs of g
            theta, st, _ = trajectory(meta, f, theta0, cfg, 3)
            update = m.make_hrnn_optimizer(meta, SEG, cfg)[1]

            def two_steps(g0):  # θ_{t+2} as a function of g_t
                th, s = update(g0, st, theta)
                return update(g1, s, th)[0]
            return np.asarray(jax.jacobian(two_steps)(jax.grad(f)(theta)))

        cross = SEG[:, None] != SEG[None, :]
        meta = meta64(jax.random.key(15), cfg)
        zero = {**meta, **{a: jnp.zeros_like(meta[a]) for a in ("A10", "A20", "A21")}}
        assert np.all(jac(zero)[cross] == 0)
        assert np.abs(jac(zero)[~cross]).max() > 1e-3
        # through h2 the cross path is a product of many (1 - u) ≈ 0.1 gates: small, not zero
        assert np.abs(jac(meta)[cross]).max() > 1e-12
        theta, st, _ = trajectory(meta, f, theta0, cfg, 3)
        update = m.make_hrnn_optimizer(meta, SEG, cfg)[1]
        dh2 = jax.jacobian(lambda g: update(g, st, theta)[1]["h2"])(jax.grad(f)(theta))
        for t in range(3):  # the code feeds only the last tensor up; we take the mean of all
            assert np.abs(np.asarray(dh2)[:, SEG == t]).max() > 1e-9


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
        fs = m.unroll(meta, lambda th: c * f(th), theta0, state, seg, SMALL, 5)[2]
        return m.meta_objective(fs, c * f(theta0))
    return jax.jit(meta_loss)


def test_meta_gradient_and_finiteness():
    """Second-order meta-gradient against finite differences (float64), and finite meta-gradients
    for huge (1e8) and tiny (1e-10) gradient scales."""
    with jax.enable_x64(True):
        meta = meta64(jax.random.key(17), SMALL)
        meta_loss = small_meta_loss()
        check_grads(lambda mt: meta_loss(mt, 1.0), (meta,), order=1, modes=("rev",),
                    atol=1e-5, rtol=1e-5)
        for c in (1e8, 1e-10):
            grads = jax.grad(meta_loss)(meta, c)
            assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))


def test_zero_huge_tiny_gradients_keep_state_finite():
    with jax.enable_x64(False):
        cfg = replace(m.Config(), use_attention=True)
        meta = m.init_meta_params(jax.random.key(18), cfg)
        init, update = m.make_hrnn_optimizer(meta, SEG, cfg)
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


def test_heavy_ball_identity():
    """The analysis code on heavy ball as a 1-unit RNN, h' = βh + g, Δ = -αh', recovers α, β."""
    beta, alpha = 0.87, 0.3
    cell = lambda h, g: beta * h + g  # noqa: E731
    readout = lambda h: -alpha * h[0]  # noqa: E731
    h_fp, q = m.fixed_points(cell, jnp.array([[1.0], [-2.5]]))
    np.testing.assert_allclose(h_fp, 0.0, atol=1e-6)
    modes = m.linearize(cell, readout, jnp.zeros(1))
    assert abs(modes["lam"][0] - beta) < 1e-5 and abs(modes["alpha"][0] - alpha) < 1e-5
    d = np.array([float(readout(cell(jnp.zeros(1), g))) for g in (0.0, 1.0, 10.0)])
    np.testing.assert_allclose(d, [0.0, -alpha, -10 * alpha], rtol=1e-6)  # linear: no clipping
    h, resp = jnp.zeros(1), []
    for g in [1.0] + [0.0] * 5:  # impulse response decays by β per step
        h = cell(h, g)
        resp.append(float(readout(h)))
    np.testing.assert_allclose(np.array(resp[1:]) / np.array(resp[:-1]), beta, rtol=1e-6)
    a, b = m.heavy_ball_optimum(1e-3, 1.0)
    assert abs(a - 3.759) < 1e-3 and abs(b - 0.881) < 1e-3  # shared/papers/05 §3.1


def test_quick_run_meta_trains(tmp_path_factory):
    """Quick mode is the tiny meta-training: 300 meta-steps, 3 seeds (run once, as a notebook)."""
    saved = record = quick_run("03_hierarchical_rnn_opt", tmp_path_factory)["record"]
    for name in ("improvement_over_init_nats", "improvement_over_adam1e3_nats",
                 "frac_of_tuned_adam", "re_lambda1", "re_clip_ratio"):
        assert name in saved["metrics"] and len(saved["metrics"][name]["per_seed"]) == 3
    assert all(np.isfinite(v["mean"]) for v in saved["metrics"].values())
    met = {k: np.asarray(v["per_seed"]) for k, v in record["metrics"].items()}
    # the headline claim (improvement >= 1 nat) on the mean over seeds; per seed, that
    # meta-training helps at all. 300 meta-steps are chaotic in float32 rounding: the first
    # edition's code gives 0.62 on seed 1 on this machine, so >= 1 per seed is not robust
    assert met["improvement_over_init_nats"].mean() >= 1.0
    assert np.all(met["improvement_over_init_nats"] > 0)
    assert np.all(met["improvement_over_adam1e3_nats"] > 0)
    # the 2021 readings (issue headline): a momentum mode with |λ1| in [0.8, 0.97] and a step
    # size within 2x of the optimal heavy ball's (α* = 3.76 for λ in [1e-3, 1]; papers/05 §4),
    # an update at g = 10 below 30% of linear, and a better score than tuned-for-range GD
    assert np.all(met["re_converged"] >= 1)
    assert 0.8 <= met["re_lambda1"].mean() <= 0.97
    assert np.all((met["re_alpha1"] > 3.76 / 2) & (met["re_alpha1"] < 2 * 3.76))
    assert np.all(met["re_clip_ratio"] < 0.3)
    assert np.all(met["re_objective"] < met["re_gd_objective"])


@pytest.mark.parametrize("argv, allowed", [
    (["--meta-steps", "0"], "> 0"), (["--batch", "-2"], "> 0"), (["--seeds", "0"], "> 0"),
    (["--bogus"], "unrecognized"), (["--meta-steps", "3", "--quick"], ">= 5"),
])
def test_bad_input_is_refused(argv, allowed, capsys):
    with pytest.raises(SystemExit) as e:
        m.main(argv)
    assert e.value.code == 2
    assert allowed in capsys.readouterr().err
