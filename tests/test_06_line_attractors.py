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

        def F(h):
            return m.cell_step(p, h, jnp.zeros(3))

        def q(h):
            return 0.5 * jnp.sum((F(h) - h) ** 2)

        h = jax.random.normal(jax.random.key(2), (4,), jnp.float64)
        J = jax.jacfwd(F)(h)
        np.testing.assert_allclose(jax.grad(q)(h), (J - np.eye(4)).T @ (F(h) - h), rtol=1e-10)
        check_grads(q, (h,), order=1, modes=["rev"])


def test_tanh_nine_fixed_points_saddles_included():
    """h' = tanh(2h) in 2-D: {0, ±h*}², 4 stable, 4 saddles, 1 source; all minima of q."""
    h0 = jax.random.uniform(jax.random.key(0), (64, 2), minval=-1.5, maxval=1.5)

    def F(h):
        return jnp.tanh(2 * h)

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

        def fd(f, z, n):
            return np.stack([(f(z + eps * e) - f(z - eps * e)) / (2 * eps) for e in np.eye(n)], 1)

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
    tok = d["tokens"]
    score = d["score"][:, 0]
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
    """The same seed gives the same network; another seed gives another one. Two calls, each
    training seeds 0 and 1 side by side (one compiled program, not three)."""
    cfg = m.Config(n_train=200, n_test=50, hidden=8, embed=8)
    corpus = m.make_data(0, cfg)

    def run():
        return m.fit(cfg, "gru", [corpus, corpus], [0, 1], 3, 1e-2, "gru", 0.0)[0]["cell"]["U"]

    first = np.asarray(run())
    second = np.asarray(run())
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first[0], first[1])


def write_rows(path, rows, encoding="utf-8"):
    path.write_text("\n".join(rows) + "\n", encoding=encoding)
    return str(path)


def good_rows(n=240):
    """n documents, both labels, every word frequent."""
    return [f"{'fine nice' if i % 2 else 'poor awful'} day,{i % 2}" for i in range(n)]


def test_text_file_is_read(tmp_path):
    rows = ["text,label", '"good, really good",1', "bad bad,0"] + good_rows()
    path = write_rows(tmp_path / "d.csv", rows + [""])
    c = m.text_corpus(path, m.Config(), 0)
    assert (
        len(c["labels"]) == 242 and c["n_train"] == 242 - 24 and sorted(set(c["labels"])) == [0, 1]
    )
    assert np.all((c["tokens"] > 0).sum(1) >= 2)
    tsv = write_rows(tmp_path / "d.tsv", [r.replace(",", "\t") for r in good_rows()])
    assert len(m.text_corpus(tsv, m.Config(), 0)["labels"]) == 240


def test_text_file_any_script_and_form_feed(tmp_path):
    """Words of any script are words; a form feed inside a text is whitespace, not a line end
    (the first edition split lines there and then blamed the wrong line)."""
    rows = [f"{'良い 映画' if i % 2 else '悪い 映画'},{i % 2}" for i in range(220)]
    c = m.text_corpus(write_rows(tmp_path / "ja.csv", rows), m.Config(), 0)
    assert len(c["labels"]) == 220 and c["tokens"].max() == 4  # PAD, UNK and three words
    rows = good_rows()
    rows[5] = "fine\fnice day,1"  # unquoted: only a line end ends the row
    rows[9] = "fine day,7"
    with pytest.raises(ValueError, match="line 10: label must be 0 or 1"):
        m.text_corpus(write_rows(tmp_path / "ff.csv", rows), m.Config(), 0)


def non_utf8(tmp_path):
    path = tmp_path / "latin.csv"
    data = "\n".join(good_rows()).encode()
    lines = data.split(b"\n")
    lines[6] = b"caf\xe9 day,1"
    path.write_bytes(b"\n".join(lines))
    return path


