# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Line attractors in sentiment RNNs
#
# Maheswaranathan, Williams, Golub, Ganguli, Sussillo, *Reverse engineering recurrent networks
# for sentiment classification reveals line attractor dynamics*, NeurIPS 2019,
# [arXiv:1906.10720](https://arxiv.org/abs/1906.10720); follow-ups: Aitken et al. 2020 (geometry
# of integration, [arXiv:2010.15114](https://arxiv.org/abs/2010.15114)) and Maheswaranathan et
# al. 2019 (universality, [arXiv:1907.08549](https://arxiv.org/abs/1907.08549)).
#
# You will learn to read *how* a trained RNN classifies sentiment: find its fixed points by
# minimising a speed, linearize there, read eigenvalues and left/right eigenvectors. It sums word
# valences on an approximate **line attractor** (one |λ| ≈ 1, the rest fast), each word moving the
# state along the line by l₁ᵀJₓe_w; three classes give a **plane**; four cells share the mechanism.
# Reproduced on a synthetic corpus (or `--data FILE`): Fig. 2 (trajectories and fixed points in PC
# space) and the spectrum. Run `python 06_line_attractors.py` (about 3 min on 2 busy cores) or
# `--quick` (< 1 min). Expected (GRU, 3 seeds): accuracy 0.985, fixed-point PC1 variance 0.96,
# |λ₁| 1.01, |λ₂| 0.72, valence corr 0.998; 3 classes: PC1+PC2 0.98 with two slow modes.

# %%
import csv
import re
import time
from dataclasses import asdict, dataclass, replace

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from jax.tree_util import Partial

import utils

# %% [markdown]
# ## Configuration
# The paper trained on IMDB, Yelp and SST; the authors' runnable recipe (the `renn` notebook:
# GRU N = 256, E = 128, Adam 1e-3 decaying, batch 64) is beyond 2 CPU cores. Ours is smaller.


# %%
@dataclass(frozen=True)
class Config:
    n_pos: int = 10  # positive words, valence ~ U(val_lo, val_hi); as many negative, < 0
    n_neutral: int = 20  # neutral words, valence 0
    val_lo: float = 0.25  # smallest |valence| (ours; Aitken's integer corpus uses 1 and 2)
    val_hi: float = 2.0  # largest |valence|
    p_neutral: float = 0.5  # chance that a position holds a neutral word
    len_min: int = 10  # document length ~ U{len_min, ..., len_max}
    len_max: int = 30  # (renn kept IMDB reviews up to 1000 tokens)
    n_train: int = 20_000  # training documents (ties dropped)
    n_test: int = 2_000  # held out: accuracy, and the visited states that seed the search
    per_class: int = 3  # 3-class corpus: evidence words per class and strength (1 and 2)
    max_vocab: int = 2_000  # --data: words kept (the rest are UNK) ...
    max_len: int = 100  # ... and tokens kept per document
    cell: str = "gru"  # gru | lstm | ugrnn | vanilla
    hidden: int = 32  # N: hidden units, an LSTM's state [h; c] has 2N (renn: 256)
    embed: int = 32  # E: embedding size (renn: 128)
    steps: int = 600  # Adam steps, binary corpus
    steps_3class: int = 900  # Adam steps, 3-class corpus
    batch: int = 64  # documents per Adam step (renn: 64)
    lr: float = 3e-3  # η: Adam step, decays exponentially to η · lr_decay (renn: 1e-3, decaying)
    lr_decay: float = 0.1  # (ours)
    clip: float = 5.0  # global gradient-norm clip (ctd: "HUGELY important")
    vanilla: tuple = (64, 4000, 1e-3)  # a vanilla RNN's N, steps, lr: it needs more (notes)
    fp_seeds: int = 1024  # visited states that start the search (FPF's flip-flop example: 1024)
    fp_lr: float = 1e-2  # Adam step of the search (renn: 0.01)
    fp_tol: float = 1e-5  # stop when mean q < fp_tol, keep q < 10 fp_tol (renn notebook: 5e-5)
    fp_max_steps: int = 5000  # (FPF: 5000; renn default 1000)
    unique_tol: float = 1e-3  # points closer than this are one fixed point (FPF: 1e-3)
    outlier_tol: float = 1.0  # drop points with no other point this close (ctd: 1.0)
    slow: float = 0.9  # |λ| above this counts as a slow mode (0.95 in the universality table)
    cells: tuple = ("gru", "ugrnn", "lstm", "vanilla")  # universality table, first seed


QUICK = dict(steps=450, steps_3class=600, n_train=5_000, n_test=1_000, fp_seeds=512, cells=("gru",))


