"""Tests for 05_self_training.py: the ES estimator, the learned optimizer on any pytree, the
PBT bookkeeping, a short self-training run with no hand-designed optimizer, and the command
line. Thresholds come from the maths, the notes' measured prototype or the paper's claim."""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load, quick_run

st = load("05_self_training")
CFG = st.Config(**st.QUICK)  # shared shapes: compiled programs are reused via the cache


def test_task_is_a_rotated_quadratic_with_the_stated_spectrum():
    task = st.make_task(jax.random.key(0), CFG)
    H = np.asarray(task["H"], np.float64)
    lam = np.linalg.eigvalsh(H)
    np.testing.assert_allclose(H, H.T, atol=1e-6)
    assert lam.min() > 10**CFG.log_lam_min * 0.999 and lam.max() < 1.001  # λ ∈ [1e-2, 1]
    assert abs(float(st.task_loss(task["x_star"], task))) < 1e-12  # minimum f = 0 at x*
    assert np.abs(np.diag(H) - np.diag(H).mean()).max() > 0  # not a diagonal problem
    assert np.abs(H - np.diag(np.diag(H))).max() > 1e-2  # rotated: off-diagonal coupling


def test_es_exact_on_a_linear_loss():
    a = jnp.array([1.0, -2.0, 0.5, 3.0])
    loss = lambda th, k: a @ th  # noqa: E731
    g = st.es_grad(jax.random.key(1), loss, jnp.zeros(4), 0.01, 256)
    cos = float(g @ a / jnp.linalg.norm(g) / jnp.linalg.norm(a))
    assert cos > 0.95 and 0.8 < float(jnp.linalg.norm(g) / jnp.linalg.norm(a)) < 1.25
    # exact in expectation: one pair per estimate, 20,000 estimates, within 4 standard errors
    many = np.asarray(
        jax.vmap(lambda k: st.es_grad(k, loss, jnp.ones(4), 0.5, 1))(
            jax.random.split(jax.random.key(2), 20_000)
        ),
        np.float64,
    )
    se = many.std(0) / np.sqrt(len(many))
    assert np.all(np.abs(many.mean(0) - np.asarray(a)) < 4 * se)


def test_es_pairs_share_tasks():
    """Common random numbers: a loss that depends only on the key cancels exactly."""
    loss = lambda th, k: jax.random.normal(k) * 100 + jnp.sum(th)  # noqa: E731
    g = st.es_grad(jax.random.key(3), loss, jnp.zeros(5), 0.1, 64)
    assert np.all(np.isfinite(g)) and float(jnp.abs(g - 1).max()) < 1.0  # the noise cancelled


def test_es_descends_the_meta_loss():
    """A small normalized step along −ĝ (P = 32, B = 4) lowers L on 64 fixed tasks for at least
    4 of 5 random lopts (notes §4: measured 5/5)."""
    cfg = replace(CFG, tasks_per_pair=4)
    loss = lambda th, k: st.meta_loss(th, k, cfg, cfg.tasks_per_pair)  # noqa: E731

    @jax.jit
    def check(key):
        k_init, k_es, k_val = jax.random.split(key, 3)
        theta = st.lopt_init(k_init, cfg)
        g = st.es_grad(k_es, loss, theta, cfg.sigma, 32)
        val = lambda th: st.meta_loss(th, k_val, cfg, 64)  # noqa: E731
        return val(theta - 1e-2 * g / jnp.linalg.norm(g)) < val(theta)

    wins = jax.lax.map(check, jax.random.split(jax.random.key(4), 5))
    assert int(wins.sum()) >= 4


