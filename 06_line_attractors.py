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
# [arXiv:1906.10720](https://arxiv.org/abs/1906.10720); follow-ups: Aitken et al. 2020 (three
# classes, a plane, [arXiv:2010.15114](https://arxiv.org/abs/2010.15114)), Maheswaranathan et al.
# 2019 (universality, [arXiv:1907.08549](https://arxiv.org/abs/1907.08549)), Maheswaranathan &
# Sussillo 2020 (modifier words, [arXiv:2004.08013](https://arxiv.org/abs/2004.08013)) and
# Aitken et al. 2021 (how encoder–decoder networks attend,
# [arXiv:2110.15253](https://arxiv.org/abs/2110.15253)).
#
# You will learn to read *how* a trained RNN classifies sentiment: find its fixed points by
# minimising a speed, linearize there, read eigenvalues and left/right eigenvectors. It sums
# word valences on an approximate **line attractor** (one |λ| ≈ 1, the rest fast), each word
# moving the state along the line by l₁ᵀJₓe_w; three classes give a **plane**; four cells share
# the mechanism. Then the same tools on two more networks: one that must read "not good" as
# −1 and "very good" as +2 (the modifier deflects the state off the line, and later words are
# read with another gain), and an encoder–decoder whose attention we split into temporal and
# input-driven parts.
#
# **Run:** `python 06_line_attractors.py` (about 2.5 min on 2 CPU cores with a cold compilation
# cache), `--quick` (under a minute), `--data FILE` for your own CSV/TSV of text and 0/1 label.
#
# **Expect** (full run, seeds 0–2, mean ± std, 143 s cold on 2 CPU cores; the 2019 paper is
# qualitative, the targets are the issue's, the modifier rule's and the follow-up papers'):
#
# | | ours | target |
# |---|---|---|
# | GRU test accuracy | 0.978 ± 0.002 | > 0.95 |
# | fixed points' PC1 variance share | 0.948 ± 0.003 | > 0.85 (a line) |
# | abs λ₁, abs λ₂ at the central fixed point | 1.03 ± 0.008, 0.746 ± 0.023 | ≈ 1, < 0.85 |
# | corr(l₁ᵀJₓe_w, true valence) | 0.997 ± 0.000 | > 0.95 |
# | 3 classes: PC1+PC2, slow modes | 0.968 ± 0.020, 2 | > 0.9, 2 (a plane) |
# | r_not: word 1–4 tokens after "not" / alone | −1.07 ± 0.01 | rule −1 |
# | r_not at lag 5, r_very | 0.96 ± 0.02, 1.96 ± 0.01 | rule +1, +2 |
# | wᵀJₓe_good on the line / after "not" | 0.91 ± 0.05 / −1.00 ± 0.05 | paper ≈ +1 / ≈ −1 |
# | attention: temporal–temporal share, one-to-one | 0.56 ± 0.05 (the largest term) | dominant |
# | … reversed | 0.48 ± 0.03: barely below one-to-one | set by the length |
# | … sorted | 0.05 ± 0.06: the one clear change | lower where words set the order |
#
# `--quick` (fewer documents and steps) gives the same picture with smaller margins; quote the
# full run's.


# %%
import csv
import io
import re
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import NamedTuple, Union

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from jax.tree_util import Partial

import utils

STEM = "06_line_attractors"


# %% [markdown]
# ## Configuration
# The paper trained on IMDB, Yelp and SST; the authors' runnable recipe (the `renn` notebook:
# GRU N = 256, E = 128, Adam 1e-3 decaying, batch 64) is beyond 2 CPU cores. Ours is smaller.


# %%
@dataclass(frozen=True)
class Config:
    """Defaults: our toy scale (shared/papers/06 §3); the paper's values in the comments."""

    # the binary corpus (ours; the paper used IMDB, Yelp, SST)
    n_pos: int = 10  # positive words, valence ~ U(val_lo, val_hi); as many negative ones
    n_neutral: int = 20  # neutral words, valence 0
    val_lo: float = 0.25  # smallest |valence| (Aitken's integer corpus uses 1 and 2)
    val_hi: float = 2.0  # largest |valence|
    p_neutral: float = 0.5  # chance that a position holds a neutral word
    len_min: int = 10  # document length ~ U{len_min, ..., len_max}
    len_max: int = 30  # (renn kept IMDB reviews up to 1000 tokens)
    n_train: int = 20_000  # training documents (ties dropped)
    n_test: int = 2_000  # held out: accuracy, and the visited states that seed the search
    per_class: int = 3  # 3-class corpus: evidence words per class and strength (1 and 2)
    # --data FILE
    max_vocab: int = 2_000  # words kept (the rest are UNK) ...
    max_len: int = 100  # ... and tokens kept per document
    min_test_docs: int = 20  # the held-out 10% must hold this many (accuracy in steps of 0.05)
    min_count: int = 5  # a word has a reference valence once seen this often
    min_words: int = 3  # words with a reference valence needed for the correlation
    # the classifiers
    cell: str = "gru"  # gru | lstm | ugrnn | vanilla
    hidden: int = 32  # N: hidden units; an LSTM's state [h; c] has 2N (renn: 256)
    embed: int = 32  # E: embedding size (renn: 128)
    steps: int = 600  # Adam steps, binary corpus
    steps_3class: int = 900  # Adam steps, 3-class corpus
    batch: int = 64  # documents per Adam step (renn: 64)
    lr: float = 3e-3  # η: Adam step, decays to η · lr_decay (renn: 1e-3, decaying)
    lr_decay: float = 0.1  # (ours)
    clip: float = 5.0  # global gradient-norm clip (ctd: "HUGELY important")
    vanilla_hidden: int = 64  # a vanilla RNN needs more units, steps and a smaller step
    vanilla_steps: int = 4_000  # (notes §5: lr 3e-3 collapses onto one saddle)
    vanilla_lr: float = 1e-3
    chunks: int = 3  # progress lines per training run
    # fixed points
    fp_seeds: int = 1024  # visited states that start the search (FPF's example: 1024)
    fp_lr: float = 1e-2  # Adam step of the search (renn: 0.01)
    fp_tol: float = 1e-5  # stop when mean q < fp_tol, keep q < 10 fp_tol (renn: 5e-5)
    fp_max_steps: int = 5_000  # (FPF: 5000; renn default 1000)
    unique_tol: float = 1e-3  # points closer than this are one fixed point (FPF: 1e-3)
    outlier_tol: float = 1.0  # drop points with no other point this close (ctd: 1.0)
    slow: float = 0.9  # |λ| above this is a slow mode: n_slow
    slow_universal: float = 0.95  # ... in the universality table: n_slow_095 (LSTM λ₂ ≈ 0.93)
    cells: tuple = ("gru", "ugrnn", "lstm", "vanilla")  # universality table, first seed
    # modifier words (Maheswaranathan & Sussillo 2020; the ctd toy in the comments)
    mod_docs: int = 10_000  # training documents per seed (ctd: 100k)
    mod_len: int = 25  # tokens per document (ctd: 50)
    mod_hidden: int = 32  # GRU units (ctd: 100)
    mod_steps: int = 2_000  # Adam steps (ctd: 40k batches of 128)
    mod_lr: float = 3e-3  # (ctd: 0.04 · 0.99995^t)
    p_valence: float = 0.35  # chance that a token is good, bad, awesome or awful
    p_not: float = 0.1  # ... "not" (never within 4 tokens of another "not")
    p_very: float = 0.1  # ... "very"; the rest are noise words
    probe_contexts: int = 16  # noise prefixes the probe phrases are averaged over
    # encoder-decoder attention (Aitken et al. 2021)
    att_vocab: int = 10  # input words (and as many output words)
    att_len: int = 10  # longest sentence (Aitken: about 10)
    att_len_min: int = 5  # shortest sentence
    att_hidden: int = 32  # GRU units of the encoder and of the decoder
    att_embed: int = 16  # embedding size
    att_steps: int = 1_500  # Adam steps
    att_lr: float = 1e-2  # Adam step, decaying by lr_decay
    att_eval: int = 512  # held-out sentences for the decomposition
    att_tasks: tuple = ("one_to_one", "reversed", "sorted")  # trained side by side (TASKS)


QUICK = dict(
    steps=360,
    steps_3class=480,
    n_train=5_000,
    n_test=1_000,
    fp_seeds=256,
    cells=("gru",),
    mod_docs=3_000,
    mod_steps=400,
    att_steps=300,
    att_eval=256,
)


# %% [markdown]
# ## The data: a synthetic sentiment corpus
# Token 0 is PAD. Word w has valence $v_w$ (continuous: a sharp test of the projected
# valences); a document's label is $y = \mathbb 1[\sum_t v_{w_t} > 0]$, ties dropped. In the
# 3-class corpus word w adds $s\,e_c$ (class c, strength s ∈ {1, 2}) to a score vector,
# $y = \arg\max_c$: the classes are *unordered*, which makes the attractor two-dimensional
# (Aitken et al.).


# %%
def make_data(seed: int, cfg: Config, n_classes: int = 2) -> dict:
    """n_train + n_test documents: tokens (n, len_max) int32, PAD = 0 after each length; labels
    (n,); score (V, K): each word's valence (K = 1) or class evidence (K = n_classes)."""
    rng = np.random.default_rng(seed)
    if n_classes == 2:
        magnitude = rng.uniform(cfg.val_lo, cfg.val_hi, 2 * cfg.n_pos)
        score = (np.r_[np.ones(cfg.n_pos), -np.ones(cfg.n_pos)] * magnitude)[:, None]
    else:
        strength = np.tile(np.repeat([1.0, 2.0], cfg.per_class), n_classes)[:, None]
        score = np.repeat(np.eye(n_classes), 2 * cfg.per_class, 0) * strength
    n_words, K = score.shape
    score = np.concatenate([np.zeros((1, K)), score, np.zeros((cfg.n_neutral, K))])  # (V, K)
    n_want = cfg.n_train + cfg.n_test
    T = cfg.len_max
    n = int(1.2 * n_want) + 100  # spare documents, since ties are dropped
    lengths = rng.integers(cfg.len_min, T + 1, n)
    neutral = rng.integers(n_words + 1, len(score), (n, T))
    evidence = rng.integers(1, n_words + 1, (n, T))
    tokens = np.where(rng.random((n, T)) < cfg.p_neutral, neutral, evidence)
    tokens[np.arange(T)[None] >= lengths[:, None]] = 0
    total = score[tokens].sum(1)  # (n, K)
    if n_classes == 2:
        labels = total[:, 0] > 0
        tie = total[:, 0] == 0
    else:
        labels = total.argmax(1)
        tie = (total == total.max(1, keepdims=True)).sum(1) > 1
    keep = np.flatnonzero(~tie)[:n_want]
    return dict(
        tokens=tokens[keep].astype(np.int32),
        labels=labels[keep].astype(np.int32),
        score=score,
        n_train=cfg.n_train,
    )