# %% [markdown]
# ## The data: a synthetic sentiment corpus
# Token 0 is PAD. Word w has valence v_w (continuous: a sharp test of the projected valences);
# a document's label is $y = \mathbb 1[\sum_t v_{w_t} > 0]$, ties dropped. In the 3-class corpus
# word w adds $s\,e_c$ (class c, strength s ∈ {1, 2}) to a score vector, $y = \arg\max_c$: the
# classes are *unordered*, which makes the attractor two-dimensional (Aitken et al.).
# **Your text** (`--data`): CSV or TSV (by extension, or a tab on line 1) of text and 0/1 label,
# optional header; lower-cased `[a-z0-9']+` words, the `max_vocab` most frequent (others: UNK).
# Its reference valence is each word's naive-Bayes log-count ratio (words seen ≥ 5 times).


# %%
def make_data(seed: int, cfg: Config, n_classes: int = 2) -> dict:
    """n_train + n_test documents: tokens (n, len_max) int32, PAD = 0 after each length; labels
    (n,); score (V, K): each word's valence (K = 1) or class evidence (K = n_classes)."""
    rng = np.random.default_rng(seed)
    if n_classes == 2:
        mag = rng.uniform(cfg.val_lo, cfg.val_hi, 2 * cfg.n_pos)
        score = (np.r_[np.ones(cfg.n_pos), -np.ones(cfg.n_pos)] * mag)[:, None]
    else:
        strength = np.tile(np.repeat([1.0, 2.0], cfg.per_class), n_classes)[:, None]
        score = np.repeat(np.eye(n_classes), 2 * cfg.per_class, 0) * strength
    n_words, K = score.shape
    score = np.concatenate([np.zeros((1, K)), score, np.zeros((cfg.n_neutral, K))])  # (V, K)
    n_want, T = cfg.n_train + cfg.n_test, cfg.len_max
    n = int(1.2 * n_want) + 100  # spare documents, since ties are dropped
    lengths = rng.integers(cfg.len_min, T + 1, n)
    tokens = np.where(rng.random((n, T)) < cfg.p_neutral, rng.integers(n_words + 1, len(score),
                      (n, T)), rng.integers(1, n_words + 1, (n, T)))  # fmt: skip
    tokens[np.arange(T)[None] >= lengths[:, None]] = 0
    total = score[tokens].sum(1)  # (n, K)
    if n_classes == 2:
        labels, tie = total[:, 0] > 0, total[:, 0] == 0
    else:
        labels, tie = total.argmax(1), (total == total.max(1, keepdims=True)).sum(1) > 1
    keep = np.flatnonzero(~tie)[:n_want]
    return dict(tokens=tokens[keep].astype(np.int32), labels=labels[keep].astype(np.int32),
                score=score, n_train=cfg.n_train)  # fmt: skip