def test_lopt_applies_to_any_pytree():
    update = jax.jit(st.lopt_update, static_argnums=4)
    theta = st.lopt_init(jax.random.key(5), CFG)
    phi = st.unravel(theta, CFG)
    np.testing.assert_array_equal(st.ravel(phi, CFG), theta)  # the flat view round-trips
    trees = [
        jnp.linspace(-1.0, 1.0, 8),  # an inner task's x
        phi,  # a learned optimizer's own weights
        {"a": jnp.ones((3, 5)), "b": (jnp.arange(4.0), jnp.full((2, 2, 2), -0.5))},
    ]
    for i, params in enumerate(trees):
        grads = jax.tree_util.tree_map(
            lambda p: jax.random.normal(jax.random.key(6 + i), p.shape), params
        )
        state = st.lopt_state_init(params, CFG)
        new, state = update(phi, params, grads, state, CFG)
        new, state = update(phi, new, grads, state, CFG)  # the state carries over
        assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(params)
        for p, q in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(new)):
            assert p.shape == q.shape and p.dtype == q.dtype and np.all(np.isfinite(q))
        change = sum(
            float(jnp.abs(p - q).sum())
            for p, q in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(new))
        )
        assert change > 0 and float(state["t"]) == 2
    # a zero output layer gives exactly zero step, and the scale multiplies the step
    x, g = trees[0], jnp.arange(8.0) - 3
    zero = dict(phi, w3=jnp.zeros_like(phi["w3"]), b3=jnp.zeros_like(phi["b3"]))
    s0 = st.lopt_state_init(x, CFG)
    np.testing.assert_array_equal(update(zero, x, g, s0, CFG)[0], x)
    s1, s3 = (update(phi, x, g, s0, CFG, jnp.float32(c))[0] - x for c in (1.0, 1e-3))
    np.testing.assert_allclose(s3, 1e-3 * s1, rtol=1e-3, atol=1e-9)


pbt = jax.jit(st.pbt_step, static_argnums=4)


def fake_population(n=4):
    pop = jax.jit(st.init_population, static_argnums=1)(jax.random.key(7), replace(CFG, pop=n))
    pop["h"] = jnp.array([-2.0, -1.5, -1.0, -0.5][:n], jnp.float32)
    elite = dict(jax.tree_util.tree_map(lambda a: a[0], pop), score=jnp.array(jnp.inf))
    return pop, elite


def test_pbt_exploit_explore_and_elitism():
    pop, elite = fake_population()
    scores = jnp.array([3.0, 1.0, 4.0, 2.0])  # ranks: member 1, 3, 0, 2
    new, elite = pbt(jax.random.key(8), scores, pop, elite, CFG)
    th, h = np.asarray(pop["theta"]), np.asarray(pop["h"])
    for dst, src in ((0, 1), (2, 3)):  # the bottom two copy the top two, rank for rank, bitwise
        np.testing.assert_array_equal(new["theta"][dst], th[src])
        m_new, m_src = (
            jax.tree_util.tree_map(lambda a, i=i: a[i], t["state"])
            for t, i in ((new, dst), (pop, src))
        )
        assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, m_new, m_src))
        assert float(new["h"][dst]) in (
            np.float32(h[src]) + np.float32(0.1),
            np.float32(h[src]) - np.float32(0.1),
        )  # exactly ±0.1
    for keep in (1, 3):  # the top half, the best included, is neither copied nor mutated
        np.testing.assert_array_equal(new["theta"][keep], th[keep])
        assert float(new["h"][keep]) == h[keep]
    np.testing.assert_array_equal(elite["theta"], th[1])
    assert float(elite["score"]) == 1.0
    # next round, every live member is worse than the untouched best: it replaces the worst
    again, elite2 = pbt(jax.random.key(9), jnp.array([5.0, 6.0, 7.0, 8.0]), new, elite, CFG)
    assert float(elite2["score"]) == 1.0
    np.testing.assert_array_equal(again["theta"][3], th[1])
    assert float(again["h"][3]) == h[1]