# %% [markdown]
# ## Your own text (`--data FILE`)
# CSV or TSV (by extension, or a tab on line 1) of text and 0/1 label, optional header;
# lower-cased words (runs of letters, digits and apostrophes, in any script), the `max_vocab`
# most frequent kept (others: UNK). The reference valence of a word is its naive-Bayes
# log-count ratio, for words seen at least `min_count` times. Everything is checked before any
# training, and a bad file stops with one line that names the line and the cause:
# not UTF-8, a wrong number of columns, a label other than 0/1, no word in a text, too few
# documents for a held-out test set, one label only, too few frequent words.


# %%
WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")  # letters and digits of any script, inner apostrophes


def decode_lines(path: str, raw: bytes) -> str:
    """The file as text; a ValueError names the first line that is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        byte = raw[error.start]
        raise ValueError(
            f"--data {path} line {line}: not UTF-8 (byte 0x{byte:02x} at column {column})"
        ) from None


def read_rows(path: str, text: str) -> tuple:
    """(word lists, labels) from CSV/TSV text; a ValueError names the offending line."""
    first = text.split("\n", 1)[0]
    delimiter = "\t" if path.endswith(".tsv") or "\t" in first else ","
    # newline="": rows end at \n or \r\n only, so a form feed inside a text stays in it
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    documents = []
    labels = []
    try:
        for row in rows:
            line = rows.line_num
            if not "".join(row).strip():
                continue  # a blank line
            if len(row) != 2:
                raise ValueError(
                    f"--data {path} line {line}: expected 2 columns (text, label 0 or 1), "
                    f"found {len(row)}"
                )
            label = row[1].strip()
            if line == 1 and label not in ("0", "1") and not label.isdigit():
                continue  # a header
            if label not in ("0", "1"):
                raise ValueError(f"--data {path} line {line}: label must be 0 or 1, got {label!r}")
            words = WORD.findall(row[0].lower())
            if not words:
                raise ValueError(
                    f"--data {path} line {line}: no word in the text (words are runs of "
                    f"letters or digits), got {row[0]!r:.40}"
                )
            documents.append(words)
            labels.append(int(label))
    except csv.Error as error:
        raise ValueError(f"--data {path} line {rows.line_num}: malformed row ({error})") from None
    return documents, labels


def text_corpus(path: str, cfg: Config, seed: int) -> dict:
    """A CSV/TSV file as a corpus like make_data's (shuffled, the last 10% held out), validated
    before any training: a ValueError says in one line what is wrong and where."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as error:
        raise ValueError(f"--data {path}: cannot read it ({error.strerror})") from None
    documents, labels = read_rows(path, decode_lines(path, raw))
    if labels and len(set(labels)) < 2:  # named first: more documents would not cure it
        raise ValueError(
            f"--data {path}: all {len(labels)} documents have label {labels[0]}; "
            "need both labels, 0 and 1"
        )
    need = 10 * cfg.min_test_docs
    if len(labels) < need:
        raise ValueError(
            f"--data {path}: need {need} documents or more (the held-out 10% must hold "
            f"{cfg.min_test_docs} to measure accuracy), found {len(labels)}"
        )
    documents = [words[: cfg.max_len] for words in documents]
    vocab, counts = np.unique(np.concatenate(documents), return_counts=True)
    frequent = int(np.sum(counts >= cfg.min_count))
    if frequent < cfg.min_words:
        raise ValueError(
            f"--data {path}: {frequent} words occur {cfg.min_count} times or more; the valence "
            f"check needs {cfg.min_words}"
        )
    top = vocab[np.argsort(-counts, kind="stable")][: cfg.max_vocab]
    index = {word: i + 2 for i, word in enumerate(top)}  # 0 = PAD, 1 = UNK
    labels = np.asarray(labels, np.int32)
    tokens = np.zeros((len(documents), max(map(len, documents))), np.int32)
    for d, words in enumerate(documents):
        tokens[d, : len(words)] = [index.get(w, 1) for w in words]
    pos = np.bincount(tokens[labels == 1].ravel(), minlength=len(top) + 2) + 1.0
    neg = np.bincount(tokens[labels == 0].ravel(), minlength=len(top) + 2) + 1.0
    ratio = np.log(pos / pos[2:].sum()) - np.log(neg / neg[2:].sum())  # naive-Bayes log ratio
    rare = pos + neg - 2 < cfg.min_count
    ratio[rare | (np.arange(len(ratio)) < 2)] = np.nan  # no reference: rare words, PAD, UNK
    order = np.random.default_rng(seed).permutation(len(documents))
    return dict(
        tokens=tokens[order],
        labels=labels[order],
        score=ratio[:, None],
        n_train=len(documents) - len(documents) // 10,
    )


# %% [markdown]
# ## The model: four recurrent cells and a masked scan
# $x_t = E[w_t]$ (learned embedding), $h_t = F(h_{t-1}, x_t)$, logits $= W_{out} h_T + b$:
# - vanilla: $h' = \tanh(Wx + Uh + b)$
# - UGRNN: $u = σ(W_u x + U_u h + b_u)$, $c = \tanh(W_c x + U_c h + b_c)$,
#   $h' = u⊙h + (1-u)⊙c$
# - GRU: adds a reset gate $r = σ(W_r x + U_r h + b_r)$, $c = \tanh(W_c x + U_c (r⊙h) + b_c)$
# - LSTM: state $[h; c]$, $c' = σ(f)⊙c + σ(i)⊙\tanh(g)$, $h' = σ(o)⊙\tanh(c')$, forget bias +1.
#
# A cell keeps its G gate blocks side by side in W (E, G·N), U (N, G·N), b (G·N); G (1–4) tells
# the cell type. PAD freezes the state: $h_t = m_t F(h_{t-1}, x_t) + (1 - m_t) h_{t-1}$.


# %%
GATES = {"vanilla": 1, "ugrnn": 2, "gru": 3, "lstm": 4}


def init_cell(key: jax.Array, cell: str, n_in: int, hidden: int) -> dict:
    """W (E, GN), U (N, GN), b (GN): fan-in normal weights, zero biases (LSTM forget bias 1)."""
    G = GATES[cell]
    k_w, k_u = jax.random.split(key)
    b = jnp.zeros(G * hidden)
    if cell == "lstm":
        b = b.at[np.arange(hidden, 2 * hidden)].set(1.0)
    return dict(
        W=jax.random.normal(k_w, (n_in, G * hidden)) / np.sqrt(n_in),
        U=jax.random.normal(k_u, (hidden, G * hidden)) / np.sqrt(hidden),
        b=b,
    )


def init_params(
    key: jax.Array, cfg: Config, cell: str, vocab: int, n_out: int, hidden: int = 0
) -> dict:
    """emb (V, E), cell {W, U, b}, w_out (N, n_out), b_out (n_out); N = hidden or cfg.hidden."""
    N = hidden or cfg.hidden
    k_e, k_c, k_o = jax.random.split(key, 3)
    return dict(
        emb=jax.random.normal(k_e, (vocab, cfg.embed)) / np.sqrt(cfg.embed),
        cell=init_cell(k_c, cell, cfg.embed, N),
        w_out=jax.random.normal(k_o, (N, n_out)) / np.sqrt(N),
        b_out=jnp.zeros(n_out),
    )


def cell_step(p: dict, h: jax.Array, x: jax.Array) -> jax.Array:
    """F(h, x): one step of the cell with weights p; h (..., S), x (..., E)."""
    N = p["U"].shape[0]
    G = p["U"].shape[1] // N
    if G == 1:
        return jnp.tanh(x @ p["W"] + h @ p["U"] + p["b"])
    if G == 4:
        i, f, g, o = jnp.split(x @ p["W"] + h[..., :N] @ p["U"] + p["b"], 4, -1)
        c = jax.nn.sigmoid(f) * h[..., N:] + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jnp.concatenate([jax.nn.sigmoid(o) * jnp.tanh(c), c], -1)
    zx = jnp.split(x @ p["W"] + p["b"], G, -1)
    U = jnp.split(p["U"], G, -1)
    u = jax.nn.sigmoid(zx[0] + h @ U[0])  # update gate
    if G == 3:
        h_read = jax.nn.sigmoid(zx[1] + h @ U[1]) * h  # the GRU's reset gate
    else:
        h_read = h
    return u * h + (1 - u) * jnp.tanh(zx[-1] + h_read @ U[-1])


def state_size(cell_params: dict) -> int:
    """S: N, or 2N for an LSTM's [h; c]."""
    N, GN = cell_params["U"].shape
    return 2 * N if GN == 4 * N else N


def run_rnn(F, emb: jax.Array, tokens: jax.Array, S: int, h0=None) -> tuple:
    """Masked scan of F(h, x) over tokens (B, T) from h0 (default 0): (h_T (B, S), states
    (B, T, S)); on PAD (token 0) the state is frozen."""

    def step(h, inputs):
        x, m = inputs  # x_t (B, E), m_t (B,)
        h = jnp.where(m[:, None], F(h, x), h)
        return h, h

    if h0 is None:
        h0 = jnp.zeros((tokens.shape[0], S), emb.dtype)
    hT, hs = jax.lax.scan(step, h0, (jnp.swapaxes(emb[tokens], 0, 1), tokens.T > 0))
    return hT, jnp.swapaxes(hs, 0, 1)


def forward(params: dict, tokens: jax.Array) -> tuple:
    """(logits (B, C), states (B, T, S)); the readout sees h only (of an LSTM's [h; c])."""
    F = Partial(cell_step, params["cell"])
    hT, hs = run_rnn(F, params["emb"], tokens, state_size(params["cell"]))
    N = params["cell"]["U"].shape[0]
    return hT[:, :N] @ params["w_out"] + params["b_out"], hs


# %% [markdown]
# ## Training: one `lax.scan` per chunk, vmapped over seeds
# A random batch, the loss, the gradient clipped to global norm ≤ `clip`, then Adam with step
# $\eta_t = \eta\cdot\text{decay}^{t/T}$, $t = 0, 1, \dots$ (`utils.adam` with that schedule).
# The classifiers use cross-entropy on the last state; with two classes the readout direction
# is $w = W_{out}[:, 1] - W_{out}[:, 0]$.


# %%
class TrainState(NamedTuple):
    params: dict
    opt: dict
    key: jax.Array


def make_step(cfg: Config, loss_fn, batch_fn, steps: int, lr: float):
    """step(state, data) -> (state, loss): one clipped, decaying Adam step on a fresh batch."""

    def schedule(t: jax.Array) -> jax.Array:
        return lr * cfg.lr_decay ** (t / steps)  # η_t = η · decay^(t/T)

    _, adam_update = utils.adam(schedule)

    def step(state: TrainState, data: dict) -> tuple:
        key, k_batch = jax.random.split(state.key)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch_fn(k_batch, data))
        grads, _ = utils.clip_by_global_norm(grads, cfg.clip)
        params, opt = adam_update(grads, state.opt, state.params)
        return TrainState(params, opt, key), loss

    return step


