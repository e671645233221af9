"""Tests for 06_line_attractors.py: the fixed-point finder on systems with known fixed points, the
Jacobians against finite differences, the eigen-identities, the data, the masked scan, a
hand-built perfect integrator analysed end to end, and the trained-GRU headline (quick run).
Thresholds come from the maths, the paper's claim or the issue's targets, never from what the
code happened to print."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load, quick_run
from jax.test_util import check_grads
from jax.tree_util import Partial

m = load("06_line_attractors")
CELLS = ("vanilla", "ugrnn", "gru", "lstm")


def cell_params(cell, seed=0, N=4, E=3, dtype=jnp.float32):
    cfg = m.Config(hidden=N, embed=E)
    p = m.init_params(jax.random.key(seed), cfg, cell, 6, 2)
    # random biases too, so that every term of the cell is exercised
    p["cell"]["b"] = p["cell"]["b"] + 0.3 * jax.random.normal(
        jax.random.key(seed + 1), p["cell"]["b"].shape
    )
    return jax.tree_util.tree_map(lambda a: a.astype(dtype), p)


def h_star_tanh2():
    """The positive root of h = tanh(2h), by Newton's method."""
    h = 1.0
    for _ in range(50):
        h -= (np.tanh(2 * h) - h) / (2 / np.cosh(2 * h) ** 2 - 1)
    return h


def test_speed_gradient_is_jacobian_residual():
    """∇q = (J − I)ᵀ(F(h) − h) for a random GRU, and q has correct derivatives (x64)."""
    with jax.enable_x64(True):
        p = cell_params("gru", dtype=jnp.float64)["cell"]
        F = lambda h: m.cell_step(p, h, jnp.zeros(3))  # noqa: E731
        q = lambda h: 0.5 * jnp.sum((F(h) - h) ** 2)  # noqa: E731
        h = jax.random.normal(jax.random.key(2), (4,), jnp.float64)
        J = jax.jacfwd(F)(h)
        np.testing.assert_allclose(jax.grad(q)(h), (J - np.eye(4)).T @ (F(h) - h), rtol=1e-10)
        check_grads(q, (h,), order=1, modes=["rev"])


def test_tanh_nine_fixed_points_saddles_included():
    """h' = tanh(2h) in 2-D: {0, ±h*}², 4 stable, 4 saddles, 1 source; all minima of q."""
    h0 = jax.random.uniform(jax.random.key(0), (64, 2), minval=-1.5, maxval=1.5)
    F = lambda h: jnp.tanh(2 * h)  # noqa: E731
    fps, q = m.find_fixed_points(F, h0, 1e-12, 3000, 1e-3)
    hs = h_star_tanh2()
    assert len(fps) == 9
    for e in itertools.product((-hs, 0.0, hs), repeat=2):
        assert np.min(np.linalg.norm(fps - np.array(e), axis=1)) < 1e-4
    unstable = [
        int(np.sum(np.abs(m.eig_sorted(jax.jacfwd(F)(jnp.asarray(h)))[0]) > 1)) for h in fps
    ]
    assert sorted(unstable) == [0] * 4 + [1] * 4 + [2]  # stable, saddles, source
    stable = fps[np.array(unstable) == 0][0]
    # at a stable point J = 2 sech²(2h*) I = 2 (1 − h*²) I = 0.16637 I
    np.testing.assert_allclose(
        np.abs(m.eig_sorted(jax.jacfwd(F)(jnp.asarray(stable)))[0]), 2 * (1 - hs**2), atol=1e-3
    )
    assert np.all(q < 1e-11)


def test_affine_system_converges_to_its_fixed_point():
    """h' = 0.5 h + b has the single fixed point (I − A)⁻¹b = 2b."""
    with jax.enable_x64(True):
        b = jnp.array([0.3, -1.0, 0.5, 2.0])
        h0 = jax.random.normal(jax.random.key(3), (32, 4), jnp.float64)
        fps, q = m.find_fixed_points(lambda h: 0.5 * h + b, h0, 1e-24, 5000, 1e-3)
        assert len(fps) == 1 and q[0] < 1e-16  # q = |0.5 δh|²/2 vanishes at the fixed point
        np.testing.assert_allclose(fps[0], 2 * b, atol=1e-8)