@pytest.mark.parametrize(
    "scores, bad", [([np.nan, 1.0, 2.0, 3.0], [0]), ([np.nan, np.inf, 1.0, np.nan], [0, 1, 3])]
)
def test_pbt_replaces_diverged_members(scores, bad):
    pop, elite = fake_population()
    new, _ = pbt(jax.random.key(10), jnp.array(scores), pop, elite, CFG)
    best = int(np.nanargmin(np.where(np.isfinite(scores), scores, np.nan)))
    for i in bad:
        assert not np.array_equal(new["theta"][i], pop["theta"][i])
        if len(bad) > 1:  # more than half diverged: every one of them restarts from the best
            np.testing.assert_array_equal(new["theta"][i], pop["theta"][best])


def test_self_training_without_any_hand_designed_optimizer(monkeypatch):
    """Notes §4: N = 4, P = 4, B = 2, T = 20, 60 outer steps; the median validation score falls
    by at least 0.5 decades from its random start (measured 1.07 in the notes) and the best by
    at least 0.3 (0.51); all finite. Adam (utils.adam) is patched to raise: the self-only
    program never calls it. Each PBT round keeps the untouched best in the population."""

    def forbidden(*a, **k):
        raise AssertionError("a hand-designed optimizer was called")

    monkeypatch.setattr(st.utils, "adam", forbidden)
    runs = 2
    kinit, kval = jax.random.split(jax.random.key(11), (2, runs))
    n_theta = st.lopt_init(jax.random.key(0), CFG).size
    carry = jax.jit(jax.vmap(st.init_run, (0, 0, 0, 0, None)), static_argnums=4)(
        kinit, kval, jnp.zeros((runs, n_theta)), jnp.zeros(runs, bool), CFG
    )
    run = st.make_train(CFG, modes=("self",))
    mode, refresh = jnp.full(runs, st.SELF), jnp.zeros(runs, bool)
    elite = [np.asarray(carry["elite"]["score"])]
    median = [np.median(np.asarray(carry["scores0"]), 1)]
    for _ in range(CFG.steps // CFG.pbt_every):
        carry, log = run(carry, mode, refresh, kval, 1)
        elite.append(np.asarray(log["elite"][:, 0]))
        median.append(np.asarray(log["median"][:, 0]))
        for r in range(runs):  # the untouched best copy sits in the population, bitwise
            pop = np.asarray(carry["pop"]["theta"][r])
            assert any(np.array_equal(carry["elite"]["theta"][r], t) for t in pop)
    elite, median = np.array(elite), np.array(median)
    assert np.all(np.isfinite(elite)) and np.all(np.isfinite(median))
    assert np.all(np.diff(elite, axis=0) <= 0)  # elitism: the best never gets worse
    assert np.all(median[0] - median[-1] >= 0.5)
    assert np.all(elite[0] - elite[-1] >= 0.3)


def test_quick_run_self_trains(tmp_path_factory):
    """The session's one quick run (tests/conftest.py runs it as a notebook)."""
    saved = record = quick_run("05_self_training", tmp_path_factory)["record"]
    for name in ("self_minus_tuned_gd", "self_minus_adam_outer", "feedback_gain"):
        assert name in saved["metrics"] and len(saved["metrics"][name]["per_seed"]) == 3
    assert all(np.isfinite(v["mean"]) for v in saved["metrics"].values())
    m = record["metrics"]  # R1 in quick mode: self-training moves well below the random start
    assert m["test_best_self"]["mean"] < m["val_best_random_init"]["mean"] - 0.5


@pytest.mark.parametrize(
    "argv, allowed",
    [
        (["--steps", "50"], "multiple of"),
        (["--h0", "1"], "[-6, 0]"),
        (["--pop", "1"], ">= 2"),
        (["--seeds", "0"], "> 0"),
        (["--grad-noise", "-1"], "in [0, 1000)"),
        (["--bogus"], "unrecognized"),
    ],
)
def test_bad_input_is_refused(argv, allowed, capsys):
    with pytest.raises(SystemExit) as e:
        st.main(argv)
    assert e.value.code == 2
    assert allowed in capsys.readouterr().err