def report_loss(losses: np.ndarray) -> dict:
    """The progress line's numbers: the loss at a chunk's last step, averaged over networks."""
    return {"loss": float(np.mean(losses))}


def train(cfg: Config, step, params: dict, data: dict, keys, steps: int, label: str, t0: float):
    """Run `step` `steps` times for every network (leading axis of params, data and keys):
    returns (params, losses (networks, steps), compile seconds)."""
    adam_init, _ = utils.adam(0.0)  # Adam's state (m, v, t) does not depend on the rate
    state = TrainState(params, jax.vmap(adam_init)(params), keys)

    def run(state, data, num_steps):
        def one(s, d):
            return jax.lax.scan(lambda c, _: step(c, d), s, None, length=num_steps)

        return jax.vmap(one)(state, data)

    state, losses, compile_s = utils.run_chunked(
        run,
        state,
        (data,),
        steps=steps,
        chunks=cfg.chunks,
        label=label,
        t0=t0,
        report=report_loss,
        hint="a smaller learning rate or fewer --steps",
        step_axis=-1,
    )
    return state.params, losses, compile_s


def stack(trees: list):
    """A list of equal pytrees -> one pytree with a leading axis."""
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *trees)


def take(tree, i: int):
    """The i-th slice of every leaf."""
    return jax.tree_util.tree_map(lambda a: a[i], tree)


def sample_documents(batch: int, key: jax.Array, data: dict) -> dict:
    """`batch` random rows (the same ones) of every array in data."""
    size = jax.tree_util.tree_leaves(data)[0].shape[0]
    index = jax.random.randint(key, (batch,), 0, size)
    return jax.tree_util.tree_map(lambda a: a[index], data)


def classification_loss(params: dict, batch: dict) -> jax.Array:
    """Cross-entropy of the label given the last state."""
    logp = jax.nn.log_softmax(forward(params, batch["tokens"])[0])
    return -jnp.mean(jnp.take_along_axis(logp, batch["labels"][:, None], 1))


def accuracy(params: dict, data: dict) -> jax.Array:
    """Share of documents whose arg-max logit is the label."""
    return jnp.mean(jnp.argmax(forward(params, data["tokens"])[0], -1) == data["labels"])


def split(corpus: dict, field: str) -> tuple:
    """(training rows, test rows) of one array of a corpus."""
    n = corpus["n_train"]
    return corpus[field][:n], corpus[field][n:]


def fit(cfg, cell, corpora, seeds, steps, lr, label, t0) -> tuple:
    """Train one classifier per (seed, corpus), vmapped: (stacked params, test accuracy (S,),
    compile seconds). The last corpus["n_train"] rows on are the test set."""
    n_classes = int(max(c["labels"].max() for c in corpora)) + 1
    keys = [jax.random.split(jax.random.key(s)) for s in seeds]
    params = stack(
        [init_params(k[0], cfg, cell, len(c["score"]), n_classes) for k, c in zip(keys, corpora)]
    )
    fields = ("tokens", "labels")
    data = stack([{f: split(c, f)[0] for f in fields} for c in corpora])
    test = stack([{f: split(c, f)[1] for f in fields} for c in corpora])
    step = make_step(cfg, classification_loss, partial(sample_documents, cfg.batch), steps, lr)
    run_keys = jnp.stack([k[1] for k in keys])
    params, _, compile_s = train(cfg, step, params, data, run_keys, steps, label, t0)
    return params, np.asarray(jax.jit(jax.vmap(accuracy))(params, test)), compile_s


# %% [markdown]
# ## Fixed points: minimise the speed
# With no input ($x^* = 0$: the *absence* of a word, neither PAD nor a neutral word) a fixed
# point satisfies $F(h^*, 0) = h^*$. Find them by minimising
#
# $$q(h) = \tfrac12\lVert F(h, 0) - h\rVert^2,\qquad \nabla q = (J - I)^\top (F(h) - h),$$
#
# with Adam, jointly from many visited states. q = 0 at *every* fixed point: saddles and
# sources are found too. Stop once mean q < tol; keep q < 10·tol; merge points closer than
# `unique_tol` (keep the lower q); drop points with no neighbour within `outlier_tol`.
#
# > **Stopping early is the point.** Along an approximate line the speed $\sqrt{2q}$ is tiny
# > next to one word's push, but not zero. Converge fully and the slow points collapse onto a
# > few isolated fixed points; stop at a tolerance and they trace the line.


# %%
class SearchState(NamedTuple):
    h: jax.Array  # (M, S) candidate points
    m: jax.Array  # Adam's first moment
    v: jax.Array  # ... and second
    t: jax.Array  # steps taken
    mean_q: jax.Array  # mean speed at the last step


def speed(F, h: jax.Array) -> jax.Array:
    """q(h) = |F(h) - h|² / 2."""
    return 0.5 * jnp.sum((F(h) - h) ** 2)


@jax.jit
def _descend(F, h0s, tol, max_steps, lr):
    """Joint Adam on q(h_i) from h0s (M, S) until mean q < tol: (h, q (M,), steps)."""
    q_and_grad = jax.vmap(jax.value_and_grad(partial(speed, F)))

    def body(s: SearchState) -> SearchState:
        qs, g = q_and_grad(s.h)
        t = s.t + 1
        m = 0.9 * s.m + 0.1 * g
        v = 0.999 * s.v + 0.001 * g * g
        h = s.h - lr * m / (1 - 0.9**t) / (jnp.sqrt(v / (1 - 0.999**t)) + 1e-8)
        return SearchState(h, m, v, t, jnp.mean(qs))

    def going(s: SearchState) -> jax.Array:
        return (s.t < max_steps) & (s.mean_q >= tol)

    zeros = jnp.zeros_like(h0s)
    init = SearchState(h0s, zeros, zeros, jnp.zeros([], jnp.int32), jnp.asarray(jnp.inf, h0s.dtype))
    final = jax.lax.while_loop(going, body, init)
    return final.h, jax.vmap(partial(speed, F))(final.h), final.t


def dedupe(points: np.ndarray, q: np.ndarray, unique_tol: float) -> tuple:
    """Lowest q first, keep a point unless within unique_tol (2-norm) of one already kept."""
    kept = []
    for i in np.argsort(q, kind="stable"):
        if not kept or np.min(np.linalg.norm(points[kept] - points[i], axis=1)) > unique_tol:
            kept.append(i)
    kept = np.sort(kept)
    return points[kept], q[kept]


def drop_outliers(points: np.ndarray, outlier_tol: float) -> np.ndarray:
    """Mask of points whose nearest other point is within outlier_tol (all, if fewer than 2)."""
    squared = np.sum(points**2, 1)
    d2 = squared[:, None] + squared - 2 * points @ points.T  # (K, K)
    np.fill_diagonal(d2, np.inf)
    return (d2.min(1, initial=np.inf) <= outlier_tol**2) | (len(points) < 2)


def find_fixed_points(
    F,
    h0s,
    tol: float = 1e-5,
    max_steps: int = 5000,
    unique_tol: float = 1e-3,
    *,
    lr: float = 1e-2,
    keep_tol: Union[float, None] = None,
    outlier_tol: float = 1.0,
) -> tuple:
    """(fixed_points (K, N), q_values (K,)) of F: (N,) -> (N,) from starting states h0s (M, N):
    Adam on q until mean q < tol or max_steps; keep q < keep_tol (default 10 tol); dedupe at
    unique_tol; drop outliers. Pass F as a jax.tree_util.Partial to reuse one compilation."""
    F = F if isinstance(F, Partial) else Partial(F)
    h0s = jnp.asarray(h0s)
    dtype = h0s.dtype
    h, q, _ = _descend(F, h0s, jnp.asarray(tol, dtype), max_steps, jnp.asarray(lr, dtype))
    h = np.asarray(h)
    q = np.asarray(q)
    keep = np.isfinite(q) & (q < (10 * tol if keep_tol is None else keep_tol))
    h, q = dedupe(h[keep], q[keep], unique_tol)
    keep = drop_outliers(h, outlier_tol)
    return h[keep], q[keep]


# %% [markdown]
# > A check you can run in a second: $h' = \tanh(2h)$ in two dimensions has nine fixed points,
# > $\{0, \pm 0.9575\}^2$: four stable, four saddles and a source, and the search finds them all.

# %%
if utils.in_notebook():

    def demo_map(h):
        return jnp.tanh(2 * h)

    demo_starts = jax.random.uniform(jax.random.key(0), (64, 2), minval=-1.5, maxval=1.5)
    demo_points, _ = find_fixed_points(demo_map, demo_starts, 1e-12, 3000)
    print(np.round(demo_points[np.lexsort(demo_points.T)], 4))


# %% [markdown]
# ## Linearization, eigenvectors, time constants
# Near $(h^*, 0)$: $F(h^* + δh, δx) \approx h^* + J\,δh + J_x\,δx$, $J = ∂F/∂h$, $J_x = ∂F/∂x$.
# With $J = R\,Λ\,L^\top$, $L = (R^{-1})^\top$ (so $J r_a = λ_a r_a$, $l_a^\top J = λ_a l_a^\top$):
#
# $$δh_t = \sum_a r_a\big[λ_a^t\, l_a^\top δh_0 + \textstyle\sum_{s \le t} λ_a^{t-s} l_a^\top
#   J_x x_s\big],\qquad τ_a = 1/|\log|λ_a||\ \text{tokens}.$$
#
# On a line attractor $|λ_1| ≈ 1$, $|λ_{a>1}| \ll 1$: the state *sums* $l_1^\top J_x x_s$ along
# $r_1$, so word w's **valence** is $l_1^\top J_x e_w$ ($e_w$: its embedding). We use the
# *central* fixed point (nearest the centroid; the saturated ends of the line show extra slow
# modes).
#
# > J is not normal: the readout follows $r_1$ (where the state moves), not $l_1$ (what it
# > hears); we orient $r_1$ so that $w^\top r_1 > 0$. $|λ_1| ≈ 1.01$–$1.03$: a slowly unstable
# > line whose speed grows off-centre, so the kept slow points cover its middle; stable points
# > cap its ends.


# %%
@jax.jit
def _jacobians(F, hs, x):
    return jax.vmap(jax.jacfwd(F, argnums=(0, 1)), (0, None))(hs, x)


def linearize(F, h: jax.Array, x: jax.Array) -> tuple:
    """(J = ∂F/∂h (N, N), J_x = ∂F/∂x (N, E)) at (h, x); for h (K, N), stacked (K, ...)."""
    J, Jx = _jacobians(F if isinstance(F, Partial) else Partial(F), jnp.atleast_2d(h), x)
    if jnp.ndim(h) == 2:
        return J, Jx
    return J[0], Jx[0]