def test_exact_line_attractor():
    """A = rrᵀ + 0.5(I − rrᵀ): every multiple of r is fixed; λ = (1, 0.5, ...), r1 = l1 = ±r."""
    N = 8
    r = np.array(jax.random.normal(jax.random.key(4), (N,)), np.float64)
    r /= np.linalg.norm(r)
    A = np.outer(r, r) + 0.5 * (np.eye(N) - np.outer(r, r))
    B = np.asarray(jax.random.normal(jax.random.key(5), (N, 3)))
    F = Partial(
        lambda A, B, h, x: h @ A.T + x @ B.T,
        jnp.asarray(A, jnp.float32),
        jnp.asarray(B, jnp.float32),
    )
    h0 = 2 * jax.random.normal(jax.random.key(6), (256, N))
    fps, _ = m.find_fixed_points(lambda h: F(h, jnp.zeros(3)), h0, 1e-8, 3000, 1e-3)
    assert len(fps) > 100  # a continuum, not one point
    assert np.max(np.linalg.norm(fps - np.outer(fps @ r, r), axis=1)) < 1e-2  # on the line
    s = np.linalg.svd(fps - fps.mean(0), compute_uv=False)
    assert s[0] ** 2 / np.sum(s**2) > 0.999
    J, Jx = m.linearize(F, jnp.asarray(fps[0]), jnp.zeros(3))
    np.testing.assert_allclose(J, A, atol=1e-6)
    np.testing.assert_allclose(Jx, B, atol=1e-6)
    lam, R, L = m.eig_sorted(J)
    np.testing.assert_allclose(np.abs(lam), [1.0] + [0.5] * (N - 1), atol=1e-5)
    assert abs(R[:, 0].real @ r) / np.linalg.norm(R[:, 0]) > 0.999
    np.testing.assert_allclose(np.abs(L[:, 0].real @ r), 1.0, atol=1e-5)  # l1 = ±r (l1ᵀr1 = 1)
    assert m.timescale(lam[0]) > 1e5 and np.isfinite(m.timescale(lam[1]))  # τ1 = ∞ up to rounding


def test_perfect_integrator_end_to_end():
    """A hand-built integrator, F(h, x) = diag(1, 0.5) h + x with e_w = (valence_w, noise_w) and
    readout (1, 0), classifies perfectly; the pipeline must recover λ1 = 1, r1 = e1, valences."""
    cfg = m.Config(n_train=300, n_test=200, fp_tol=1e-10, fp_max_steps=3000)
    data = m.make_data(1, cfg)
    valence = data["score"][:, 0]
    noise = np.random.default_rng(0).normal(size=len(valence))
    emb = jnp.asarray(np.stack([valence, noise], 1), jnp.float32).at[0].set(0.0)
    F = Partial(lambda A, h, x: h @ A.T + x, jnp.diag(jnp.array([1.0, 0.5])))
    hT, hs = m.run_rnn(F, emb, jnp.asarray(data["tokens"]), 2)
    np.testing.assert_array_equal(np.asarray(hT[:, 0]) > 0, data["labels"] == 1)  # accuracy 1
    visited = np.asarray(hs)[data["tokens"] > 0][:256]
    ref = np.r_[np.nan, valence[1:]]
    res = m.analyze(F, emb, np.array([1.0, 0.0]), jnp.asarray(visited), ref, cfg, 0.9)
    assert abs(res["lambda1_abs"] - 1) < 1e-5 and abs(res["lambda2_abs"] - 0.5) < 1e-5
    assert res["n_slow"] == 1 and res["cos_r1_pc1"] > 0.999 and res["fp_pc1_var"] > 0.999
    assert res["valence_corr"] > 0.9999
    np.testing.assert_allclose(res["est"][1:], valence[1:], atol=1e-5)  # l1 = e1, J_x = I