def text_corpus(path: str, cfg: Config, seed: int) -> dict:
    """A CSV/TSV file as a corpus like make_data's (shuffled, last 10% for test); a ValueError
    names the offending line."""
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--data {path}: cannot read it ({e})") from None
    sep = "\t" if path.endswith(".tsv") or "\t" in "".join(lines[:1]) else ","
    rows, words, labels = csv.reader(lines, delimiter=sep), [], []
    try:
        for row in rows:
            n, label = rows.line_num, row[-1].strip() if len(row) == 2 else None
            if not "".join(row).strip() or n == 1 and (label or "0").isalpha():
                continue  # a blank line or a header
            ws = re.findall(r"[a-z0-9']+", row[0].lower())[: cfg.max_len] if row else []
            if label not in ("0", "1") or not ws:
                raise ValueError(f"--data {path} line {n}: expected 2 columns (words, label 0 "
                                 f"or 1), got {row!r:.50}")  # fmt: skip
            words, labels = words + [ws], labels + [int(label)]
    except csv.Error as e:
        raise ValueError(f"--data {path} line {rows.line_num}: malformed row ({e})") from None
    if len(labels) < 20 or len(set(labels)) < 2:  # an empty file lands here too
        raise ValueError(f"--data {path} line {max(len(lines), 1)}: need 20 documents or more, "
                         f"with both labels, found {len(labels)}")  # fmt: skip
    vocab, counts = np.unique(np.concatenate(words), return_counts=True)
    top = vocab[np.argsort(-counts, kind="stable")][: cfg.max_vocab]
    index, labels = {w: i + 2 for i, w in enumerate(top)}, np.asarray(labels, np.int32)
    tokens = np.zeros((len(words), max(map(len, words))), np.int32)
    for d, ws in enumerate(words):
        tokens[d, : len(ws)] = [index.get(w, 1) for w in ws]  # 0 = PAD, 1 = UNK
    pos, neg = (np.bincount(tokens[labels == y].ravel(), minlength=len(top) + 2) + 1.0
                for y in (1, 0))  # fmt: skip
    ratio = np.log(pos / pos[2:].sum()) - np.log(neg / neg[2:].sum())
    ratio[(pos + neg < 7) | (np.arange(len(ratio)) < 2)] = np.nan  # seen < 5 times, PAD, UNK
    order = np.random.default_rng(seed).permutation(len(words))
    return dict(tokens=tokens[order], labels=labels[order], score=ratio[:, None],
                n_train=len(words) - max(1, len(words) // 10))  # fmt: skip


# %% [markdown]
# ## The model: four recurrent cells and a masked scan
# $x_t = E[w_t]$ (learned embedding), $h_t = F(h_{t-1}, x_t)$, logits $= W_{out} h_T + b$:
# - vanilla: $h' = \tanh(Wx + Uh + b)$
# - UGRNN: $u = σ(W_u x + U_u h + b_u)$, $c = \tanh(W_c x + U_c h + b_c)$, $h' = u⊙h + (1-u)⊙c$
# - GRU: adds a reset gate $r = σ(W_r x + U_r h + b_r)$, $c = \tanh(W_c x + U_c (r⊙h) + b_c)$
# - LSTM: state $[h; c]$, $c' = σ(f)⊙c + σ(i)⊙\tanh(g)$, $h' = σ(o)⊙\tanh(c')$, forget bias +1.
# A cell keeps its G gate blocks side by side in W (E, G·N), U (N, G·N), b (G·N); G (1–4) tells
# the cell type. PAD freezes the state: $h_t = m_t F(h_{t-1}, x_t) + (1 - m_t) h_{t-1}$.


# %%
def init_params(key: jax.Array, cfg: Config, cell: str, vocab: int, n_classes: int) -> dict:
    """emb (V, E), cell {W (E, GN), U (N, GN), b (GN)}, w_out (N, C), b_out (C)."""
    G, N, E = {"vanilla": 1, "ugrnn": 2, "gru": 3, "lstm": 4}[cell], cfg.hidden, cfg.embed
    k_e, k_w, k_u, k_o = jax.random.split(key, 4)
    b = jnp.zeros(G * N).at[N : 2 * N].set(1.0 if cell == "lstm" else 0.0)  # LSTM forget bias
    return dict(emb=jax.random.normal(k_e, (vocab, E)) / np.sqrt(E),
                cell=dict(W=jax.random.normal(k_w, (E, G * N)) / np.sqrt(E),
                          U=jax.random.normal(k_u, (N, G * N)) / np.sqrt(N), b=b),
                w_out=jax.random.normal(k_o, (N, n_classes)) / np.sqrt(N),
                b_out=jnp.zeros(n_classes))  # fmt: skip


def cell_step(p: dict, h: jax.Array, x: jax.Array) -> jax.Array:
    """F(h, x): one step of the cell with weights p; h (..., S), x (..., E)."""
    N, G, sig = p["U"].shape[0], p["U"].shape[1] // p["U"].shape[0], jax.nn.sigmoid
    if G == 1:
        return jnp.tanh(x @ p["W"] + h @ p["U"] + p["b"])
    if G == 4:
        i, f, g, o = jnp.split(x @ p["W"] + h[..., :N] @ p["U"] + p["b"], 4, -1)
        c = sig(f) * h[..., N:] + sig(i) * jnp.tanh(g)
        return jnp.concatenate([sig(o) * jnp.tanh(c), c], -1)
    zx, (Uu, *Ur, Uc) = jnp.split(x @ p["W"] + p["b"], G, -1), jnp.split(p["U"], G, -1)
    u = sig(zx[0] + h @ Uu)
    rh = sig(zx[1] + h @ Ur[0]) * h if G == 3 else h  # the GRU's reset gate
    return u * h + (1 - u) * jnp.tanh(zx[-1] + rh @ Uc)


def run_rnn(F, emb: jax.Array, tokens: jax.Array, S: int) -> tuple:
    """Masked scan of F(h, x) over tokens (B, T) from h = 0: (h_T (B, S), states (B, T, S))."""

    def step(h, inp):  # x_t (B, E), m_t (B,)
        h = jnp.where(inp[1][:, None], F(h, inp[0]), h)
        return h, h

    h0 = jnp.zeros((tokens.shape[0], S), emb.dtype)
    hT, hs = jax.lax.scan(step, h0, (jnp.swapaxes(emb[tokens], 0, 1), tokens.T > 0))
    return hT, jnp.swapaxes(hs, 0, 1)


def forward(params: dict, tokens: jax.Array) -> tuple:
    """(logits (B, C), states (B, T, S)); the readout sees h only (of an LSTM's [h; c])."""
    N, GN = params["cell"]["U"].shape
    hT, hs = run_rnn(Partial(cell_step, params["cell"]), params["emb"], tokens,
                     2 * N if GN == 4 * N else N)  # fmt: skip
    return hT[:, :N] @ params["w_out"] + params["b_out"], hs


# %% [markdown]
# ## Training: one `lax.scan`, vmapped over seeds
# Cross-entropy on a random batch; the gradient is clipped to global norm ≤ `clip`, then Adam
# with step $\eta_t = \eta\cdot\text{decay}^{t/T}$ (`utils.adam`'s unit-step move scaled by
# $\eta_t$). With two classes the readout direction is $w = W_{out}[:, 1] - W_{out}[:, 0]$.


# %%
def make_train(cfg: Config, steps: int, lr: float):
    """run(carry, data, keys) -> (carry, losses): one Adam step per key; carry = (params, opt)."""
    tmap, (_, adam_update) = jax.tree_util.tree_map, utils.adam(1.0)

    def loss_fn(params, tokens, labels):
        logp = jax.nn.log_softmax(forward(params, tokens)[0])
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], 1))

    def step(carry, key, data):
        params, opt = carry
        idx = jax.random.randint(key, (cfg.batch,), 0, data["labels"].shape[0])
        loss, g = jax.value_and_grad(loss_fn)(params, data["tokens"][idx], data["labels"][idx])
        norm = jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(g)))
        g = tmap(lambda x: x * jnp.minimum(1.0, cfg.clip / (norm + 1e-12)), g)
        new, opt = adam_update(g, opt, params)
        eta = lr * cfg.lr_decay ** (opt["t"] / steps)
        return (tmap(lambda p, n: p + eta * (n - p), params, new), opt), loss

    return lambda carry, data, keys: jax.lax.scan(lambda c, k: step(c, k, data), carry, keys)