def linearize_padded(F, h: np.ndarray, x: jax.Array, rows: int) -> tuple:
    """linearize() at the K <= rows points h (K, N), padded with zeros to `rows` so that every
    call has one shape (one compilation); returns numpy (J (K, N, N), J_x (K, N, E))."""
    padded = np.concatenate([h, np.zeros((rows - len(h), h.shape[1]), h.dtype)])
    J, Jx = linearize(F, jnp.asarray(padded), x)
    return np.asarray(J)[: len(h)], np.asarray(Jx)[: len(h)]


def eig_sorted(J) -> tuple:
    """(λ (N,), R, L), sorted by |λ| descending, with J = R diag(λ) Lᵀ and LᵀR = I."""
    lam, R = np.linalg.eig(np.asarray(J, np.float64))
    order = np.argsort(-np.abs(lam), kind="stable")
    R = R[:, order]
    return lam[order], R, np.linalg.inv(R).T


def timescale(lam):
    """τ = 1/|log|λ||, in steps (inf at |λ| = 1)."""
    with np.errstate(divide="ignore"):
        return 1.0 / np.abs(np.log(np.abs(np.asarray(lam, np.complex128))))


def zero_input(F, x0, h):
    """F(h, x0): the autonomous map whose fixed points we look for."""
    return F(h, x0)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """|cos| of the angle between two vectors."""
    return float(abs(a @ b) / np.linalg.norm(a) / np.linalg.norm(b))


def analyze(F, emb, w_read, h_seed, valence, cfg: Config, slow: float) -> dict:
    """Fixed points and linearization of F(h, x) (a Partial) from h_seed (M, S). w_read: the
    readout on the first len(w_read) coordinates; valence (V,): a reference per word (NaN:
    none) or None."""
    x0 = jnp.zeros(emb.shape[1], h_seed.dtype)
    fps, _ = find_fixed_points(
        Partial(zero_input, F, x0),
        h_seed,
        cfg.fp_tol,
        cfg.fp_max_steps,
        cfg.unique_tol,
        lr=cfg.fp_lr,
        outlier_tol=cfg.outlier_tol,
    )
    if not len(fps):
        raise utils.Diverged("no fixed point found below tolerance; try a larger fp_tol")
    centroid = fps.mean(0)
    centred = fps - centroid
    _, s, Vt = np.linalg.svd(centred, full_matrices=False)
    var = s**2 / max(np.sum(s**2), 1e-30)  # PCA variance shares of the fixed points
    J, Jx = linearize_padded(F, fps, x0, len(h_seed))
    centre = int(np.argmin(np.linalg.norm(centred, axis=1)))
    lam, R, L = eig_sorted(J[centre])
    n = len(w_read)
    sign = np.sign(w_read @ R[:n, 0].real) or 1.0  # orient r1 so that wᵀr1 > 0
    r1 = sign * R[:, 0].real
    l1 = sign * L[:, 0].real
    est = np.asarray(emb) @ Jx[centre].T @ l1  # (V,): l₁ᵀ J_x e_w for every word
    abs_lam = np.r_[np.abs(lam), 0.0]
    tau = timescale(lam[:2])
    if valence is not None:
        ok = np.isfinite(valence)
        valence_corr = float(np.corrcoef(est[ok], valence[ok])[0, 1])
    else:
        valence_corr = float("nan")
    return dict(
        fp_count=len(fps),
        fp_pc1_var=var[0],
        fp_pc12_var=var[:2].sum(),
        participation=1 / np.sum(var**2),
        lambda1_abs=abs_lam[0],
        lambda2_abs=abs_lam[1],
        n_slow=int(np.sum(np.abs(lam) > slow)),
        n_slow_095=int(np.sum(np.abs(lam) > cfg.slow_universal)),
        tau1=min(tau[0], 1e6),
        tau2=tau[1],
        cos_r1_pc1=cosine(r1, Vt[0]),
        cos_wout_pc1=cosine(w_read, Vt[0][:n]),
        valence_corr=valence_corr,
        fps=fps,
        pcs=Vt[:2],
        centroid=centroid,
        lam=lam,
        est=est,
        valence=valence,
        abs_lam=np.sort(np.abs(np.linalg.eigvals(J)), 1)[:, ::-1],
    )


def read_network(cfg: Config, params: dict, corpus: dict, seed: int) -> dict:
    """analyze() one trained classifier, started from its states on held-out documents."""
    test = split(corpus, "tokens")[1]
    hs = np.asarray(jax.jit(forward)(params, test)[1])
    w = np.asarray(params["w_out"])
    visited = hs[test > 0]  # (states, S)
    pick = np.random.default_rng(seed).choice(
        len(visited), cfg.fp_seeds, replace=len(visited) < cfg.fp_seeds
    )
    if corpus["score"].shape[1] == 1:  # PAD is never read (the state is frozen): no valence
        valence = np.r_[np.nan, corpus["score"][1:, 0]]
    else:
        valence = None
    w_read = w[:, 1] - w[:, 0] if w.shape[1] == 2 else w[:, 0]
    F = Partial(cell_step, params["cell"])
    out = analyze(F, params["emb"], w_read, jnp.asarray(visited[pick]), valence, cfg, cfg.slow)
    labels = split(corpus, "labels")[1]
    return dict(out, traj=(hs[:40], test[:40] > 0, labels[:40]))


SCALARS = (
    "fp_count",
    "fp_pc1_var",
    "fp_pc12_var",
    "participation",
    "lambda1_abs",
    "lambda2_abs",
    "n_slow",
    "tau1",
    "tau2",
    "cos_r1_pc1",
    "cos_wout_pc1",
    "valence_corr",
)


def per_seed(reads: list, name: str) -> dict:
    """utils.summarize of one scalar over the networks read."""
    return utils.summarize([float(r[name]) for r in reads])


# %% [markdown]
# ## Experiment 1: a line attractor (Fig. 2)
# A GRU classifies the binary corpus (or your `--data`); we find its fixed points from 1024
# visited states, take their PCA, and linearize at the central one.


# %%
def cell_settings(cfg: Config, cell: str) -> tuple:
    """(config, Adam steps, learning rate) for a cell: a vanilla RNN gets its own."""
    if cell == "vanilla":
        return replace(cfg, hidden=cfg.vanilla_hidden), cfg.vanilla_steps, cfg.vanilla_lr
    return cfg, cfg.steps, cfg.lr


def line_attractor(cfg: Config, corpora: list, seeds: list, t0: float) -> dict:
    """Experiment: train the binary classifiers (one per seed), read each. Prints one line;
    returns the metrics, the networks read, the accuracies and the first network's params."""
    start = time.perf_counter()
    cell_cfg, steps, lr = cell_settings(cfg, cfg.cell)
    params, acc, compile_s = fit(cell_cfg, cfg.cell, corpora, seeds, steps, lr, "binary", t0)
    reads = [
        read_network(cfg, take(params, i), c, s) for i, (c, s) in enumerate(zip(corpora, seeds))
    ]
    metrics = {"accuracy": utils.summarize(acc), **{k: per_seed(reads, k) for k in SCALARS}}
    for name, metric in metrics.items():
        utils.check_finite(metric["per_seed"], name, "more --steps or another --seed")
    print(
        utils.summary_line(
            f"line attractor ({cfg.cell}, {len(seeds)} seeds)",
            [
                ("accuracy", metrics["accuracy"], "> 0.95"),
                ("fixed-point PC1", metrics["fp_pc1_var"], "> 0.85"),
                ("|λ1|", metrics["lambda1_abs"], "≈ 1"),
                ("|λ2|", metrics["lambda2_abs"], "< 0.85"),
                ("valence corr", metrics["valence_corr"], "> 0.95"),
            ],
            compile_s,
            time.perf_counter() - start - compile_s,
        )
    )
    return dict(metrics=metrics, reads=reads, accuracy=acc, compile_s=compile_s)


def plot_states(ax: plt.Axes, read: dict, title: str) -> None:
    """Panel: held-out trajectories (colour = label) and the fixed points, in their PC plane."""

    def project(z):
        return (z - read["centroid"]) @ read["pcs"].T

    for h, mask, y in zip(*read["traj"]):
        ax.plot(*project(h[mask]).T, color=f"C{y + 2}", lw=0.6, alpha=0.6)
        ax.plot(*project(h[mask][-1]), "o", color=f"C{y + 2}", ms=3)
    ax.plot(*project(read["fps"]).T, "k.", ms=3, label="fixed points")
    ax.set(xlabel="PC1 of the fixed points", ylabel="PC2", title=title)
    ax.legend(fontsize=7)


def plot_spectrum(ax: plt.Axes, binary: dict, plane: dict) -> None:
    """Panel: the eigenvalues at the central fixed point, binary and 3 classes."""
    ax.add_patch(plt.Circle((0, 0), 1, fill=False, ls=":", label="|λ| = 1"))
    for read, marker, name in ((binary, "o", "binary"), (plane, "x", "3 classes")):
        ax.plot(read["lam"].real, read["lam"].imag, marker, ms=4, label=name)
    ax.set(xlabel="Re λ", ylabel="Im λ", aspect="equal", title="Spectrum at the centre")
    ax.legend(fontsize=7)


def plot_along_line(ax: plt.Axes, reads: list) -> None:
    """Panel: |λ1| and |λ2| at every fixed point against its position along the line."""
    for i, read in enumerate(reads):
        z = (read["fps"] - read["centroid"]) @ read["pcs"][0]
        ax.plot(z, read["abs_lam"][:, 0], ".", color=f"C{i}", ms=3)
        ax.plot(z, read["abs_lam"][:, 1], "x", color=f"C{i}", ms=3)
    ax.set(xlabel="position along the line (PC1)", ylabel="|λ|")
    ax.set_title("|λ1| (dots), |λ2| (crosses) at every fixed point")


def plot_valences(ax: plt.Axes, read: dict, reference: str) -> None:
    """Panel: l₁ᵀJₓe_w against the reference valence of every word."""
    ok = np.isfinite(read["valence"])
    ax.plot(read["valence"][ok], read["est"][ok], "o", ms=4)
    ax.set(xlabel=f"{reference} valence", ylabel="l₁ᵀ J_x e_w")
    ax.set_title(f"Projected word valences, corr {read['valence_corr']:.3f}")


# %% [markdown]
# ## Experiment 2: three classes make a plane (Aitken et al. 2020)
# Three unordered classes need two numbers: the fixed points fill a plane (PC1+PC2 ≈ 1) and
# the central one has *two* |λ| near 1.