@pytest.mark.parametrize("cell", CELLS)
def test_jacobians_match_finite_differences(cell):
    with jax.enable_x64(True):
        p = cell_params(cell, seed=7, dtype=jnp.float64)["cell"]
        S = 8 if cell == "lstm" else 4
        h = 0.5 * jax.random.normal(jax.random.key(8), (S,), jnp.float64)
        x = jax.random.normal(jax.random.key(9), (3,), jnp.float64)
        F = Partial(m.cell_step, p)
        J, Jx = m.linearize(F, h, x)
        assert J.shape == (S, S) and Jx.shape == (S, 3)
        eps = 1e-6
        fd = lambda f, z, n: np.stack(
            [(f(z + eps * e) - f(z - eps * e)) / (2 * eps) for e in np.eye(n)], 1  # noqa
        )
        np.testing.assert_allclose(J, fd(lambda z: F(z, x), h, S), rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(Jx, fd(lambda z: F(h, z), x, 3), rtol=1e-5, atol=1e-9)


def test_eig_sorted_identities():
    J = np.random.default_rng(0).normal(size=(8, 8)) / 3  # non-normal, complex pairs
    lam, R, L = m.eig_sorted(J)
    assert np.all(np.diff(np.abs(lam)) <= 1e-12)
    np.testing.assert_allclose(L.T @ R, np.eye(8), atol=1e-10)
    np.testing.assert_allclose(J @ R, R * lam, atol=1e-10)
    np.testing.assert_allclose(L.T @ J, lam[:, None] * L.T, atol=1e-10)
    np.testing.assert_allclose((R * lam) @ L.T, J, atol=1e-10)


def test_timescale_values():
    np.testing.assert_allclose(
        m.timescale(np.array([0.9, 0.99, 1.01, 0.5, 0.9j])),
        [9.4912, 99.4992, 100.4992, 1.4427, 9.4912],
        rtol=1e-4,
    )
    assert np.isinf(m.timescale(1.0)) and np.isinf(m.timescale(-1.0))


def test_dedupe_keeps_the_lower_q_and_outliers_are_dropped():
    pts = np.array([[0.0, 0.0], [5e-4, 0.0], [1.0, 0.0], [10.0, 10.0]])
    kept, q = m.dedupe(pts, np.array([2e-5, 1e-5, 1e-5, 1e-5]), 1e-3)
    np.testing.assert_array_equal(kept, pts[1:])
    assert m.drop_outliers(kept, 2.0).tolist() == [True, True, False]
    assert m.drop_outliers(pts[:1], 0.1).tolist() == [True]  # one point is never an outlier


def test_data_invariants():
    cfg = m.Config(n_train=3000, n_test=300)
    d = m.make_data(5, cfg)
    tok, score = d["tokens"], d["score"][:, 0]
    total = score[tok].sum(1)
    assert len(tok) == 3300 and np.all(total != 0)  # ties dropped
    np.testing.assert_array_equal(d["labels"], total > 0)
    mask = tok > 0
    lengths = mask.sum(1)
    assert np.all(mask == (np.arange(cfg.len_max) < lengths[:, None]))  # PAD only at the end
    assert lengths.min() >= cfg.len_min and lengths.max() <= cfg.len_max
    assert 0.3 < d["labels"].mean() < 0.7
    assert score[0] == 0 and np.sum(score > 0) == np.sum(score < 0) == cfg.n_pos
    np.testing.assert_array_equal(m.make_data(5, cfg)["tokens"], tok)
    assert not np.array_equal(m.make_data(6, cfg)["tokens"], tok)
    d3 = m.make_data(5, cfg, 3)
    total3 = d3["score"][d3["tokens"]].sum(1)
    top = total3.max(1, keepdims=True)
    assert np.all((total3 == top).sum(1) == 1)  # a unique argmax
    np.testing.assert_array_equal(d3["labels"], total3.argmax(1))
    assert np.all(np.bincount(d3["labels"]) > 0.2 * len(d3["labels"]))


def test_masked_scan_equals_the_unpadded_prefix():
    p = cell_params("gru", N=6, E=3)
    tokens = jnp.array([[1, 2, 3, 4, 5, 0, 0, 0]])
    F = Partial(m.cell_step, p["cell"])
    hT, hs = m.run_rnn(F, p["emb"], tokens, 6)
    h_prefix, _ = m.run_rnn(F, p["emb"], tokens[:, :5], 6)
    np.testing.assert_allclose(hT, h_prefix, atol=1e-6)
    np.testing.assert_array_equal(hs[0, 5:], np.repeat(hs[0, 4:5], 3, 0))  # frozen on PAD


def test_training_is_deterministic():
    """The same seed gives the same network; another seed gives another one."""
    cfg = m.Config(n_train=200, n_test=50, hidden=8, embed=8)
    corpus = m.make_data(0, cfg)
    run = lambda seed: m.fit(cfg, "gru", [corpus], [seed], 3, 1e-2, "gru", 0.0)[0]  # noqa: E731
    p1, p2, p3 = run(0), run(0), run(1)
    np.testing.assert_array_equal(p1["cell"]["U"], p2["cell"]["U"])
    assert not np.array_equal(p1["cell"]["U"], p3["cell"]["U"])


def test_text_file_is_read(tmp_path):
    rows = ["text,label", '"good, really good",1', "bad bad,0"] + [
        f"{'fine nice' if i % 2 else 'poor awful'} day {i},{i % 2}" for i in range(30)
    ]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n\n")
    c = m.text_corpus(str(tmp_path / "d.csv"), m.Config(), 0)
    assert len(c["labels"]) == 32 and c["n_train"] == 29 and sorted(set(c["labels"])) == [0, 1]
    assert np.all((c["tokens"] > 0).sum(1) >= 2)
    (tmp_path / "d.tsv").write_text("\n".join(r.replace(",", "\t") for r in rows[3:]))
    assert len(m.text_corpus(str(tmp_path / "d.tsv"), m.Config(), 0)["labels"]) == 30


@pytest.mark.parametrize(
    "content, where",
    [
        ("a b,1\nc d,0\ne,f,1\n", "line 3"),
        ("a b,1\nc d,2\n", "line 2"),
        ("", "line 1"),
        ("a b,1\njust text\n", "line 2"),
        ("a b,1\nc d,0\n", "need 20"),
    ],
)
def test_bad_data_file_is_refused(tmp_path, capsys, content, where):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(SystemExit) as e:
        m.main(["--data", str(path), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and "error: --data" in err[-1] and where in err[-1]  # one line


@pytest.mark.parametrize(
    "argv, allowed",
    [
        (["--steps", "0"], "> 0"),
        (["--cell", "rnn"], "invalid choice"),
        (["--bogus"], "unrecognized"),
        (["--data", "/nonexistent.csv"], "cannot read"),
        (["--seeds", "0"], "> 0"),
    ],
)
def test_bad_input_is_refused(argv, allowed, capsys):
    with pytest.raises(SystemExit) as e:
        m.main(argv)
    assert e.value.code == 2 and allowed in capsys.readouterr().err


@pytest.mark.slow
def test_quick_run_reproduces_the_headline(tmp_path_factory):
    """Trained GRUs (3 seeds, test size): the issue's headline holds for every seed."""
    saved = record = quick_run("06_line_attractors", tmp_path_factory)["record"]
    ms = saved["metrics"]
    for name in ("accuracy", "fp_pc1_var", "lambda1_abs", "valence_corr", "plane_pc12_var"):
        assert len(ms[name]["per_seed"]) == 3
    assert all(np.isfinite(v["mean"]) for v in ms.values())
    s = {k: np.array(v["per_seed"]) for k, v in record["metrics"].items()}
    assert np.all(s["accuracy"] > 0.95) and np.all(s["fp_pc1_var"] > 0.85)
    assert np.all(np.abs(s["lambda1_abs"] - 1) < 0.05) and np.all(s["lambda2_abs"] < 0.85)
    assert np.all(s["valence_corr"] > 0.95)
    assert np.all(s["n_slow"] == 1)  # one slow mode (and the negative control for the plane)
    assert np.all(s["cos_r1_pc1"] > 0.9) and np.all(s["tau1"] > 5 * s["tau2"])
    # 3 classes: a plane (two slow modes), which fails the line criterion PC1 > 0.85 above
    assert np.all(s["plane_accuracy"] > 0.95) and np.all(s["plane_pc12_var"] > 0.9)
    assert np.all(s["plane_n_slow"] == 2) and np.all(s["plane_fp_pc1_var"] < 0.85)