# The table of bad files: each must stop before training (exit 2) with one line that
# names the real cause.
BAD_FILES = {
    "no word 5 times": (
        lambda p: write_rows(p, [f"w{i}a w{i}b,{i % 2}" for i in range(250)]),
        "0 words occur 5 times or more",
    ),
    "one class": (lambda p: write_rows(p, ["fine day,1"] * 250), "need both labels"),
    # too few documents too: the label is named, since more documents of one label cannot help
    "one class, 50 documents": (lambda p: write_rows(p, ["fine day,1"] * 50), "need both labels"),
    "no word in a text": (
        lambda p: write_rows(p, good_rows()[:3] + ["!!! ...,1"] + good_rows()),
        "line 4: no word in the text",
    ),
    "exactly 20": (lambda p: write_rows(p, good_rows(20)), "need 200 documents or more"),
    "non-UTF-8": (lambda p: str(non_utf8(p.parent)), "line 7: not UTF-8 (byte 0xe9 at column 4)"),
    "3 columns": (lambda p: write_rows(p, good_rows()[:2] + ["a,b,1"]), "line 3: expected 2"),
    "label 2": (lambda p: write_rows(p, ["a b,1", "c d,2"]), "line 2: label must be 0 or 1"),
    "empty": (lambda p: write_rows(p, []), "found 0"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_data_file_is_refused(tmp_path, capsys, case):
    make, cause = BAD_FILES[case]
    path = make(tmp_path / "bad.csv")
    with pytest.raises(SystemExit) as e:
        m.main(["--data", path, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and "error: --data" in err[-1] and cause in err[-1], err
    assert not (tmp_path / "out" / "06_line_attractors.json").exists()  # stopped before work


# Modifier words: the rule, the corpus, the linearisation


@pytest.mark.parametrize(
    "sentence, expected",
    [
        ("good", [1]),
        ("the awful", [0, -2]),
        ("not good", [0, -1]),
        ("not awful", [0, 2]),
        ("very good", [0, 2]),
        ("very awesome", [0, 4]),
        ("not the the the good", [0, 0, 0, 0, -1]),  # 4th token after "not": still flipped
        ("not the the the the good", [0, 0, 0, 0, 0, 1]),  # 5th: unflipped
        ("not very good", [0, 0, -2]),  # both apply: −1 × 2
        ("good not bad very bad", [1, 1, 2, 2, 4]),  # flipped and doubled
        ("very the good", [0, 0, 1]),  # "very" reaches one token only
    ],
)
def test_modifier_rule_on_hand_written_sentences(sentence, expected):
    np.testing.assert_array_equal(m.modifier_targets(sentence.split()), expected)


def test_modifier_corpus_follows_the_rule():
    cfg = m.Config(mod_len=25)
    corpus = m.modifier_corpus(3, cfg, 300)
    tokens, targets = corpus["tokens"], corpus["targets"]
    for doc, target in zip(tokens, targets):
        words = [m.MOD_WORDS[i] for i in doc]
        np.testing.assert_array_equal(target, m.modifier_targets(words))
    is_not = np.argwhere(tokens == m.MOD_ID["not"])
    for d in range(len(tokens)):
        where = is_not[is_not[:, 0] == d, 1]
        assert np.all(np.diff(where) > m.NOT_SPAN)  # no "not" inside another's window
    assert 0 < tokens.min() and tokens.max() < len(m.MOD_WORDS)  # no PAD
    for word, p in (("not", 0.06), ("very", 0.08), ("good", 0.06)):  # drawn 0.1, 0.1, 0.0875
        assert np.mean(tokens == m.MOD_ID[word]) > p
    # modifiers matter: the rule's target differs from the plain sum on most documents
    plain = np.cumsum(np.vectorize(lambda i: m.VALENCE.get(m.MOD_WORDS[i], 0.0))(tokens), 1)
    assert np.mean(plain[:, -1] != targets[:, -1]) > 0.5


def test_linearised_readout_matches_finite_differences():
    """wᵀJₓ(h)e, the linearised readout change of a word, is the derivative of wᵀF(h, s·e) at
    s = 0, for a random GRU at a random state (float64)."""
    with jax.enable_x64(True):
        p = cell_params("gru", seed=11, N=6, E=4, dtype=jnp.float64)
        F = Partial(m.cell_step, p["cell"])
        w = np.asarray(p["w_out"][:, 0])
        h = 0.5 * jax.random.normal(jax.random.key(12), (6,), jnp.float64)
        e = np.asarray(p["emb"][2])
        _, Jx = m.linearize(F, h, jnp.zeros(4))
        eps = 1e-6
        fd = (w @ F(h, eps * e) - w @ F(h, -eps * e)) / (2 * eps)
        np.testing.assert_allclose(w @ np.asarray(Jx) @ e, fd, rtol=1e-7)


def test_probe_documents_place_the_word():
    cfg = m.Config(probe_contexts=3)
    ids, positions, kinds = m.probe_documents(cfg, 0)
    assert ids.shape[:3] == (3, len(kinds), len(m.PROBE_WORDS))
    for c, k, w in itertools.product(range(3), range(len(kinds)), range(len(m.PROBE_WORDS))):
        words = [m.MOD_WORDS[i] for i in ids[c, k, w]]
        pos = positions[c, k, w]
        assert words[pos] == m.PROBE_WORDS[w]
        target = m.modifier_targets(words)
        change = target[pos] - target[pos - 1]
        rule = {"alone": 1, "very": 2, "not5": 1}.get(kinds[k], -1)  # lags 1-4 flip
        assert change == rule * m.VALENCE[m.PROBE_WORDS[w]]


# Encoder-decoder attention


def test_attention_terms_sum_to_the_score():
    rng = np.random.default_rng(0)
    H = rng.normal(size=(16, 7, 5))
    D = rng.normal(size=(16, 6, 5))
    x = rng.integers(0, 4, (16, 7))
    u = rng.integers(0, 4, (16, 6))
    terms = m.attention_terms(H, D, x, u)
    assert terms.shape == (9, 16, 6, 7)
    np.testing.assert_allclose(terms.sum(0), np.einsum("btn,bsn->bts", D, H), atol=1e-12)
    mu, chi, delta = m.decompose(H, x)
    np.testing.assert_allclose(mu + chi + delta, H, atol=1e-12)
    np.testing.assert_allclose(chi[x == 2].mean(0), (H - H.mean(0))[x == 2].mean(0), atol=1e-12)


def test_position_only_states_give_temporal_share_one():
    rng = np.random.default_rng(1)
    positions = rng.normal(size=(8, 5))
    states = np.broadcast_to(positions, (32, 8, 5))
    tokens = rng.integers(1, 6, (32, 8))
    terms = m.attention_terms(states, states, tokens, tokens)
    valid = np.ones((32, 8), bool)
    share, margin = m.term_shares(terms, valid, valid)
    np.testing.assert_allclose(share, np.eye(9)[0], atol=1e-12)
    np.testing.assert_allclose(margin, np.eye(9)[0], atol=1e-12)
    # and states that depend on the word only (zero-mean word vectors, every word equally
    # often at every position, so that μ_t = 0) give an input-input share of 1
    words = rng.normal(size=(6, 5))
    words -= words.mean(0)
    balanced = (np.arange(36)[:, None] + np.arange(8)[None]) % 6  # (36, 8)
    terms = m.attention_terms(words[balanced], words[balanced], balanced, balanced)
    valid = np.ones((36, 8), bool)
    share, _ = m.term_shares(terms, valid, valid)
    np.testing.assert_allclose(share, np.eye(9)[4], atol=1e-9)


def test_translation_batch_alignment():
    cfg = m.Config(att_len=6, att_len_min=3, att_vocab=5)
    for task in m.TASKS:
        b = m.translation_batch(cfg, 40, jax.random.key(0), {"task": m.TASKS.index(task)})
        x, u, y, source, valid = (np.asarray(a) for a in b)
        length = valid.sum(1)
        assert length.min() >= 3 and length.max() <= 6 and np.all(x[~valid] == 0)
        for i in range(40):
            words = x[i, : length[i]]
            expected = {"one_to_one": words, "reversed": words[::-1], "sorted": np.sort(words)}
            np.testing.assert_array_equal(y[i, : length[i]], expected[task])
            start = cfg.att_vocab + 1
            np.testing.assert_array_equal(u[i, : length[i]], np.r_[start, expected[task][:-1]])
            np.testing.assert_array_equal(x[i, source[i, : length[i]]], y[i, : length[i]])
            assert len(set(source[i, : length[i]])) == length[i]  # a permutation


@pytest.mark.parametrize(
    "argv, allowed",
    [
        (["--steps", "0"], "> 0"),
        (["--cell", "rnn"], "invalid choice"),
        (["--bogus"], "unrecognized"),
        (["--data", "/nonexistent.csv"], "cannot read it (No such file or directory)"),
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
    record = quick_run("06_line_attractors", tmp_path_factory)["record"]
    ms = record["metrics"]
    for name in ("accuracy", "fp_pc1_var", "lambda1_abs", "valence_corr", "plane_fp_pc12_var"):
        assert len(ms[name]["per_seed"]) == 3
    assert all(np.isfinite(v["mean"]) for v in ms.values())
    s = {k: np.array(v["per_seed"]) for k, v in record["metrics"].items()}
    assert np.all(s["accuracy"] > 0.95) and np.all(s["fp_pc1_var"] > 0.85)
    assert np.all(np.abs(s["lambda1_abs"] - 1) < 0.05) and np.all(s["lambda2_abs"] < 0.85)
    assert np.all(s["valence_corr"] > 0.95)
    assert np.all(s["n_slow"] == 1)  # one slow mode (and the negative control for the plane)
    assert np.all(s["cos_r1_pc1"] > 0.9) and np.all(s["tau1"] > 5 * s["tau2"])
    # 3 classes: a plane (two slow modes), which fails the line criterion PC1 > 0.85 above
    assert np.all(s["plane_accuracy"] > 0.95) and np.all(s["plane_fp_pc12_var"] > 0.9)
    assert np.all(s["plane_n_slow"] == 2) and np.all(s["plane_fp_pc1_var"] < 0.85)
    # modifiers, on every seed: the signs of the rule (−1 for a word after "not", +1 again at
    # lag 5, more than the word alone after "very": the rule says 2) and of the paper's
    # mechanism (wᵀJₓe_good flips sign once "not" has moved the state)
    assert np.all(s["r_not"] < 0) and np.all(s["r_not_lag5"] > 0) and np.all(s["r_very"] > 1)
    assert np.all(s["lin_gain_good_after_not"] < 0) and np.all(s["lin_gain_good_line"] > 0)
    # attention: both tasks learned (chance is 1/10), and the paper's one-to-one finding, the
    # temporal-temporal term is the largest of the nine
    assert np.all(s["attention_accuracy_one_to_one"] > 0.9)
    assert np.all(s["attention_accuracy_reversed"] > 0.9)
    assert np.all(s["attention_accuracy_sorted"] > 0.9)
    assert record["attention_largest_term"]["one_to_one"] == "temporal-temporal"
    # where the alignment is set by the words (sorted), the temporal-temporal term cannot carry
    # it: its share falls below the one-to-one network's on every seed
    assert np.all(s["attention_tt_share_sorted"] < s["attention_tt_share_one_to_one"])