# %%
def plane_attractor(cfg: Config, seeds: list, t0: float) -> dict:
    """Experiment: the 3-class corpus, one GRU per seed. Prints one line; returns metrics."""
    start = time.perf_counter()
    corpora = [make_data(s, cfg, 3) for s in seeds]
    params, acc, compile_s = fit(
        cfg, "gru", corpora, seeds, cfg.steps_3class, cfg.lr, "3-class", t0
    )
    reads = [
        read_network(cfg, take(params, i), c, s) for i, (c, s) in enumerate(zip(corpora, seeds))
    ]
    metrics = {
        "plane_accuracy": utils.summarize(acc),
        "plane_pc12_var": per_seed(reads, "fp_pc12_var"),  # the first edition's name
    }
    metrics |= {f"plane_{k}": per_seed(reads, k) for k in SCALARS if k != "valence_corr"}
    print(
        utils.summary_line(
            f"plane attractor (3 classes, {len(seeds)} seeds)",
            [
                ("accuracy", metrics["plane_accuracy"], "> 0.95"),
                ("PC1+PC2", metrics["plane_fp_pc12_var"], "> 0.9"),
                ("slow modes", metrics["plane_n_slow"], "2"),
            ],
            compile_s,
            time.perf_counter() - start - compile_s,
        )
    )
    return dict(metrics=metrics, reads=reads, compile_s=compile_s)


# %% [markdown]
# ## Experiment 3: universality (Maheswaranathan et al. 2019)
# Four cells on the first seed's corpus: their geometry differs, the mechanism (one slow mode,
# valences read off l₁) does not. Slow modes are counted at |λ| > 0.95 here (`n_slow_095`):
# the LSTM keeps a second mode near 0.93.


# %%
def universality(cfg: Config, corpus: dict, seed: int, first: dict, t0: float) -> dict:
    """Experiment: each cell of cfg.cells on one corpus (the main cell reused from `first`,
    line_attractor's result). Prints one line; returns {cell: scalars} and compile seconds."""
    start = time.perf_counter()
    table = {}
    compile_s = 0.0
    for cell in dict.fromkeys((cfg.cell, *cfg.cells)):
        if cell == cfg.cell:
            read = first["reads"][0]
            acc = first["accuracy"][0]
        else:
            cell_cfg, steps, lr = cell_settings(cfg, cell)
            params, accs, seconds = fit(cell_cfg, cell, [corpus], [seed], steps, lr, cell, t0)
            compile_s += seconds
            read = read_network(cfg, take(params, 0), corpus, seed)
            acc = accs[0]
        keys = SCALARS + ("n_slow_095",)
        table[cell] = {"accuracy": float(acc), **{k: float(read[k]) for k in keys}}
    shown = ", ".join(
        f"{c} acc {r['accuracy']:.3f} |λ1| {r['lambda1_abs']:.3f} slow {r['n_slow_095']:.0f}"
        for c, r in table.items()
    )
    run_s = time.perf_counter() - start - compile_s
    print(
        f"universality (seed {seed}, |λ| > {cfg.slow_universal}): {shown} (paper: one slow mode "
        f"in every cell); compile {compile_s:.0f} s, run {run_s:.0f} s"
    )
    return dict(table=table, compile_s=compile_s)


def plot_universality(ax: plt.Axes, table: dict) -> None:
    """Panel: |λ1| and |λ2| at the central fixed point of every cell."""
    x = np.arange(len(table))
    for k in (1, 2):
        heights = [r[f"lambda{k}_abs"] for r in table.values()]
        ax.bar(x + (k - 1.5) * 0.4, heights, 0.4, label=f"|λ{k}|")
    labels = [f"{c}\nacc {r['accuracy']:.3f}" for c, r in table.items()]
    ax.set(xticks=x, xticklabels=labels, ylabel="|λ| at the central fixed point")
    ax.set_title("Universality")
    ax.legend(fontsize=7)


# %% [markdown]
# ## Modifier words: "not" and "very" (Maheswaranathan & Sussillo 2020)
# The authors' toy: noise words (and, a, the, for, it, while) add nothing; good +1, bad −1,
# awesome +2, awful −2; **"not" flips the valence of the next 4 tokens** and **"very" doubles
# the next one**. The target at every step $t$ is the cumulative valence
#
# $$y_t = \sum_{s \le t} (-1)^{n_s}\, g_s\, v_{w_s},\qquad n_s = \#\{\text{"not" in } s-4, …,
#   s-1\},\quad g_s = 2 \text{ if } w_{s-1} = \text{"very" else } 1,$$
#
# and the network (a GRU with a linear readout $\hat y_t = w^\top h_t + b$) is trained on the
# mean squared error at every step. A word's valence can no longer be a fixed vector added to
# a line: the network must read "good" as −1 for four tokens after "not".
#
# > A second "not" inside the window flips back (signs multiply); the corpus never has one
# > there (as in the authors' toy), the rule below still says what it would mean.


# %%
MOD_WORDS = tuple("<pad> and a the for it while good bad awesome awful not very".split())
MOD_ID = {word: i for i, word in enumerate(MOD_WORDS)}
NOISE_IDS = (1, 7)  # ids [1, 7) are noise words
VALENCE_IDS = (7, 11)  # ids [7, 11) are valence words
VALENCE = {"good": 1.0, "bad": -1.0, "awesome": 2.0, "awful": -2.0}
NOT_SPAN = 4  # "not" flips the next 4 tokens
VERY_GAIN = 2.0  # "very" doubles the next one


def modifier_targets(tokens: list) -> np.ndarray:
    """The cumulative valence after every word of `tokens` (strings) by the rule: each "not"
    flips the sign of the next 4 tokens, "very" doubles the next one; any word other than the
    four valence words adds nothing. Returns float32 (len(tokens),)."""
    total = 0.0
    out = []
    for t, word in enumerate(tokens):
        nots = sum(1 for s in range(max(0, t - NOT_SPAN), t) if tokens[s] == "not")
        gain = VERY_GAIN if t > 0 and tokens[t - 1] == "very" else 1.0
        total += (-1.0) ** nots * gain * VALENCE.get(word, 0.0)
        out.append(total)
    return np.asarray(out, np.float32)


def cumulative_valence(ids: np.ndarray) -> np.ndarray:
    """modifier_targets for a batch of id sequences (n, T), vectorised."""
    T = ids.shape[1]
    valence = np.array([VALENCE.get(w, 0.0) for w in MOD_WORDS])[ids]
    is_not = ids == MOD_ID["not"]
    nots = sum(np.pad(is_not, ((0, 0), (k, 0)))[:, :T] for k in range(1, NOT_SPAN + 1))
    after_very = np.pad(ids == MOD_ID["very"], ((0, 0), (1, 0)))[:, :T]
    signed = (-1.0) ** nots * np.where(after_very, VERY_GAIN, 1.0) * valence
    return np.cumsum(signed, 1).astype(np.float32)


def modifier_corpus(seed: int, cfg: Config, n_docs: int) -> dict:
    """n_docs documents of cfg.mod_len tokens: tokens (n, T) int32 (ids into MOD_WORDS) and
    targets (n, T) float32, the cumulative valence at every step."""
    rng = np.random.default_rng(seed)
    shape = (n_docs, cfg.mod_len)
    p_noise = 1 - cfg.p_valence - cfg.p_not - cfg.p_very
    kind = rng.choice(4, size=shape, p=[p_noise, cfg.p_valence, cfg.p_not, cfg.p_very])
    noise = rng.integers(*NOISE_IDS, shape)
    valence = rng.integers(*VALENCE_IDS, shape)
    ids = np.select(
        [kind == 0, kind == 1, kind == 2], [noise, valence, MOD_ID["not"]], MOD_ID["very"]
    )
    last_not = np.full(n_docs, -NOT_SPAN - 1)
    for t in range(cfg.mod_len):  # no "not" within 4 tokens of another (the authors' toy)
        clash = (ids[:, t] == MOD_ID["not"]) & (t - last_not <= NOT_SPAN)
        ids[clash, t] = noise[clash, t]
        last_not = np.where(ids[:, t] == MOD_ID["not"], t, last_not)
    return dict(tokens=ids.astype(np.int32), targets=cumulative_valence(ids))


def readout(params: dict, tokens: jax.Array) -> tuple:
    """(ŷ_t = wᵀh_t + b at every step (B, T), states (B, T, N)) of a modifier network."""
    _, hs = forward(params, tokens)
    return (hs @ params["w_out"])[..., 0] + params["b_out"][0], hs


def regression_loss(params: dict, batch: dict) -> jax.Array:
    """Mean squared error of ŷ_t against the cumulative valence, over every step."""
    return jnp.mean((readout(params, batch["tokens"])[0] - batch["targets"]) ** 2)


# %% [markdown]
# > The rule on three phrases: "not good" ends at −1, "very awesome" at 4, and "good" five
# > tokens after "not" counts +1 again.

# %%
if utils.in_notebook():
    for phrase in ("not good", "very awesome", "not the the the the good"):
        print(f"{phrase!r}: {modifier_targets(phrase.split())}")


# %% [markdown]
# ### Measuring the modifiers' effect, and its mechanism
# **Ratios.** After a noise prefix, the readout change caused by a valence word w,
# $Δ(w) = \hat y_t - \hat y_{t-1}$, is compared with the same word alone:
# $r_{not}(k) = Δ(\text{"not"}, k-1 \text{ noise words}, w) / Δ(w)$ (exact rule: −1 for
# k = 1…4, +1 for k = 5) and $r_{very} = Δ(\text{"very"}, w)/Δ(w)$ (rule: 2); averaged over
# `probe_contexts` prefixes, then over the four words. `r_not` is the mean over k = 1…4.
#
# **Mechanism.** Let $h^*$ be the fixed point nearest the state after the noise prefix and
# $h_{not} = F(h^*, e_{not})$. The linearised readout change of "good" is
# $w^\top J_x(h)\,e_{good}$: ≈ +1 at $h^*$ and, if "not" works by moving the state where
# inputs are read with another gain, ≈ −1 at $h_{not}$ (the paper's finding). We also follow
# the distance from the nearest fixed point token by token after a modifier, and expand
# $δh = h_{not} - h^*$ in the eigenmodes of $J(h^*)$: $c_a = l_a^\top δh$; the mode with the
# largest $|c_a|\,\lVert r_a\rVert$ (other than the line) is the one "not" excites, and its
# $|λ_a|$ says how long the effect should last.
#
# **Probe phrases.** From $h^*$, each phrase is run through the network; the exact readout
# change is compared with the rule's target and with the linearised sum
# $\sum_t w^\top J_x(h_{t-1})\,e_{w_t}$ along the exact trajectory.


# %%
PROBE_WORDS = ("good", "bad", "awesome", "awful")
PROBE_LAGS = (1, 2, 3, 4, 5)
PHRASES = (
    "good",
    "awesome",
    "very good",
    "very awesome",
    "not good",
    "not awful",
    "not the the the the good",
)


