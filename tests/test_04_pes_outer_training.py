"""Tests for 04_pes_outer_training.py: the three estimators against exact gradients and closed-form
variances, PES bookkeeping at resets, the pathologies combiner, the learned optimizer's invariants,
and the script's command line. Thresholds come from the maths (a few standard errors) or from the
papers' claims as re-measured in shared/papers/04, never from what the code happened to print."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load, quick_run
from jax.test_util import check_grads

pes = load("04_pes_outer_training")
THETA, SIGMA, K, W = jnp.array([0.5]), 0.1, 2, 10  # influence balancing, 10 truncations of 2


def full_loss(theta):
    """Σ_τ L_τ over the whole unroll (20 steps from s = 1): the target of the unbiased estimators."""
    unroll, s, total = pes.make_ib_unroll(K), jnp.ones(23), 0.0
    for _ in range(W):
        s, loss = unroll(theta, s, None)
        total = total + loss
    return total


def exact_gradient():
    with jax.enable_x64(True):
        return float(jax.jit(jax.grad(full_loss))(jnp.array([0.5], jnp.float64))[0])


def summed_estimates(kind, n, seed):
    """n independent single-pair estimates of ∇Σ_τ L_τ at a fixed θ, each summed over τ: (n,)."""
    unroll = pes.make_ib_unroll(K)

    def chain(key):
        def step(est, k):
            if kind == "pes":
                g, est = pes.pes_grad(k, unroll, THETA, est, SIGMA, 1)
            elif kind == "tes":
                g, est = pes.tes_grad(k, unroll, THETA, est, SIGMA, 1)
            else:  # vanilla (non-antithetic) PES: one particle, ξ L⁺ / σ²
                s, xi = est
                eps = SIGMA * jax.random.normal(k, (1,))
                s, loss = unroll(THETA + eps, s, None)
                g, est = (xi + eps) * loss / SIGMA**2, (s, xi + eps)
            return est, g[0]
        init = {"pes": pes.init_pes_state(jnp.ones(23), 1, THETA), "tes": jnp.ones(23),
                "vanilla": (jnp.ones(23), jnp.zeros(1))}[kind]
        return jax.lax.scan(step, init, jax.random.split(key, W))[1].sum()
    return np.asarray(jax.jit(jax.vmap(chain))(jax.random.split(jax.random.key(seed), n)),
                      np.float64)


def test_closed_forms():
    theta_star, c_K = pes.ib_closed_form()
    assert abs(theta_star + 1 / 6) < 1e-12  # s*[0] = 2 Σ b θ = -6 θ = 1
    assert all(abs(c_K[k] - k) < 1e-9 for k in (1, 5, 10))  # only positive units within reach
    assert c_K[20] > 10 and abs(c_K[100] + 6) < 1e-3  # long horizons approach the true -6


def test_pes_unbiased_tes_equals_tbptt():
    exact = exact_gradient()
    assert abs(exact - 664.427) < 1e-2  # value measured in shared/papers/04 §7
    g = summed_estimates("pes", 10_000, 0)
    se = g.std() / np.sqrt(len(g))
    assert abs(g.mean() - exact) < 4 * se  # unbiased for the whole unroll
    # truncated ES is unbiased for the *truncated* gradient: it equals TBPTT, far from the truth
    unroll, s, tbptt = pes.make_ib_unroll(K), jnp.ones(23), 0.0
    for _ in range(W):
        gt, s = pes.tbptt_grad(unroll, THETA, s, None)
        tbptt += float(gt[0])
    t = summed_estimates("tes", 10_000, 1)
    t_se = t.std() / np.sqrt(len(t))
    assert abs(t.mean() - tbptt) < 4 * t_se
    assert abs(t.mean() - exact) > 50 * t_se


def test_antithetic_variance_reduction():
    anti, vanilla = summed_estimates("pes", 10_000, 2), summed_estimates("vanilla", 10_000, 3)
    exact = exact_gradient()
    assert abs(vanilla.mean() - exact) < 4 * vanilla.std() / np.sqrt(len(vanilla))  # unbiased too
    assert vanilla.var() > 10 * anti.var()  # the L·ξ/σ² term (c² τ P / σ²) is gone


def test_variance_formula_on_a_linear_loss():
    """L_τ = c + Σ_{j≤τ} g_jᵀθ_j: one pair has tr Var = τPΣ|g_j|² + |Σg_j|² (PES), (P+1)|g_τ|² (TES)."""
    P, tau, n, c = 10, 8, 100_000, 3.0
    G = jax.random.normal(jax.random.key(4), (tau, P))
    theta = jnp.zeros(P)

    def unroll(th, st, key):
        acc = st["acc"] + G[st["j"]] @ th
        return dict(acc=acc, j=st["j"] + 1), c + acc

    def pes_at_tau(key):
        est = pes.init_pes_state(dict(acc=0.0, j=0), 1, theta)
        for k in jax.random.split(key, tau):
            g, est = pes.pes_grad(k, unroll, theta, est, 1.0, 1)
        return g

    def tes_at_tau(key):  # the state after τ - 1 truncations with the mean θ, then one TES step
        return pes.tes_grad(key, unroll, theta, dict(acc=0.0, j=tau - 1), 1.0, 1)[0]
    keys = jax.random.split(jax.random.key(5), n)
    g_pes = np.asarray(jax.jit(jax.vmap(pes_at_tau))(keys), np.float64)
    g_tes = np.asarray(jax.jit(jax.vmap(tes_at_tau))(keys), np.float64)
    Gn = np.asarray(G, np.float64)
    assert np.all(np.abs(g_pes.mean(0) - Gn.sum(0)) < 4.5 * g_pes.std(0) / np.sqrt(n))
    want_pes = tau * P * np.sum(Gn**2) + np.sum(Gn.sum(0) ** 2)
    assert abs(g_pes.var(0).sum() / want_pes - 1) < 0.03
    assert abs(g_tes.var(0).sum() / ((P + 1) * np.sum(Gn[-1] ** 2)) - 1) < 0.03


def test_pes_bookkeeping_at_reset():
    """The truncation that ends an episode zeroes ξ and leaves identical fresh ± states; the next
    PES estimate is then bit-identical to truncated ES from that fresh state."""
    unroll, N = pes.make_sch_unroll(10, 100), 6
    theta = jnp.array([-1.0, -2.0])
    est = pes.init_pes_state(dict(x=jnp.array([0.3, 7.0]), t=jnp.asarray(90), done=False), N, theta)
    est = est._replace(xi=jax.random.normal(jax.random.key(6), (N, 2)))  # a long-running ξ
    _, est = pes.pes_grad(jax.random.key(7), unroll, theta, est, 0.3, N)
    assert np.all(np.asarray(est.xi) == 0) and np.all(np.asarray(est.pos["done"]))
    for part in ("x", "t"):
        np.testing.assert_array_equal(est.pos[part], est.neg[part])
    np.testing.assert_array_equal(est.pos["x"], np.ones((N, 2)))
    g_pes, est = pes.pes_grad(jax.random.key(8), unroll, theta, est, 0.3, N)
    g_tes, _ = pes.tes_grad(jax.random.key(8), unroll, theta,
                            dict(x=jnp.ones(2), t=jnp.asarray(0), done=jnp.asarray(True)), 0.3, N)
    np.testing.assert_array_equal(g_pes, g_tes)
    assert not np.all(np.asarray(est.xi) == 0)  # ξ = the new ε
    assert not np.array_equal(est.pos["x"], est.neg["x"])  # ± diverge again


def test_influence_balancing_outcomes():
    """Online SGD, lr 1e-4, 3000 steps, σ = 0.1, 100 pairs (the notes: 100 pairs converge in
    float32, 20 diverge): PES reaches θ* = -1/6; TBPTT/TES with K = 1 drift the wrong way."""
    sgd = (lambda th: (), lambda g, s, th: (th - 1e-4 * g, ()))

    def run(method, K_):
        f = lambda k: pes.train_online(method, pes.make_ib_unroll(K_), jnp.full(1, 0.5),  # noqa
                                       jnp.ones(23), sgd, k, 3000, 0.1, 100)[:, 0]
        return np.asarray(jax.jit(f)(jax.random.key(3)))
    assert abs(run("pes", 1)[-1] + 1 / 6) < 1e-3
    assert run("tes", 1)[-1] > 1 and run("tbptt", 1)[-1] > 1  # notes: both ≈ 3.26
    th10 = run("tbptt", 10)[-1]
    assert not np.isfinite(th10) or abs(th10) > 1e3  # K = 10: exploding


def test_pathologies_combiner():
    """2-D toy, SGD at lr e^θ, σ = 0.1 (shared/papers/04 §3, §7): chaotic at θ = 0.5, smooth at -2."""
    est = jax.jit(lambda k, th: pes.path_estimates(k, th, (10, 30, 100), 0.1, 1024))
    g_rp, g_es = est(jax.random.key(9), 0.5)
    _, w, v_rp, v_es = map(np.asarray, pes.combine(g_rp, g_es))
    assert v_rp[1] / v_rp[0] > 1e6  # chaotic regime: backprop variance explodes with T
    assert np.all(w[:2] < 0.05) and v_es[1] < 100  # ES stays bounded and takes over
    g_rp, g_es = (np.asarray(a, np.float64)[:, 2] for a in est(jax.random.key(10), -2.0))
    _, w, _, _ = map(np.asarray, pes.combine(g_rp[:, None], g_es[:, None]))
    assert w[0] > 0.95  # smooth regime (T = 100): backprop is the low-variance one
    assert abs(g_rp.mean() - g_es.mean()) < 4 * g_es.std() / np.sqrt(len(g_es))  # same target
    a, b = jax.random.normal(jax.random.key(11), (2, 50, 3)) * jnp.array([[[1.0]], [[3.0]]])
    comb, w, _, _ = pes.combine(a, b)
    np.testing.assert_allclose(comb, w * a.mean(0) + (1 - w) * b.mean(0), rtol=1e-6)
    assert np.all((w > 0.5) & (w < 1))  # the lower-variance estimator gets the larger weight


@pytest.mark.parametrize("factored", [False, True])
def test_learned_optimizer_invariants(factored):
    cfg = pes.Config(factored=factored, n_in=3, n_hid=5)
    theta = pes.lopt_init(jax.random.key(12), cfg)
    task = pes.new_task(jax.random.key(13), cfg)
    p, st = task["p"], task["opt"]
    g = jax.random.normal(jax.random.key(14), p.shape)
    update = jax.jit(lambda th, p, g, st: pes.lopt_update(th, p, g, st, 3, cfg))
    new_p, new_st = update(theta, p, g, st)
    assert new_p.shape == p.shape
    assert jax.tree_util.tree_structure(new_st) == jax.tree_util.tree_structure(st)
    # a zero output layer gives an exactly zero step: d = 0 and exp(λ₂·0) = 1
    sizes = [int(np.prod(s)) for s in pes.meta_shapes(cfg)]
    out = slice(sum(sizes[:4]), sum(sizes[:6]))
    np.testing.assert_array_equal(update(theta.at[out].set(0.0), p, g, st)[0], p)
    # permuting W1's rows (3 inputs) permutes the update: per-element features, per-tensor RMS
    perm, (n1, h) = np.array([2, 0, 1]), (3, 5)
    permute = lambda v: v.at[:n1 * h].set(v[:n1 * h].reshape(n1, h)[perm].ravel())  # noqa
    fac = st.get("fac")
    st_p = dict(st, **({"fac": [dict(fac[0], row=fac[0]["row"][:, perm])] + fac[1:]} if fac else {}))
    np.testing.assert_allclose(update(theta, permute(p), permute(g), st_p)[0], permute(new_p),
                               atol=1e-6)
    # gradient-scale invariance: every feature is divided by its RMS, so scaling g changes nothing
    # except through the floors (v + 1e-8, 1e-5 + mean x²): within 2% of the step for large
    # gradients, but not for small ones (the notes saw 95% at step 1 with tiny gradients)
    step = lambda c: update(theta, p, c * g, st)[0] - p  # noqa: E731
    assert np.abs(step(20) - step(200)).max() < 0.02 * np.abs(step(200)).max()
    assert np.abs(step(0.1) - step(1)).max() > 0.2 * np.abs(step(1)).max()


def test_meta_parameter_counts_and_factored_shapes():
    small_fc = pes.Config(factored=True, hidden=4)  # small_fc_lopt: 39 → 4 → 4 → 2 + 7 decays
    assert pes.lopt_init(jax.random.key(0), small_fc).size == 39 * 4 + 4 + 16 + 4 + 8 + 2 + 7 == 197
    assert pes.lopt_init(jax.random.key(0), pes.Config()).size == 21 * 8 + 8 + 64 + 8 + 16 + 2 + 4
    fac = pes.new_task(jax.random.key(0), pes.Config(factored=True, n_in=3, n_hid=5))["opt"]["fac"]
    assert fac[0]["row"].shape == (3, 3) and fac[0]["col"].shape == (3, 5)  # W1 (3, 5)
    assert fac[1]["row"].shape == (3, 5) and fac[1]["col"].shape == (3, 1)  # b1: full accumulator


def test_gradients_in_float64():
    with jax.enable_x64(True):
        cfg = pes.Config(n_in=3, n_hid=4)
        task = pes.new_task(jax.random.key(15), cfg)
        task = dict(task, p=task["p"].astype(jnp.float64),
                    teacher=task["teacher"].astype(jnp.float64))
        check_grads(lambda p: pes.task_loss(p, task, 2, cfg), (task["p"],), order=1, modes=["rev"])
        short = lambda th: pes.make_sch_unroll(10)(th, dict(x=jnp.ones(2), t=0), None)[1]  # noqa
        check_grads(short, (jnp.array([-1.0, -2.0]),), order=1, modes=["rev"])  # TBPTT's gradient


def test_quick_run_headlines(tmp_path_factory):
    """The session's one quick run (tests/conftest.py runs it as a notebook)."""
    saved = record = quick_run("04_pes_outer_training", tmp_path_factory)["record"]
    m = saved["metrics"]
    for name in ("theta_pes_influence", "theta_tes_influence", "schedule_loss_pes",
                 "schedule_loss_tes", "lopt_to_adam_mean_loss_ratio"):
        assert name in m and len(m[name]["per_seed"]) == 3
    assert all(np.isfinite(v["mean"]) for v in m.values())
    # the toy headlines, at quick size (3000 IB steps, 1000 schedule steps)
    assert max(abs(t + 1 / 6) for t in m["theta_pes_influence"]["per_seed"]) < 1e-3
    assert min(m["theta_tes_influence"]["per_seed"] + m["theta_tbptt1_influence"]["per_seed"]) > 1
    assert saved["tbptt10_diverged_at_step"] > 0
    assert max(m["schedule_loss_pes"]["per_seed"]) < 700  # grid optimum ≈ 558
    assert min(m["schedule_loss_tes"]["per_seed"] + m["schedule_loss_tbptt"]["per_seed"]) > 2000
    # 300 outer steps: PES has already taken the optimizer from its random start to a working one
    hist = record["outer_eval_mean_loss"]
    assert hist[-1] < 0.2 and hist[-1] < hist[0]


@pytest.mark.parametrize("argv, allowed", [
    (["--outer-steps", "0"], "> 0"), (["--pairs", "-2"], "> 0"), (["--seeds", "0"], "> 0"),
    (["--bogus"], "unrecognized"),
])
def test_bad_input_is_refused(argv, allowed, capsys):
    with pytest.raises(SystemExit) as e:
        pes.main(argv)
    assert e.value.code == 2
    assert allowed in capsys.readouterr().err