def fit(cfg, cell, corpora, seeds, steps, lr, label, t0) -> tuple:
    """Train one network per (seed, corpus), vmapped: (stacked params, test accuracy, compile s)."""
    stack = lambda xs: jax.tree_util.tree_map(lambda *a: jnp.stack(a), *xs)  # noqa: E731
    split = lambda c, te: {k: c[k][c["n_train"]:] if te else c[k][: c["n_train"]]  # noqa: E731
                           for k in ("tokens", "labels")}  # fmt: skip
    keys = [jax.random.split(jax.random.key(s)) for s in seeds]
    params = stack([init_params(k[0], cfg, cell, len(c["score"]), int(c["labels"].max()) + 1)
                    for k, c in zip(keys, corpora)])  # fmt: skip
    carry = (params, jax.vmap(utils.adam(1.0)[0])(params))
    data, test = stack([split(c, 0) for c in corpora]), stack([split(c, 1) for c in corpora])
    step_keys = jnp.stack([jax.random.split(k[1], steps) for k in keys])  # (seeds, steps)
    run = jax.jit(jax.vmap(make_train(cfg, steps, lr)))
    sizes, tc = [steps // 3] * 2 + [steps - 2 * (steps // 3)], time.perf_counter()  # 3 chunks
    compiled = {n: run.lower(carry, data, step_keys[:, :n]).compile() for n in set(sizes) if n}
    compile_s, done, losses = time.perf_counter() - tc, 0, []
    for n in filter(None, sizes):
        carry, loss = compiled[n](carry, data, step_keys[:, done : done + n])
        losses, done = losses + [np.asarray(loss)], done + n
        utils.progress(t0, label, done, steps, loss=float(losses[-1][:, -50:].mean()))
    utils.check_finite(np.concatenate(losses, 1), f"{label} training loss",
                       "a smaller learning rate or --steps", steps=np.arange(steps))  # fmt: skip
    acc = lambda p, d: jnp.mean(jnp.argmax(forward(p, d["tokens"])[0], -1) == d["labels"])  # noqa
    return carry[0], np.asarray(jax.jit(jax.vmap(acc))(carry[0], test)), compile_s


# %% [markdown]
# ## Fixed points: minimise the speed
# With no input ($x^* = 0$: the *absence* of a word, neither PAD nor a neutral word) a fixed
# point satisfies $F(h^*, 0) = h^*$. Find them by minimising
#
# $$q(h) = \tfrac12\lVert F(h, 0) - h\rVert^2,\qquad \nabla q = (J - I)^\top (F(h) - h),$$
#
# with Adam, jointly from many visited states. q = 0 at *every* fixed point: saddles and sources
# are found too. Stop once mean q < tol; keep q < 10·tol; merge points closer than `unique_tol`
# (keep the lower q); drop points with no neighbour within `outlier_tol`.
# > **Stopping early is the point.** Along an approximate line the speed $\sqrt{2q}$ is tiny next
# > to one word's push, but not zero. Converge fully and the slow points collapse onto a few
# > isolated fixed points; stop at a tolerance and they trace the line.


# %%
@jax.jit
def _descend(F, h0s, tol, max_steps, lr):
    """Joint Adam on q(h_i) from h0s (M, S) until mean q < tol: (h, q (M,), steps)."""
    q = lambda h: 0.5 * jnp.sum((F(h) - h) ** 2)  # noqa: E731
    q_and_grad = jax.vmap(jax.value_and_grad(q))

    def body(s):
        h, m, v, t, _ = s
        qs, g = q_and_grad(h)
        t, m, v = t + 1, 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        h = h - lr * m / (1 - 0.9**t) / (jnp.sqrt(v / (1 - 0.999**t)) + 1e-8)
        return h, m, v, t, jnp.mean(qs)

    z = jnp.zeros_like(h0s)
    init = (h0s, z, z, jnp.zeros([], jnp.int32), jnp.asarray(jnp.inf, h0s.dtype))
    h, _, _, t, _ = jax.lax.while_loop(lambda s: (s[3] < max_steps) & (s[4] >= tol), body, init)
    return h, jax.vmap(q)(h), t


def dedupe(points: np.ndarray, q: np.ndarray, unique_tol: float) -> tuple:
    """Lowest q first, keep a point unless within unique_tol (2-norm) of one already kept."""
    kept = []
    for i in np.argsort(q, kind="stable"):
        if not kept or np.min(np.linalg.norm(points[kept] - points[i], axis=1)) > unique_tol:
            kept.append(i)
    return points[np.sort(kept)], q[np.sort(kept)]


def drop_outliers(points: np.ndarray, outlier_tol: float) -> np.ndarray:
    """Mask of points whose nearest other point is within outlier_tol (all, if fewer than 2)."""
    d2 = np.sum(points**2, 1)[:, None] + np.sum(points**2, 1) - 2 * points @ points.T  # (K, K)
    np.fill_diagonal(d2, np.inf)
    return (d2.min(1, initial=np.inf) <= outlier_tol**2) | (len(points) < 2)


def find_fixed_points(F, h0s, tol: float = 1e-5, max_steps: int = 5000, unique_tol: float = 1e-3,
                      *, lr=1e-2, keep_tol=None, outlier_tol=1.0) -> tuple:  # fmt: skip
    """(fixed_points (K, N), q_values (K,)) of F: (N,) -> (N,) from starting states h0s (M, N):
    Adam on q until mean q < tol or max_steps; keep q < keep_tol (default 10 tol); dedupe at
    unique_tol; drop outliers. Pass F as a jax.tree_util.Partial to reuse one compilation."""
    F, h0s = F if isinstance(F, Partial) else Partial(F), jnp.asarray(h0s)
    h, q, _ = _descend(F, h0s, jnp.asarray(tol, h0s.dtype), max_steps, jnp.asarray(lr, h0s.dtype))
    h, q = np.asarray(h), np.asarray(q)
    keep = np.isfinite(q) & (q < (10 * tol if keep_tol is None else keep_tol))
    h, q = dedupe(h[keep], q[keep], unique_tol)
    keep = drop_outliers(h, outlier_tol)
    return h[keep], q[keep]


# %% [markdown]
# ## Linearization, eigenvectors, time constants
# Near $(h^*, 0)$: $F(h^* + δh, δx) \approx h^* + J\,δh + J_x\,δx$, $J = ∂F/∂h$, $J_x = ∂F/∂x$.
# With $J = R\,Λ\,L^\top$, $L = (R^{-1})^\top$ (so $J r_a = λ_a r_a$, $l_a^\top J = λ_a l_a^\top$):
#
# $$δh_t = \sum_a r_a\big[λ_a^t\, l_a^\top δh_0 + \textstyle\sum_{s \le t} λ_a^{t-s} l_a^\top
#   J_x x_s\big],\qquad τ_a = 1/|\log|λ_a||\ \text{tokens}.$$
#
# On a line attractor $|λ_1| ≈ 1$, $|λ_{a>1}| \ll 1$: the state *sums* $l_1^\top J_x x_s$ along
# $r_1$, so word w's **valence** is $l_1^\top J_x e_w$ ($e_w$: its embedding). We use the *central*
# fixed point (nearest the centroid; the saturated ends of the line show extra slow modes).
#
# > J is not normal: the readout follows $r_1$ (where the state moves), not $l_1$ (what it hears);
# > we orient $r_1$ so that $w^\top r_1 > 0$. $|λ_1| ≈ 1.01$–$1.03$: a slowly unstable line whose
# > speed grows off-centre, so the kept slow points cover its middle; stable points cap its ends.


# %%
@jax.jit
def _jacobians(F, hs, x):
    return jax.vmap(jax.jacfwd(F, argnums=(0, 1)), (0, None))(hs, x)


def linearize(F, h: jax.Array, x: jax.Array) -> tuple:
    """(J = ∂F/∂h (N, N), J_x = ∂F/∂x (N, E)) at (h, x); for h (K, N), stacked (K, ...)."""
    J, Jx = _jacobians(F if isinstance(F, Partial) else Partial(F), jnp.atleast_2d(h), x)
    return (J, Jx) if jnp.ndim(h) == 2 else (J[0], Jx[0])


def eig_sorted(J) -> tuple:
    """(λ (N,), R, L), sorted by |λ| descending, with J = R diag(λ) Lᵀ and LᵀR = I."""
    lam, R = np.linalg.eig(np.asarray(J, np.float64))
    order = np.argsort(-np.abs(lam), kind="stable")
    return lam[order], R[:, order], np.linalg.inv(R[:, order]).T


def timescale(lam):
    """τ = 1/|log|λ||, in steps (inf at |λ| = 1)."""
    with np.errstate(divide="ignore"):
        return 1.0 / np.abs(np.log(np.abs(np.asarray(lam, np.complex128))))


def _zero_input(F, x0, h):
    return F(h, x0)


def analyze(F, emb, w_read, h_seed, valence, cfg: Config, slow: float) -> dict:
    """Fixed points and linearization of F(h, x) (a Partial) from h_seed (M, S). w_read: readout
    on the first len(w_read) coordinates; valence (V,): reference per word (NaN: none) or None."""
    x0 = jnp.zeros(emb.shape[1], h_seed.dtype)
    fps, q = find_fixed_points(Partial(_zero_input, F, x0), h_seed, cfg.fp_tol, cfg.fp_max_steps,
                               cfg.unique_tol, lr=cfg.fp_lr,
                               outlier_tol=cfg.outlier_tol)  # fmt: skip
    assert len(fps), "no fixed point found below tolerance; try a larger fp_tol"
    _, s, Vt = np.linalg.svd(centred := fps - fps.mean(0), full_matrices=False)
    var = s**2 / max(np.sum(s**2), 1e-30)  # PCA variance ratios of the fixed points
    pad = np.zeros((len(h_seed) - len(fps), fps.shape[1]), fps.dtype)  # fixed shape: one compile
    J, Jx = (np.asarray(a)[: len(fps)] for a in linearize(F, np.concatenate([fps, pad]), x0))
    centre, n = int(np.argmin(np.linalg.norm(centred, axis=1))), len(w_read)
    lam, R, L = eig_sorted(J[centre])
    sign = np.sign(w_read @ R[:n, 0].real) or 1.0
    r1, l1 = sign * R[:, 0].real, sign * L[:, 0].real
    est = np.asarray(emb) @ Jx[centre].T @ l1  # (V,): l₁ᵀ J_x e_w for every word
    ok = np.isfinite(valence) if valence is not None else None
    cos = lambda a, b: float(abs(a @ b) / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    tau, top = timescale(lam[:2]), np.r_[np.abs(lam), 0.0]
    return dict(fp_count=len(fps), fp_pc1_var=var[0], fp_pc12_var=var[:2].sum(),
                participation=1 / np.sum(var**2), lambda1_abs=top[0], lambda2_abs=top[1],
                n_slow=int(np.sum(np.abs(lam) > slow)), tau1=min(tau[0], 1e6), tau2=tau[1],
                cos_r1_pc1=cos(r1, Vt[0]), cos_wout_pc1=cos(w_read, Vt[0][:n]),
                valence_corr=np.corrcoef(est[ok], valence[ok])[0, 1] if ok is not None else np.nan,
                fps=fps, pcs=Vt[:2], centroid=fps.mean(0), lam=lam, est=est, valence=valence,
                abs_lam=np.sort(np.abs(np.linalg.eigvals(J)), 1)[:, ::-1])  # fmt: skip


def read_network(cfg: Config, params: dict, corpus: dict, seed: int) -> dict:
    """analyze() one trained network, started from its states on held-out documents."""
    test = corpus["tokens"][corpus["n_train"] :]
    hs, w = np.asarray(jax.jit(forward)(params, test)[1]), np.asarray(params["w_out"])
    visited = hs[test > 0]  # (states, S)
    pick = np.random.default_rng(seed).choice(len(visited), cfg.fp_seeds,
                                              len(visited) < cfg.fp_seeds)  # fmt: skip
    # PAD is never read (the state is frozen), so it has no valence
    valence = np.r_[np.nan, corpus["score"][1:, 0]] if corpus["score"].shape[1] == 1 else None
    out = analyze(Partial(cell_step, params["cell"]), params["emb"],
                  w[:, 1] - w[:, 0] if w.shape[1] == 2 else w[:, 0],
                  jnp.asarray(visited[pick]), valence, cfg, cfg.slow)  # fmt: skip
    return dict(out, traj=(hs[:40], test[:40] > 0, corpus["labels"][corpus["n_train"] :][:40]))


# %% [markdown]
# ## Follow-ups, and the run
# **Plane attractor** (Aitken et al.): three unordered classes need two numbers: fixed points on
# a plane (PC1+PC2 ≈ 1), *two* |λ| near 1. **Universality**: the four cells differ in geometry but
# share the mechanism (slow modes counted at |λ| > 0.95: other cells keep a 2nd mode near 0.93).
# The modifier corpus is left out. The paper's claims are qualitative: targets are the issue's.


# %%
def make_figure(binary, plane, table) -> plt.Figure:
    """Fig. 2 (trajectories, fixed points), spectra, |λ| along the line, valences, plane, cells."""
    fig, ax = plt.subplots(2, 3, figsize=(16, 9.5), layout="tight")
    for a, r, title in ((ax[0, 0], binary[0], "Binary: states and fixed points (cf. Fig. 2)"),
                        (ax[1, 0], plane[0], "3 classes: a plane (Aitken et al.)")):  # fmt: skip
        P = lambda z: (z - r["centroid"]) @ r["pcs"].T  # noqa: E731
        for h, m, y in zip(*r["traj"]):
            a.plot(*P(h[m]).T, color=f"C{y + 2}", lw=0.6, alpha=0.6)
            a.plot(*P(h[m][-1]), "o", color=f"C{y + 2}", ms=3)
        a.plot(*P(r["fps"]).T, "k.", ms=3, label="fixed points")
        a.set(xlabel="PC1 of the fixed points", ylabel="PC2", title=title)
    ax[0, 1].add_patch(plt.Circle((0, 0), 1, fill=False, ls=":", label="|λ| = 1"))
    for r, mk, name in ((binary[0], "o", "binary"), (plane[0], "x", "3 classes")):
        ax[0, 1].plot(r["lam"].real, r["lam"].imag, mk, ms=4, label=name)
    ax[0, 1].set(xlabel="Re λ", ylabel="Im λ", aspect="equal", title="Spectrum at the centre")
    for i, r in enumerate(binary):
        z = (r["fps"] - r["centroid"]) @ r["pcs"][0]
        ax[0, 2].plot(z, r["abs_lam"][:, 0], ".", z, r["abs_lam"][:, 1], "x", color=f"C{i}", ms=3)
    ax[0, 2].set(xlabel="position along the line (PC1)", ylabel="|λ|",
                 title="|λ1| (dots), |λ2| (crosses) at every fixed point")  # fmt: skip
    r, ok = binary[0], np.isfinite(binary[0]["valence"])
    ax[1, 1].plot(r["valence"][ok], r["est"][ok], "o", ms=4)
    ax[1, 1].set(xlabel="true valence (reference)", ylabel="l₁ᵀ J_x e_w",
                 title=f"Projected word valences, corr {r['valence_corr']:.3f}")  # fmt: skip
    x = np.arange(len(table))
    for k in (1, 2):
        ax[1, 2].bar(x + (k - 1.5) * 0.4, [r[f"lambda{k}_abs"] for r in table.values()], 0.4,
                     label=f"|λ{k}|")  # fmt: skip
    ax[1, 2].set(xticks=x, xticklabels=[f"{c}\nacc {r['accuracy']:.3f}" for c, r in table.items()],
                 ylabel="|λ| at the central fixed point", title="Universality")  # fmt: skip
    [a.legend(fontsize=7) for a in ax.flat[[0, 1, 3, 5]]]
    return fig


PAPER = {"title": "Reverse engineering recurrent networks for sentiment classification reveals "
         "line attractor dynamics", "url": "https://arxiv.org/abs/1906.10720", "reproduced":
         "Fig. 2, spectrum; plane (arXiv:2010.15114); universality (arXiv:1907.08549)"}  # fmt: skip
TARGETS = {"accuracy": "> 0.95", "fp_pc1_var": "> 0.85", "lambda1_abs": "within 0.05 of 1",
           "lambda2_abs": "< 0.85", "valence_corr": "> 0.95", "plane_pc12_var": "> 0.9",
           "plane_n_slow": "== 2", "source": "issue 5 (the paper is qualitative)"}  # fmt: skip
SCALARS = ("fp_count", "fp_pc1_var", "fp_pc12_var", "participation", "lambda1_abs", "lambda2_abs",
           "n_slow", "tau1", "tau2", "cos_r1_pc1", "cos_wout_pc1", "valence_corr")  # fmt: skip


def main(argv=None) -> dict:
    """Train, find fixed points, linearize: binary, 3-class and four cells. Save JSON + PNG."""
    p = utils.make_parser(
        "06_line_attractors",
        "Line attractors in sentiment RNNs (Maheswaranathan et al. 2019).",
    )
    p.add_argument("--data", metavar="FILE", help="CSV/TSV of text and 0/1 label")
    p.add_argument("--cell", choices=("gru", "lstm", "ugrnn", "vanilla"), help="main cell (gru)")
    p.add_argument("--steps", type=utils.positive_int, help="Adam steps (gated cells)")
    args = utils.parse_args(p, argv)
    given = {f: getattr(args, f) for f in ("cell", "steps") if getattr(args, f) is not None}
    cfg = replace(Config(**QUICK) if args.quick else Config(), **given)
    seeds = list(range(args.seed, args.seed + args.seeds))
    try:
        user = text_corpus(args.data, cfg, args.seed) if args.data else None
    except ValueError as e:
        p.error(str(e))
    utils.enable_compilation_cache()
    t0, compile_s, runs, table = time.perf_counter(), 0.0, {}, {}
    van = replace(cfg, hidden=cfg.vanilla[0])  # (config, steps, lr) per cell:
    hp = lambda c: (van, *cfg.vanilla[1:]) if c == "vanilla" else (cfg, cfg.steps, cfg.lr)  # noqa
    main_cfg, main_steps, main_lr = hp(cfg.cell)
    take = lambda tree, i: jax.tree_util.tree_map(lambda a: a[i], tree)  # noqa: E731
    for name, n_cls, steps in (("binary", 2, main_steps), ("3-class", 3, cfg.steps_3class)):
        corpora = [make_data(s, cfg, n_cls) if user is None or n_cls == 3 else user for s in seeds]
        prm, acc, c_s = fit(main_cfg, cfg.cell, corpora, seeds, steps, main_lr, name, t0)
        runs[name] = [read_network(cfg, take(prm, i), c, s)
                      for i, (c, s) in enumerate(zip(corpora, seeds))], acc, corpora[0]  # fmt: skip
        compile_s += c_s
    (binary, acc, corpus), (plane, acc3, _) = runs["binary"], runs["3-class"]
    for cell in dict.fromkeys((cfg.cell, *cfg.cells)):  # universality, on the first seed
        res, a, c_s = binary[0], acc, 0.0
        if cell != cfg.cell:
            prm, a, c_s = fit(hp(cell)[0], cell, [corpus], seeds[:1], *hp(cell)[1:], cell, t0)
            res = read_network(cfg, take(prm, 0), corpus, seeds[0])
        table[cell] = {"accuracy": float(a[0]), **{k: float(res[k]) for k in SCALARS},
                       "n_slow": int(np.sum(np.abs(res["lam"]) > 0.95))}  # fmt: skip
        compile_s += c_s
    run_s = time.perf_counter() - t0 - compile_s
    per = lambda rs, k: utils.summarize([float(r[k]) for r in rs])  # noqa: E731
    metrics = {"accuracy": utils.summarize(acc), **{k: per(binary, k) for k in SCALARS},
               "plane_accuracy": utils.summarize(acc3), "plane_pc12_var": per(plane, "fp_pc12_var"),
               **{f"plane_{k}": per(plane, k) for k in SCALARS[:-1]}}  # fmt: skip
    [utils.check_finite(m["per_seed"], k, "more steps or another seed") for k, m in metrics.items()]
    record = {"script": "06_line_attractors", "paper": PAPER, "config": asdict(cfg),
              "quick": args.quick, "seeds": seeds, "data": args.data or "synthetic",
              "valence_reference": "naive-Bayes log-count ratio" if user else "true valence",
              "metrics": metrics, "universality": table, "paper_values": TARGETS,
              "compile_s": compile_s, "run_s": run_s}  # fmt: skip
    fig = make_figure(binary, plane, table)
    utils.save_results(args.out, "06_line_attractors", record, fig)
    f = lambda k, d=3: f"{metrics[k]['mean']:.{d}f} ± {metrics[k]['std']:.{d}f}"  # noqa: E731
    print(f"06_line_attractors{' (quick)' * args.quick} ({cfg.cell}, {len(seeds)} seeds, compile "
          f"{compile_s:.0f} s, run {run_s:.0f} s): accuracy {f('accuracy')} (> 0.95); fixed-point "
          f"PC1 {f('fp_pc1_var')} (> 0.85); |λ1| {f('lambda1_abs')} (1), |λ2| {f('lambda2_abs')} "
          f"(< 0.85); valence corr {f('valence_corr')} (> 0.95); 3-class PC1+PC2 "
          f"{f('plane_pc12_var')} (> 0.9), slow modes {f('plane_n_slow', 1)} (2)")  # fmt: skip
    return record


if __name__ == "__main__":
    main()