def probe_documents(cfg: Config, seed: int) -> tuple:
    """The probe documents as ids (n, L) and, per (context, kind, word), the position of the
    valence word; kinds: alone, not at lags 1..5, very. Returns (ids, positions, kinds)."""
    rng = np.random.default_rng(seed)
    kinds = ["alone"] + [f"not{k}" for k in PROBE_LAGS] + ["very"]
    prefix_len = 4
    length = prefix_len + 1 + max(PROBE_LAGS)
    docs = []
    positions = []
    for _ in range(cfg.probe_contexts):
        prefix = list(rng.integers(*NOISE_IDS, prefix_len))
        fill = list(rng.integers(*NOISE_IDS, max(PROBE_LAGS)))
        for kind in kinds:
            if kind == "alone":
                middle = []
            elif kind == "very":
                middle = [MOD_ID["very"]]
            else:
                middle = [MOD_ID["not"]] + fill[: int(kind[3:]) - 1]
            for word in PROBE_WORDS:
                doc = prefix + middle + [MOD_ID[word]]
                positions.append(len(doc) - 1)
                docs.append(doc + [MOD_ID["the"]] * (length - len(doc)))
    ids = np.array(docs, np.int32).reshape(cfg.probe_contexts, len(kinds), len(PROBE_WORDS), -1)
    positions = np.array(positions).reshape(ids.shape[:3])
    return ids, positions, kinds


def modifier_ratios(params: dict, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Per kind of probe, Δ(kind, w) / Δ(w alone) averaged over contexts, then over words: (K,)."""
    flat = ids.reshape(-1, ids.shape[-1])
    y = np.asarray(jax.jit(readout)(params, jnp.asarray(flat))[0]).reshape(ids.shape)
    at = np.take_along_axis(y, positions[..., None], -1)[..., 0]
    before = np.take_along_axis(y, positions[..., None] - 1, -1)[..., 0]
    change = (at - before).mean(0)  # (kinds, words)
    return (change / change[0]).mean(1)


def trajectory(F, emb: np.ndarray, h: np.ndarray, words: list) -> np.ndarray:
    """States (len(words) + 1, N) visited from h when `words` are read one by one."""
    states = [h]
    for word in words:
        states.append(np.asarray(F(jnp.asarray(states[-1]), emb[MOD_ID[word]])))
    return np.stack(states)


def nearest_distance(points: np.ndarray, fps: np.ndarray) -> np.ndarray:
    """Distance from each point (K, N) to the nearest fixed point."""
    return np.min(np.linalg.norm(points[:, None] - fps[None], axis=-1), 1)


def modifier_mechanism(cfg: Config, params: dict, corpus: dict, ids: np.ndarray, seed: int):
    """Fixed points of one modifier network, the linearised gains at h* and after a modifier,
    the distance from the fixed points after it, the modes it excites, the probe phrases."""
    F = Partial(cell_step, params["cell"])
    emb = np.asarray(params["emb"])
    w = np.asarray(params["w_out"])[:, 0]
    x0 = jnp.zeros(emb.shape[1])
    visited = np.asarray(jax.jit(readout)(params, jnp.asarray(corpus["tokens"]))[1])
    visited = visited.reshape(-1, visited.shape[-1])
    pick = np.random.default_rng(seed).choice(len(visited), cfg.fp_seeds, replace=False)
    fps, _ = find_fixed_points(
        Partial(zero_input, F, x0),
        jnp.asarray(visited[pick]),
        cfg.fp_tol,
        cfg.fp_max_steps,
        cfg.unique_tol,
        lr=cfg.fp_lr,
        outlier_tol=cfg.outlier_tol,
    )
    if not len(fps):
        raise utils.Diverged("modifier network: no fixed point found; try a larger fp_tol")
    var = np.linalg.svd(fps - fps.mean(0), compute_uv=False) ** 2
    prefix = [MOD_WORDS[i] for i in ids[0, 0, 0, :4]]  # the first probe context
    h_prefix = trajectory(F, emb, np.zeros(len(w), np.float32), prefix)[-1]
    h_star = fps[np.argmin(np.linalg.norm(fps - h_prefix, axis=1))]
    after = {m: trajectory(F, emb, h_star, [m] + ["the"] * 10) for m in ("not", "very")}
    distance = {m: nearest_distance(states, fps) for m, states in after.items()}
    phrases = [p.split() for p in PHRASES]
    paths = [trajectory(F, emb, h_star, words) for words in phrases]
    points = np.concatenate([h_star[None], after["not"][1:2], after["very"][1:2]] + paths)
    J, Jx = linearize_padded(F, points, x0, cfg.fp_seeds)
    gain = w @ Jx @ emb[MOD_ID["good"]]  # (points,): wᵀ J_x(h) e_good
    lam, R, L = eig_sorted(J[0])
    excited = {}
    for m in ("not", "very"):
        size = np.abs(L.T @ (after[m][1] - h_star)) * np.linalg.norm(R, axis=0)
        excited[m] = 1 + int(np.argmax(size[1:]))  # the largest mode other than the line's
    rows = []
    offset = 3
    for words, path, phrase in zip(phrases, paths, PHRASES):
        Jx_path = Jx[offset:][: len(words)]
        offset += len(path)
        linear = sum(w @ Jx_path[t] @ emb[MOD_ID[word]] for t, word in enumerate(words))
        exact = w @ (path[-1] - path[0])
        rows.append((phrase, float(modifier_targets(words)[-1]), float(exact), float(linear)))
    peak = distance["not"].max()
    return dict(
        fp_pc1_var=var[0] / var.sum(),
        lambda1_abs=np.abs(lam[0]),
        gain_line=gain[0],
        gain_not=gain[1],
        gain_very=gain[2],
        distance=distance,
        not_tokens_away=int(np.sum(distance["not"][1:] > peak / 2)),
        not_mode_abs=np.abs(lam[excited["not"]]),
        not_mode_complex=float(abs(lam[excited["not"]].imag) > 1e-6),
        not_mode_tau=min(float(timescale(lam[excited["not"]])), 1e6),
        very_mode_abs=np.abs(lam[excited["very"]]),
        lam=lam,
        phrases=rows,
    )


# %% [markdown]
# ## Experiment 4: contextual processing of "not" and "very"
# On its own networks (the line-attractor headline is *not* claimed for them: with modifiers
# the fixed points spread off the line, a prototype's PC1 share fell to 0.50–0.59).


# %%
MODIFIER_METRICS = {
    "fp_pc1_var": "mod_fp_pc1_var",
    "lambda1_abs": "mod_lambda1_abs",
    "gain_line": "lin_gain_good_line",
    "gain_not": "lin_gain_good_after_not",
    "gain_very": "lin_gain_good_after_very",
    "not_tokens_away": "not_tokens_away",
    "not_mode_abs": "not_mode_abs",
    "not_mode_complex": "not_mode_complex",
    "not_mode_tau": "not_mode_tau",
    "very_mode_abs": "very_mode_abs",
}


def contextual_processing(cfg: Config, seeds: list, t0: float) -> dict:
    """Experiment: one modifier GRU per seed trained on the cumulative valence; the ratios
    r_not and r_very, the linearised mechanism, the probe phrases. Prints one line; returns
    the metrics and what the panels need."""
    start = time.perf_counter()
    corpora = [modifier_corpus(s, cfg, cfg.mod_docs) for s in seeds]
    keys = [jax.random.split(jax.random.fold_in(jax.random.key(s), MODIFIER_STREAM)) for s in seeds]
    params = stack([init_params(k[0], cfg, "gru", len(MOD_WORDS), 1, cfg.mod_hidden) for k in keys])
    data = stack(corpora)
    batch = partial(sample_documents, cfg.batch)
    step = make_step(cfg, regression_loss, batch, cfg.mod_steps, cfg.mod_lr)
    run_keys = jnp.stack([k[1] for k in keys])
    params, _, compile_s = train(cfg, step, params, data, run_keys, cfg.mod_steps, "modifiers", t0)
    held_out = [modifier_corpus(s + HELD_OUT_SEED, cfg, 500) for s in seeds]
    ids, positions, kinds = probe_documents(cfg, seeds[0] + HELD_OUT_SEED)
    ratios = []
    mse = []
    reads = []
    for i, seed in enumerate(seeds):
        p = take(params, i)
        ratios.append(modifier_ratios(p, ids, positions))
        y = np.asarray(jax.jit(readout)(p, jnp.asarray(held_out[i]["tokens"]))[0])
        mse.append(np.mean((y - held_out[i]["targets"]) ** 2))
        reads.append(modifier_mechanism(cfg, p, held_out[i], ids, seed))
    ratios = np.array(ratios)  # (seeds, kinds)
    metrics = {
        "mod_mse": utils.summarize(mse),
        "r_not": utils.summarize(ratios[:, 1:5].mean(1)),
        "r_not_lag5": utils.summarize(ratios[:, 5]),
        "r_very": utils.summarize(ratios[:, 6]),
        **{f"r_not_lag{k}": utils.summarize(ratios[:, k]) for k in (1, 2, 3, 4)},
        **{name: per_seed(reads, key) for key, name in MODIFIER_METRICS.items()},
    }
    for name, metric in metrics.items():
        utils.check_finite(metric["per_seed"], name, "more --steps or another --seed")
    phrases = [
        (
            row[0][0],
            row[0][1],
            float(np.mean([r[2] for r in row])),
            float(np.mean([r[3] for r in row])),
        )
        for row in zip(*[read["phrases"] for read in reads])
    ]
    print(
        utils.summary_line(
            f"modifiers (GRU-{cfg.mod_hidden}, {len(seeds)} seeds, test MSE "
            f"{metrics['mod_mse']['mean']:.3f})",
            [
                ("r_not lags 1-4", metrics["r_not"], "rule −1"),
                ("r_not lag 5", metrics["r_not_lag5"], "rule +1"),
                ("r_very", metrics["r_very"], "rule +2"),
                ("wᵀJₓ(h_not)e_good", metrics["lin_gain_good_after_not"], "paper ≈ −1"),
                ("wᵀJₓ(h*)e_good", metrics["lin_gain_good_line"], "paper ≈ +1"),
            ],
            compile_s,
            time.perf_counter() - start - compile_s,
        )
    )
    table = "; ".join(
        f"{p}: {target:+.0f} exact {e:+.2f} linear {lin:+.2f}" for p, target, e, lin in phrases
    )
    print(
        f'  after "not" the state stays over half its peak distance from the fixed points for '
        f"{metrics['not_tokens_away']['mean']:.1f} tokens (its window: {NOT_SPAN}); the mode it "
        f"excites most has |λ| {metrics['not_mode_abs']['mean']:.2f} (τ "
        f"{metrics['not_mode_tau']['mean']:.1f} tokens, complex in "
        f"{metrics['not_mode_complex']['mean']:.0%} of seeds); \"very\"'s: |λ| "
        f"{metrics['very_mode_abs']['mean']:.2f}"
    )
    print(f"  probe phrases (target, network, linearised; mean over seeds): {table}")
    return dict(
        metrics=metrics,
        ratios=ratios,
        kinds=kinds,
        reads=reads,
        phrases=phrases,
        compile_s=compile_s,
    )


def plot_modifier_ratios(ax: plt.Axes, result: dict) -> None:
    """Panel: the readout change of a valence word after "not" (lags 1-5) and "very", relative
    to the word alone, against the rule's value."""
    ratios = result["ratios"][:, 1:]
    labels = [f"not, lag {k}" for k in PROBE_LAGS] + ["very"]
    rule = [-1.0] * 4 + [1.0, 2.0]
    x = np.arange(len(labels))
    ax.bar(x, ratios.mean(0), yerr=ratios.std(0), capsize=3, color="C0", label="ours")
    ax.plot(x, rule, "k_", ms=20, mew=2, label="rule")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xticks=x, ylabel="Δ readout / Δ readout of the word alone")
    ax.set_xticklabels(labels, rotation=30, fontsize=7)
    ax.set_title("Modifiers: r_not and r_very (cf. Maheswaranathan & Sussillo 2020)")
    ax.legend(fontsize=7)


def plot_modifier_distance(ax: plt.Axes, result: dict) -> None:
    """Panel: distance from the nearest fixed point after "not" / "very", token by token."""
    for i, read in enumerate(result["reads"]):
        for word, style in (("not", "-"), ("very", "--")):
            label = f'after "{word}"' if i == 0 else None
            ax.plot(read["distance"][word], style, color=f"C{i}", label=label)
    ax.axvline(NOT_SPAN + 0.5, color="k", ls=":", lw=1, label='end of "not"\'s window')
    ax.set(xlabel="tokens after the modifier (then noise words)", ylabel="distance to nearest fp")
    ax.set_title("The modifier deflects the state off the fixed points")
    ax.legend(fontsize=7)


# %% [markdown]
# ## How encoder–decoder networks attend (Aitken et al. 2021)
# A GRU encoder reads $x_1…x_L$ (states $h_s$); a GRU decoder, started from $h_L$ and fed
# the previous output word (teacher forcing; a start word first), has states $d_t$; dot-product
# attention $α_{ts} = \mathrm{softmax}_s(d_t^\top h_s)$ over the real words gives the context
# $c_t = \sum_s α_{ts} h_s$, and the word is read out from $[d_t; c_t]$. The toy: word $i$
# translates to word $i$ of another vocabulary, lengths 5–10. **One-to-one**: $y_t = x_t$;
# **reversed**: $y_t = x_{L+1-t}$ (the alignment depends on the length $L$, which only the
# sentence knows); **sorted**: the words in ascending order (the alignment depends on the
# words themselves). The decoder's input word $u_t$ is the previous target word.
#
# **Decomposition.** Over a batch, the temporal part $μ_t$ is the mean state at step t, the
# input-driven part $χ_x$ the mean of $h - μ_t$ over the occurrences of word x, and the rest
# $Δ = h - μ_t - χ_x$. The score splits into nine cross terms,
#
# $$d_t^\top h_s = (μ^D_t + χ^D_{u_t} + Δ^D_t)^\top(μ^E_s + χ^E_{x_s} + Δ^E_s),$$
#
# and we report each term's share of the score at the alignment the network chooses
# ($s^* = \arg\max_s α_{ts}$). The paper: for one-to-one tasks the temporal–temporal term
# dominates, so the attention is diagonal whatever the words; where the alignment depends on
# the sentence, the other terms must carry it.


# %%
TASKS = ("one_to_one", "reversed", "sorted")  # the alignment: t, L - 1 - t, by the words
ATTENTION_CLAIMS = {  # what the paper leads us to expect of the temporal-temporal share
    "one_to_one": "paper: dominant",
    "reversed": "set by the length",
    "sorted": "set by the words: lower",
}
TERMS = tuple(
    f"{d}-{e}" for d in ("temporal", "input", "delta") for e in ("temporal", "input", "delta")
)


def decompose(states: np.ndarray, tokens: np.ndarray) -> tuple:
    """(μ, χ, Δ) of states (B, T, n), each (B, T, n): μ the mean over the batch at each step,
    χ the mean of states - μ over the occurrences of each token, Δ the rest."""
    states = np.asarray(states, np.float64)
    n = states.shape[-1]
    mu = np.broadcast_to(states.mean(0), states.shape)
    resid = states - mu
    ids, inverse = np.unique(np.asarray(tokens), return_inverse=True)
    inverse = inverse.reshape(-1)
    sums = np.zeros((len(ids), n))
    np.add.at(sums, inverse, resid.reshape(-1, n))
    chi = (sums / np.bincount(inverse)[:, None])[inverse].reshape(states.shape)
    return mu, chi, resid - chi


def attention_terms(enc_states, dec_states, enc_tokens, dec_tokens) -> np.ndarray:
    """The nine cross terms (9, B, T_dec, T_enc) of the dot-product scores dec_states @
    enc_statesᵀ, ordered decoder part × encoder part (temporal, input, delta each): their sum
    over the first axis is the full score. States (B, T, n); tokens (B, T) integer ids."""
    dec_parts = decompose(dec_states, dec_tokens)
    enc_parts = decompose(enc_states, enc_tokens)
    return np.stack([np.einsum("btn,bsn->bts", d, e) for d in dec_parts for e in enc_parts])


def term_shares(terms: np.ndarray, valid_dec: np.ndarray, valid_enc: np.ndarray) -> tuple:
    """Each term's share of the score at the chosen alignment s* (the largest score over the
    real encoder words), pooled over real decoder steps: (shares (9,), margin shares (9,)). The
    margin share is the term's share of score(s*) minus the mean score over the other words."""
    score = terms.sum(0)  # (B, T_dec, T_enc)
    masked = np.where(valid_enc[:, None, :], score, -np.inf)
    chosen = masked.argmax(-1)  # (B, T_dec)
    at = np.take_along_axis(terms, chosen[None, ..., None], -1)[..., 0]  # (9, B, T_dec)
    others = valid_enc[:, None, :] & (np.arange(score.shape[-1]) != chosen[..., None])
    mean_others = (terms * others).sum(-1) / np.maximum(others.sum(-1), 1)
    at = at[:, valid_dec]
    margin = (at - mean_others[:, valid_dec]).sum(1)
    return at.sum(1) / at.sum(), margin / margin.sum()


class Translation(NamedTuple):
    x: jax.Array  # (B, T) source words, PAD = 0 after the length
    u: jax.Array  # (B, T) decoder inputs: START, y_1, ..., y_{L-1}
    y: jax.Array  # (B, T) target words
    source: jax.Array  # (B, T) the aligned source position of every target step
    valid: jax.Array  # (B, T) steps before the length


def translation_batch(cfg: Config, batch: int, key: jax.Array, data: dict) -> Translation:
    """Random sentences of the toy; data["task"] (an index into TASKS) selects the task."""
    k_words, k_length = jax.random.split(key)
    T = cfg.att_len
    t = jnp.arange(T)
    length = jax.random.randint(k_length, (batch, 1), cfg.att_len_min, T + 1)
    valid = t[None] < length
    x = jnp.where(valid, jax.random.randint(k_words, (batch, T), 1, cfg.att_vocab + 1), 0)
    sources = jnp.stack(
        [
            jnp.broadcast_to(t, (batch, T)),  # one-to-one
            length - 1 - t[None],  # reversed
            jnp.argsort(jnp.where(valid, x, cfg.att_vocab + 1), axis=1, stable=True),  # sorted
        ]
    )
    source = jnp.where(valid, sources[data["task"]], 0)
    y = jnp.where(valid, jnp.take_along_axis(x, source, 1), 0)
    start = jnp.full((batch, 1), cfg.att_vocab + 1)
    u = jnp.where(valid, jnp.concatenate([start, y[:, :-1]], 1), 0)
    return Translation(x, u, y, source, valid)


def init_seq2seq(key: jax.Array, cfg: Config) -> dict:
    """Encoder and decoder GRUs, their embeddings, the readout from [d_t; c_t]."""
    k_in, k_out, k_enc, k_dec, k_o = jax.random.split(key, 5)
    n = cfg.att_hidden
    E = cfg.att_embed
    V = cfg.att_vocab
    return dict(
        emb_in=jax.random.normal(k_in, (V + 1, E)) / np.sqrt(E),
        emb_out=jax.random.normal(k_out, (V + 2, E)) / np.sqrt(E),  # PAD, words, START
        enc=init_cell(k_enc, "gru", E, n),
        dec=init_cell(k_dec, "gru", E, n),
        w_o=jax.random.normal(k_o, (2 * n, V + 1)) / np.sqrt(2 * n),
        b_o=jnp.zeros(V + 1),
    )


def translate(params: dict, x: jax.Array, u: jax.Array) -> tuple:
    """(logits (B, T, V+1), encoder states (B, T, n), decoder states (B, T, n), α (B, T, T))."""
    n = params["enc"]["U"].shape[0]
    h_last, H = run_rnn(Partial(cell_step, params["enc"]), params["emb_in"], x, n)
    _, D = run_rnn(Partial(cell_step, params["dec"]), params["emb_out"], u, n, h_last)
    scores = jnp.einsum("btn,bsn->bts", D, H)  # d_tᵀ h_s
    alpha = jax.nn.softmax(jnp.where((x > 0)[:, None, :], scores, -1e9), -1)
    context = alpha @ H
    logits = jnp.concatenate([D, context], -1) @ params["w_o"] + params["b_o"]
    return logits, H, D, alpha


def translation_loss(params: dict, batch: Translation) -> jax.Array:
    """Cross-entropy of the target words over the real steps."""
    logp = jax.nn.log_softmax(translate(params, batch.x, batch.u)[0])
    picked = jnp.take_along_axis(logp, batch.y[..., None], -1)[..., 0]
    return -jnp.sum(picked * batch.valid) / jnp.sum(batch.valid)


# %% [markdown]
# > A check: if the states depend on the position only, χ and Δ vanish and the
# > temporal–temporal term is the whole score.

# %%
if utils.in_notebook():
    demo_positions = np.random.default_rng(0).normal(size=(10, 8))
    demo_states = np.broadcast_to(demo_positions, (4, 10, 8))
    demo_tokens = np.random.default_rng(1).integers(1, 5, (4, 10))
    demo_terms = attention_terms(demo_states, demo_states, demo_tokens, demo_tokens)
    print(
        "share of each term:",
        np.round(np.abs(demo_terms).sum((1, 2, 3)) / np.abs(demo_terms).sum(), 3),
    )


# %% [markdown]
# ## Experiment 5: the attention's parts, one-to-one against reversed and sorted
# One network per (task, seed), all trained in one vmapped scan; the decomposition on
# `att_eval` held-out sentences.


# %%
def encoder_decoder_attention(cfg: Config, seeds: list, t0: float) -> dict:
    """Experiment: train the encoder-decoder on each task, decompose its attention. Prints one
    line; returns the metrics, the shares and mean attention maps for the panel."""
    start = time.perf_counter()
    tasks = cfg.att_tasks
    keys = [
        jax.random.split(jax.random.fold_in(jax.random.key(s), ATTENTION_STREAM + i))
        for i in range(len(tasks))
        for s in seeds
    ]
    params = stack([init_seq2seq(k[0], cfg) for k in keys])
    data = {"task": jnp.repeat(jnp.array([TASKS.index(task) for task in tasks]), len(seeds))}
    batch = partial(translation_batch, cfg, cfg.batch)
    step = make_step(cfg, translation_loss, batch, cfg.att_steps, cfg.att_lr)
    run_keys = jnp.stack([k[1] for k in keys])
    params, _, compile_s = train(cfg, step, params, data, run_keys, cfg.att_steps, "attention", t0)
    metrics = {}
    shares = {}
    for j, task in enumerate(tasks):
        per_task = {"accuracy": [], "alignment": [], "tt": [], "tt_margin": []}
        task_shares = []
        for i, seed in enumerate(seeds):
            p = take(params, j * len(seeds) + i)
            key = jax.random.fold_in(jax.random.key(seed), HELD_OUT_SEED + j)
            b = jax.tree_util.tree_map(
                np.asarray, translation_batch(cfg, cfg.att_eval, key, {"task": TASKS.index(task)})
            )
            logits, H, D, alpha = (np.asarray(a) for a in jax.jit(translate)(p, b.x, b.u))
            terms = attention_terms(H, D, b.x, b.u)
            share, margin = term_shares(terms, b.valid, b.x > 0)
            per_task["accuracy"].append(np.mean((logits.argmax(-1) == b.y)[b.valid]))
            per_task["alignment"].append(np.mean((alpha.argmax(-1) == b.source)[b.valid]))
            per_task["tt"].append(share[0])
            per_task["tt_margin"].append(margin[0])
            task_shares.append(share)
        shares[task] = np.array(task_shares)
        metrics[f"attention_accuracy_{task}"] = utils.summarize(per_task["accuracy"])
        metrics[f"attention_alignment_{task}"] = utils.summarize(per_task["alignment"])
        metrics[f"attention_tt_share_{task}"] = utils.summarize(per_task["tt"])
        metrics[f"attention_tt_margin_share_{task}"] = utils.summarize(per_task["tt_margin"])
    for name, metric in metrics.items():
        utils.check_finite(metric["per_seed"], name, "more --steps or another --seed")
    dominant = {task: TERMS[int(np.argmax(s.mean(0)))] for task, s in shares.items()}
    rows = [(f"accuracy {task}", metrics[f"attention_accuracy_{task}"], "≈ 1") for task in tasks]
    rows += [
        (f"tt share {task}", metrics[f"attention_tt_share_{task}"], ATTENTION_CLAIMS[task])
        for task in tasks
    ]
    largest = ", ".join(f"{task} {term}" for task, term in dominant.items())
    print(
        utils.summary_line(
            f"attention (GRU-{cfg.att_hidden} encoder-decoder, {len(seeds)} seeds; largest term: "
            f"{largest})",
            rows,
            compile_s,
            time.perf_counter() - start - compile_s,
        )
    )
    return dict(metrics=metrics, shares=shares, dominant=dominant, compile_s=compile_s)


def plot_attention(ax: plt.Axes, result: dict) -> None:
    """Panel: each of the nine terms' share of the score at the chosen alignment, per task."""
    x = np.arange(len(TERMS))
    width = 0.8 / len(result["shares"])
    for k, (task, shares) in enumerate(result["shares"].items()):
        offset = (k - (len(result["shares"]) - 1) / 2) * width
        ax.bar(x + offset, shares.mean(0), width, yerr=shares.std(0), capsize=2, label=task)
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xticks=x, ylabel="share of the score at s*")
    ax.set_xticklabels(
        [t.replace("temporal", "tmp").replace("delta", "Δ") for t in TERMS], rotation=45, fontsize=7
    )
    ax.set_title("Attention score split, decoder × encoder part (Aitken 2021)")
    ax.legend(fontsize=7)


# %% [markdown]
# ## Run everything


# %%
PAPER = {
    "title": "Reverse engineering recurrent networks for sentiment classification reveals "
    "line attractor dynamics",
    "url": "https://arxiv.org/abs/1906.10720",
    "reproduced": "Fig. 2 and the spectrum; plane (arXiv:2010.15114); universality "
    "(arXiv:1907.08549); modifiers (arXiv:2004.08013); attention (arXiv:2110.15253)",
}
PAPER_VALUES = {
    "accuracy": "> 0.95",
    "fp_pc1_var": "> 0.85",
    "lambda1_abs": "within 0.05 of 1",
    "lambda2_abs": "< 0.85",
    "valence_corr": "> 0.95",
    "plane_pc12_var": "> 0.9",
    "plane_n_slow": "== 2",
    "r_not": -1.0,
    "r_not_lag5": 1.0,
    "r_very": 2.0,
    "lin_gain_good_line": 1.0,
    "lin_gain_good_after_not": -1.0,
    "attention_tt_share_one_to_one": "dominant (the largest of the nine terms)",
    "source": "the 2019 paper is qualitative: thresholds from issue 5; r_not, r_very: the "
    "toy's rule; the linearised gains: Maheswaranathan & Sussillo 2020 (shared/papers/06 §2); "
    "attention: Aitken et al. 2021 (temporal-temporal dominates one-to-one tasks)",
}
HELD_OUT_SEED = 100_000  # added to a seed: held-out documents and probes come from their own stream
MODIFIER_STREAM = 1  # folded into a seed's key: the modifier networks' own stream
ATTENTION_STREAM = 2  # ... and the encoder-decoders' (one per task)


def make_figure(line: dict, plane: dict, table: dict, mods: dict, att: dict, reference: str):
    """3 × 3 panels: Fig. 2, spectra, |λ| along the line, valences, the plane, the cells,
    the modifiers' ratios and deflection, the attention terms."""
    fig, ax = plt.subplots(3, 3, figsize=(17, 14), layout="tight")
    plot_states(ax[0, 0], line["reads"][0], "Binary: states and fixed points (cf. Fig. 2)")
    plot_spectrum(ax[0, 1], line["reads"][0], plane["reads"][0])
    plot_along_line(ax[0, 2], line["reads"])
    plot_valences(ax[1, 0], line["reads"][0], reference)
    plot_states(ax[1, 1], plane["reads"][0], "3 classes: a plane (Aitken et al. 2020)")
    plot_universality(ax[1, 2], table)
    plot_modifier_ratios(ax[2, 0], mods)
    plot_modifier_distance(ax[2, 1], mods)
    plot_attention(ax[2, 2], att)
    return fig


def parse_config(argv: Union[list, None]) -> tuple:
    """The command line -> (args, Config, user corpus or None); a bad --data exits 2 here."""
    parser = utils.make_parser(
        STEM, "Line attractors in sentiment RNNs (Maheswaranathan et al. 2019)."
    )
    parser.add_argument("--data", metavar="FILE", help="CSV/TSV of text and 0/1 label")
    parser.add_argument("--cell", choices=tuple(GATES), help="the main cell (gru)")
    parser.add_argument("--steps", type=utils.positive_int, help="Adam steps, binary corpus (600)")
    args = utils.parse_args(parser, argv)
    cfg = Config(**QUICK) if args.quick else Config()
    given = {f: getattr(args, f) for f in ("cell", "steps") if getattr(args, f) is not None}
    cfg = replace(cfg, **given)
    try:
        user = text_corpus(args.data, cfg, args.seed) if args.data else None
    except ValueError as error:
        parser.error(str(error))
    return args, cfg, user


def make_record(args, cfg: Config, parts: tuple, reference: str, compile_s: float, run_s: float):
    """The results JSON: every experiment's metrics and the tables beside them."""
    _, _, cells, mods, att = parts
    return dict(
        script=STEM,
        paper=PAPER,
        config=asdict(cfg),
        quick=args.quick,
        seeds=list(range(args.seed, args.seed + args.seeds)),
        data=args.data or "synthetic",
        valence_reference=reference,
        metrics={k: v for part in parts if "metrics" in part for k, v in part["metrics"].items()},
        universality=cells["table"],
        probe_phrases=[
            dict(zip(("phrase", "target", "network", "linearised"), p)) for p in mods["phrases"]
        ],
        attention_largest_term=att["dominant"],
        attention_shares={
            task: dict(zip(TERMS, s.mean(0).tolist())) for task, s in att["shares"].items()
        },
        modifier_spectrum_seed0=np.abs(mods["reads"][0]["lam"][:8]).tolist(),
        paper_values=PAPER_VALUES,
        compile_s=compile_s,
        run_s=run_s,
    )


def main(argv: Union[list, None] = None) -> dict:
    """All five experiments; save JSON + PNG."""
    args, cfg, user = parse_config(argv)
    utils.enable_compilation_cache()
    t0 = time.perf_counter()
    seeds = list(range(args.seed, args.seed + args.seeds))
    corpora = [user if user else make_data(s, cfg) for s in seeds]
    line = line_attractor(cfg, corpora, seeds, t0)
    plane = plane_attractor(cfg, seeds, t0)
    cells = universality(cfg, corpora[0], seeds[0], line, t0)
    mods = contextual_processing(cfg, seeds, t0)
    att = encoder_decoder_attention(cfg, seeds, t0)
    parts = (line, plane, cells, mods, att)
    compile_s = sum(part["compile_s"] for part in parts)
    run_s = time.perf_counter() - t0 - compile_s
    reference = "naive-Bayes log-count ratio" if user else "true"
    record = make_record(args, cfg, parts, reference, compile_s, run_s)
    utils.save_results(
        args.out, STEM, record, make_figure(line, plane, cells["table"], mods, att, reference)
    )
    metrics = record["metrics"]
    rows = [
        ("accuracy", metrics["accuracy"], "> 0.95"),
        ("fp PC1", metrics["fp_pc1_var"], "> 0.85"),
        ("|λ1|", metrics["lambda1_abs"], "≈ 1"),
        ("valence corr", metrics["valence_corr"], "> 0.95"),
        ("3-class PC1+2", metrics["plane_fp_pc12_var"], "> 0.9"),
        ("r_not", metrics["r_not"], "−1"),
        ("r_very", metrics["r_very"], "2"),
        ("tt share 1-to-1", metrics["attention_tt_share_one_to_one"], "dominant"),
    ]
    title = f"{STEM}{' (quick)' if args.quick else ''}, {cfg.cell}, {len(seeds)} seeds"
    print(utils.summary_line(title, rows, compile_s, run_s))
    return record


# %%
if __name__ == "__main__":
    main()
