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
# # 03 · A hierarchical RNN learned optimizer, measured against tuned Adam on held-out problems
#
# Wichrowska, Maheswaranathan, Hoffman, Gomez Colmenarejo, Denil, de Freitas, Sohl-Dickstein,
# *Learned Optimizers that Scale and Generalize*, ICML 2017,
# [arXiv:1703.04813](https://arxiv.org/abs/1703.04813); Metz, Maheswaranathan, Sun, Freeman,
# Poole, Sohl-Dickstein, *Using a thousand optimization tasks to learn hyperparameter search
# strategies* (TaskSet), 2020, [arXiv:2002.11887](https://arxiv.org/abs/2002.11887); and
# Maheswaranathan, Sussillo, Metz, Sun, Sohl-Dickstein, *Reverse engineering learned optimizers
# reveals known and novel mechanisms*, NeurIPS 2021,
# [arXiv:2011.02159](https://arxiv.org/abs/2011.02159).
#
# An optimizer can be a neural network, meta-trained so that what it optimizes goes down fast.
# You will build the 2017 one (GRUs per parameter, per tensor and per problem, linked by means
# going up and gate biases coming down; scale-free inputs; a normalised direction times a
# learned step), meta-train it on small stochastic problems behind one `lax.switch`, and race
# it against Adam under a protocol a reviewer can trust: training, validation and test
# instances drawn apart for every seed, the meta-training checkpoint chosen on validation, and
# everything reported on test. Adam gets its learning rate tuned per family on validation and,
# as an upper bound, per test instance; TaskSet's learned list of Adam settings gives a third
# baseline. Then, as in 2021, we look inside a simpler learned optimizer for momentum,
# gradient clipping, a schedule and learning-rate adaptation.
#
# **Reproduced, in part:** the 2017 claim "beats Adam on problems like its meta-training set" at
# toy scale, where it is close to a coin flip; its claimed generalisation is *tested*: in our
# full run it holds neither at 5× the trained horizon nor on a held-out family (an MLP);
# TaskSet's list against random search; the 2021 mechanisms.
#
# **Run:** `python 03_hierarchical_rnn_opt.py` (about 5.5 min on 2 CPU cores, cold) or `--quick`
# (about 100 s cold, 60 s of it compiling); `--scale paper` sizes meta-training for a GPU;
# `--ablation` adds an ablation of meta-training (about 8 more minutes).
#
# **Expect** (full run, 3 seeds, mean ± std, all on test instances; 332 s cold on 2 CPU cores).
# Adam's learning rate is tuned on validation instances by the criterion each row judges.
#
# | on test instances | ours | paper |
# |---|---|---|
# | win rate vs Adam tuned per family (final loss at H = 200) | 0.56 ± 0.12 | beats Adam |
# | by family: quadratic / 2-D / logistic | 0.56 / 1.00 / 0.11 | |
# | median steps to reach tuned Adam's final loss, ratio | 1.7 ± 0.9 (35% censored) | < 1 |
# | win rate, held-out MLP family | 0.33 ± 0.14 | generalises |
# | win rate at 5× the trained horizon (Adam tuned for 5×) | 0.43 ± 0.11 | generalises |
# | win rate vs per-instance tuned Adam / vs TaskSet list@1 | 0.50 ± 0.16 / 0.85 ± 0.13 | |
# | score (mean log f_t/f_0) learned / tuned Adam | −4.32 ± 0.09 / −3.82 ± 0.04 | |
# | TaskSet: random trials to match list@1 / list@10 (of 200) | 92 ± 18 / 194 ± 1 | list wins |
# | 2021: momentum mode λ1, α1; update at g = 10 / linear | 0.84 ± 0.02, 3.6; 0.18 | |
# | heavy ball β*, α* optimal for curvatures in [1e-3, 1] (computed) | | 0.88, 3.76 |
# | 2021: adaptation slope (state adapts / held at h*(0)) | −1.13 ± 0.11 / −0.41 | RMSProp −1 |
#
# So the 2017 claim does not clearly reproduce at this scale. Against Adam tuned for the same
# final loss, the learned optimizer wins on 56% of test instances (all the 2-D ones, half the
# quadratics, 1 in 9 logistic regressions), its median speed is worse than Adam's, and it does
# not win on the held-out MLP family (0.33) or at 5× the trained horizon (0.43). This edition's
# first full run tuned Adam by the mean score over H instead and reported 0.63 and, at 5×,
# 0.81: choosing the baseline's learning rate by another criterion than the one judged
# flattered the learned optimizer. Its step size falls by about 6 nats over the trained horizon
# and 14 more by 5×: it learned an annealing schedule, which is why it goes flat past 200 steps.
# `--quick` (200 meta-steps) gives smaller, noisier numbers; quote the full run's.

# %%
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from jax import lax

import utils

STEM = "03_hierarchical_rnn_opt"


# %%
@dataclass(frozen=True)
class Config:
    """Defaults; "code" is the released TF code (tensorflow/models research/learned_optimizer)."""

    # the learned optimizer (paper §3; code: optimizer/hierarchical_rnn.py)
    K: int = 3  # timescales of gradient averaging (code: 4)
    H0: int = 10  # per-parameter GRU width (code: 10)
    H1: int = 20  # per-tensor GRU width (code: 20; the paper text may say 30, unverified)
    H2: int = 20  # global GRU width (code: 20)
    eta_lo: float = 1e-3  # initial step sizes η drawn in [eta_lo, eta_hi] (code: 1e-6)
    eta_hi: float = 1e-1  # (code: 1e-2; widened so that a short meta-training can take big steps)
    use_attention: bool = False  # look-ahead gradient (code: off)
    # the problems: θ is laid out as an MLP n_in-n_hidden-1 (n = 36, four tensors)
    n_in: int = 3  # inputs of the MLP layout (and of the teacher MLP's data)
    n_hidden: int = 7  # hidden units of the MLP layout: n = n_in·n_hidden + 2·n_hidden + 1 = 36
    n_data: int = 64  # rows of the data matrix A (code: 1000 points for logistic regression)
    batch_rows: int = 16  # minibatch rows per gradient (code: batch 20-100)
    label_noise: float = 1.0  # std of the noise on regression targets and logistic logits
    l2: float = 1e-3  # L2 weight of the logistic family: a finite minimiser on any data
    noise_2d: float = 0.1  # 2-D functions: gradient noise std, relative to the RMS gradient at θ0
    per_family: int = 6  # instances per family in each of the train, validation and test sets
    # meta-training (code: metarun.py)
    T: int = 20  # steps per truncated unroll (code: 50 + Exp(200))
    unrolls: int = 10  # mean unrolls per problem, geometric (code: 1 + Exp(40))
    heavy_tailed: bool = False  # True: the code's law of horizons, scaled to the same mean
    batch: int = 8  # problems per meta-step (code: one per async worker)
    meta_steps: int = 2000  # meta-steps per seed (code: ~10^5 per worker, many workers)
    meta_lr: float = 1e-3  # Adam (code: RMSProp at 1e-6; 3e-3 collapsed 1 seed in 3)
    meta_lr_end: float = 1e-3  # cosine decay to this (equal to meta_lr: no decay)
    meta_clip: float = 1.0  # elementwise clip after NaN -> 0 (code: 1e4)
    meta_clip_norm: float = 0.0  # > 0: clip the meta-gradient's global norm instead
    checkpoint_every: int = 200  # meta-steps between the checkpoints chosen among on validation
    ablation_meta_steps: int = 1000  # meta-steps per variant of the ablation (--ablation only)
    # evaluation
    horizon: int = 200  # steps scored: T × unrolls, the mean trained horizon
    long_factor: int = 5  # also scored at 5× the trained horizon
    adam_lrs: tuple = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)  # Adam's lr grid
    # TaskSet (Metz et al. 2020): Adam settings drawn log-uniformly (task_set adam8p ranges)
    taskset_configs: int = 200  # configurations scored on every training-split instance
    taskset_list: int = 10  # length of the learned list
    # the 2021 analysis: a GRU per coordinate on random quadratics (renn notebook)
    re_hidden: int = 32  # GRU width (renn: 64)
    re_dim: int = 5  # quadratic dimension, eigenvalues 10^U(-3, 0) (renn)
    re_T: int = 101  # unroll length, full backprop (renn: 201)
    re_batch: int = 32  # quadratics per meta-step (renn: 64)
    re_steps: int = 1000  # Adam steps (renn: 2001)
    re_lr: float = 1e-3  # (renn: 8e-3 with eps 0.1, halved every 1000 steps; 3e-3 diverged)
    chunks: int = 5  # progress lines per training


QUICK = dict(
    meta_steps=200,
    checkpoint_every=40,
    per_family=3,  # the fewest with each 2-D function in every split
    long_factor=2,
    taskset_configs=16,
    re_hidden=16,
    re_T=51,
    re_batch=16,
    re_steps=300,
    re_lr=3e-3,  # stable at T = 51
    ablation_meta_steps=200,
)
PAPER_SCALE = dict(batch=128, meta_steps=20_000, checkpoint_every=1000, meta_clip_norm=1.0)


# %% [markdown]
# ## The problems: four families, one flat parameter vector, stochastic gradients
# Every instance is a function of the same $\theta\in\mathbb{R}^{36}$, cut into four "tensors"
# as the weights of an MLP 3-7-1; one `lax.switch` on the family index picks the loss, so all
# families share one compiled meta-step:
#
# 0. least squares $\frac1{2M}\lVert A\theta - y\rVert^2$ with noisy targets
#    $y = A\theta^* + \epsilon$ (M = 64 > n: the minimum is positive, $f^*/f_0 \approx 10^{-2}$);
# 1. Rosenbrock, Booth or Matyas on coordinate pairs, with Gaussian gradient noise (the
#    original's "noisy" problems);
# 2. logistic regression on noisy labels plus $\frac{\lambda}{2}\lVert\theta\rVert^2$;
# 3. regression onto a teacher MLP with noisy targets: the family **never meta-trained on**.
#
# The optimizers see minibatch gradients (16 of the 64 rows); the loss we score is the full
# batch, as in the original code. Least squares and the teacher MLP have noisy targets, so a
# positive minimum; logistic regression with label noise and L2 has a finite minimiser with a
# positive loss. The 2-D functions do have a minimum of 0 (Rosenbrock, Booth and Matyas); what
# keeps them off it is the gradient noise, whose size is fixed (10% of the RMS gradient at θ0),
# so an optimizer that does not anneal its step jitters at a floor above 0.
#
# > The first edition's families were partly degenerate: its logistic data were linearly
# > separable (no finite minimiser; Adam at lr 30 drove the loss to exactly 0), its held-out
# > 2-D set drew only Booth and Matyas, and with full-batch gradients 22.6% of the best Adam's
# > (instance, step) pairs sat on the 1e-6 floor, so its score was no speed ratio. Here every
# > split holds each 2-D function, logistic regression has label noise *and* an L2 term, and
# > we report the floor share again.


# %%
FAMILIES = ("quadratic", "2-D functions", "logistic", "MLP (held out)")
FUNCTIONS_2D = ("Rosenbrock", "Booth", "Matyas")
TRAIN_FAMILIES = (0, 1, 2)
HELD_OUT_FAMILY = 3
TRAIN_STREAM = 1  # folded into each seed's key: meta-training's own problems
SPLIT_STREAMS = {"train": 2, "val": 3, "test": 4}  # ... the fixed instance sets
TASKSET_STREAM = 5  # ... TaskSet's random Adam settings
GRU_STREAM = 6  # ... the 2021 GRU optimizer


def layout(cfg: Config) -> np.ndarray:
    """segment_ids (n,): the tensor of each coordinate of θ (W1, b1, w2, b2 of the MLP)."""
    sizes = (cfg.n_in * cfg.n_hidden, cfg.n_hidden, cfg.n_hidden, 1)
    return np.repeat(np.arange(4), sizes)


def mlp(theta: jax.Array, X: jax.Array, cfg: Config) -> jax.Array:
    """The MLP n_in-n_hidden-1 with weights θ on inputs X (M, n_in): outputs (M,)."""
    W1, b1, w2, b2 = jnp.split(theta, np.cumsum(np.bincount(layout(cfg)))[:-1])
    return jnp.tanh(X @ W1.reshape(cfg.n_in, cfg.n_hidden) + b1) @ w2 + b2[0]


def loss(theta: jax.Array, prob: dict, cfg: Config, weights=None) -> jax.Array:
    """f(θ) > 0 of the instance's family; `weights` (M,) weight the data rows (a minibatch),
    by default the full batch. The 2-D functions have no rows: their noise is added to ∇f."""
    A = prob["A"]
    y = prob["y"]
    w = jnp.full(cfg.n_data, 1.0 / cfg.n_data) if weights is None else weights

    def least_squares(th):
        return 0.5 * w @ (A @ th - y) ** 2

    def test_2d(th):
        a = th[0::2]
        b = th[1::2]
        values = jnp.stack(
            [
                (1 - a) ** 2 + 100 * (b - a**2) ** 2,  # Rosenbrock, minimum 0 at (1, 1)
                (a + 2 * b - 7) ** 2 + (2 * a + b - 5) ** 2,  # Booth, 0 at (1, 3)
                0.26 * (a**2 + b**2) - 0.48 * a * b,  # Matyas, 0 at (0, 0)
            ]
        )
        return jnp.mean(values[prob["which"]])

    def logistic(th):
        logits = A[:, :-1] @ th[:-1] + th[-1]
        return w @ jax.nn.softplus(-(2 * y - 1) * logits) + 0.5 * cfg.l2 * th @ th

    def teacher(th):
        return 0.5 * w @ (mlp(th, A[:, : cfg.n_in], cfg) - y) ** 2

    return lax.switch(prob["kind"], [least_squares, test_2d, logistic, teacher], theta)


def make_problem(key: jax.Array, kind: jax.Array, which: jax.Array, cfg: Config) -> dict:
    """One instance of family `kind` (2-D function `which`): data, targets, start θ0 and the
    std of the noise added to its gradients."""
    n = len(layout(cfg))
    k_a, k_target, k_normal, k_uniform, k_noise = jax.random.split(key, 5)
    A = jax.random.normal(k_a, (cfg.n_data, n))
    target = jax.random.normal(k_target, (n,))
    z = jax.random.normal(k_normal, (n,))
    u = jax.random.uniform(k_uniform, (n,), minval=-2.0, maxval=2.0)  # its own key (1st ed.: not)
    noise = cfg.label_noise * jax.random.normal(k_noise, (cfg.n_data,))
    logits = A[:, :-1] @ target[:-1] / np.sqrt(n) * 4 + target[-1] + noise  # logit std ≈ 4
    targets = jnp.stack(
        [
            A @ target + noise,
            jnp.zeros(cfg.n_data),
            (logits > 0).astype(jnp.float32),  # noisy labels: about 8% flipped
            mlp(target, A[:, : cfg.n_in], cfg) + noise,
        ]
    )
    theta0 = jnp.stack([z, u, 0.1 * z, 0.5 * z])[kind]
    prob = dict(kind=kind, which=which, A=A, y=targets[kind], theta0=theta0)
    g0 = jax.grad(loss)(theta0, prob, cfg)
    scale = jnp.where(kind == 1, cfg.noise_2d * jnp.sqrt(jnp.mean(g0**2)), 0.0)
    return dict(prob, grad_noise=scale)


def stochastic_grad(theta: jax.Array, prob: dict, key: jax.Array, cfg: Config) -> jax.Array:
    """The gradient an optimizer sees: a minibatch of `batch_rows` rows, plus Gaussian noise
    (2-D family)."""
    k_rows, k_noise = jax.random.split(key)
    # the rows are i.i.d. draws, so a cyclic window at a random offset is a minibatch drawn
    # without replacement as far as any row's chance of being in it goes (and costs no sort)
    offset = jax.random.randint(k_rows, (), 0, cfg.n_data)
    in_batch = (jnp.arange(cfg.n_data) - offset) % cfg.n_data < cfg.batch_rows
    weights = in_batch / cfg.batch_rows
    g = jax.grad(loss)(theta, prob, cfg, weights)
    return g + prob["grad_noise"] * jax.random.normal(k_noise, theta.shape)


class OptCarry(NamedTuple):
    """What an optimizer carries from step to step."""

    theta: jax.Array  # (n,)
    state: dict  # the optimizer's own state


def make_split(key: jax.Array, cfg: Config) -> dict:
    """`per_family` instances of each of the four families, each 2-D function in turn."""
    kinds = jnp.repeat(jnp.arange(4), cfg.per_family)
    which = jnp.tile(jnp.arange(cfg.per_family) % len(FUNCTIONS_2D), 4)
    keys = jax.random.split(key, len(kinds))
    return jax.vmap(make_problem, in_axes=(0, 0, 0, None))(keys, kinds, which, cfg)


# %% [markdown]
# > A check on the families (a few seconds, in a notebook): Adam with a decaying step, run
# > for 3000 steps on the same stochastic gradients, stays far above the float floor of the
# > score ($f/f_0 = 10^{-6}$); here the lowest $f/f_0$ it reaches, per instance.

# %%
if utils.in_notebook():
    cfg_demo = Config(**QUICK)
    split_demo = make_split(jax.random.key(0), cfg_demo)

    def adam_long(prob, key):
        init, update = utils.adam(lambda t: 0.03 / jnp.sqrt(1.0 + t / 100))

        def step(carry: OptCarry, k):
            g = stochastic_grad(carry.theta, prob, k, cfg_demo)
            theta, state = update(g, carry.state, carry.theta)
            return OptCarry(theta, state), loss(theta, prob, cfg_demo)

        keys = jax.random.split(key, 3000)
        return lax.scan(step, OptCarry(prob["theta0"], init(prob["theta0"])), keys)[1]

    keys_demo = jax.random.split(jax.random.key(1), 4 * cfg_demo.per_family)
    fs_demo = jax.jit(jax.vmap(adam_long))(split_demo, keys_demo)
    f0_demo = jax.vmap(loss, (0, 0, None))(split_demo["theta0"], split_demo, cfg_demo)
    ratio_demo = np.asarray(fs_demo.min(1) / f0_demo)
    kinds_demo = np.asarray(split_demo["kind"])
    for i, name in enumerate(FAMILIES):
        rows = ratio_demo[kinds_demo == i]
        print(f"{name:>15}: min f / f0 = {', '.join(f'{r:.1e}' for r in rows)}")


# %% [markdown]
# ## The optimizer (details from the released code)
# **Inputs**, per coordinate: gradient averages at K timescales ($\beta_1$ learned,
# $\beta_{k+1}=\sqrt{\beta_k}$) over their running RMS (learned decay γ),
#
# $$m_k \leftarrow (1-\beta_k)g + \beta_k m_k,\quad v_k \leftarrow (1-\gamma)(m_k^2+10^{-12}) +
#   \gamma v_k,\quad s_k = \operatorname{asinh}(m_k/\sqrt{v_k}),$$
#
# and the features $x_i = [s_k \mid s_k s_{k+1} \mid \log v_k - \overline{\log v} \mid
# \log\eta_i - \overline{\log\eta}_\tau]$ (3K numbers; none changes if f is scaled).
# **Hierarchy**: GRUs per coordinate, per tensor τ and per problem; means go up, the level
# above comes down as a bias:
#
# $$h^0_i{}' = \mathrm{GRU}_0(x_i, h^0_i;\ A_{10}h^1_\tau + A_{20}h^2),\quad
#   h^1_\tau{}' = \mathrm{GRU}_1(\mathrm{mean}_{i\in\tau}[h^0_i{}', x_i], h^1_\tau;\
#   A_{21}h^2),\quad h^2{}' = \mathrm{GRU}_2(\mathrm{mean}_\tau h^1_\tau{}', h^2).$$
#
# **Outputs**: a direction with a gradient shortcut, unit RMS per tensor; a log step size with
# momentum μ and a straight-through clip:
#
# $$d_i = w_u\cdot h^0_i + w_s\cdot s_i,\ \ \hat d_i = d_i/\mathrm{rms}_\tau(d),\ \
#   \tilde l_i = \mathrm{clip}(\log\eta_i + w_\eta\cdot h^0_i + b_\eta),\ \
#   \theta_i \leftarrow \theta_i - e^{\tilde l_i + c}\hat d_i,\ \
#   \log\eta_i \leftarrow \mu\log\eta_i + (1-\mu)\tilde l_i.$$
#
# > With $w_u = 0$, $w_s = (1, 0, …)$ this is sign-SGD (sign of momentum if β is kept) whatever
# > the GRUs do; $w_s$ starts at 1/K: the untrained optimizer is already sign/Adam-like.
# > **The code differs:** it feeds only the *last* tensor's $h^1$ up (we average, as the paper
# > says) and averages log η over the problem (we use the tensor, so tensors talk only
# > through the hierarchy). Attention (off, as in the code) takes the next gradient at
# > $\theta' - e^{\tilde l}\hat a$, with $\hat a$ a second normalised readout.


# %%
def init_gru(key: jax.Array, n_in: int, n_h: int, gate_bias: float = 2.2) -> dict:
    """A GRU's weights: N(0, 0.5/√fan_in) matrices, gate bias 2.2 (update gate u ≈ 0.9)."""
    k_gates, k_cand = jax.random.split(key)
    scale = 0.5 / np.sqrt(n_in + n_h)
    return dict(
        Wg=scale * jax.random.normal(k_gates, (n_in + n_h, 2 * n_h)),
        bg=jnp.full(2 * n_h, gate_bias),
        Wc=scale * jax.random.normal(k_cand, (n_in + n_h, n_h)),
        bc=jnp.zeros(n_h),
    )


def gru(p: dict, x: jax.Array, h: jax.Array, bias=0.0) -> jax.Array:
    """GRU in TF's convention, h' = u·h + (1-u)·c, with an additive bias (..., 3H) on the
    gates and the candidate."""
    H = h.shape[-1]
    bias = jnp.broadcast_to(bias, h.shape[:-1] + (3 * H,))
    gate_bias, candidate_bias = jnp.split(bias, [2 * H], axis=-1)
    ru = jax.nn.sigmoid(jnp.concatenate([x, h], -1) @ p["Wg"] + p["bg"] + gate_bias)
    r = ru[..., :H]
    u = ru[..., H:]  # gate bias 2.2: u ≈ 0.9, slow states at init
    c = jnp.tanh(jnp.concatenate([x, r * h], -1) @ p["Wc"] + p["bc"] + candidate_bias)
    return u * h + (1 - u) * c


def init_meta_params(key: jax.Array, cfg: Config) -> dict:
    """φ: the optimizer's own weights (about 7.4k numbers with the defaults)."""
    H0 = cfg.H0
    H1 = cfg.H1
    H2 = cfg.H2
    F = 3 * cfg.K  # features per coordinate
    ks = jax.random.split(key, 12)
    k_a = jax.random.fold_in(key, 12)  # w_a's own key (it shared w_u's; fold_in keeps ks as were)

    def normal(k, *shape):
        return 0.5 / np.sqrt(shape[0]) * jax.random.normal(k, shape)

    def uniform(k, n):
        return jax.random.uniform(k, (n,), minval=-1.0, maxval=1.0)

    return dict(
        gru0=init_gru(ks[0], F, H0),
        gru1=init_gru(ks[1], H0 + F, H1),
        gru2=init_gru(ks[2], H1, H2),
        A10=normal(ks[3], H1, 3 * H0),
        A20=normal(ks[4], H2, 3 * H0),
        A21=normal(ks[5], H2, 3 * H1),
        w_u=normal(ks[6], H0),
        w_s=jnp.full(cfg.K, 1.0 / cfg.K),
        w_scl=normal(ks[7], H0),
        b_scl=jnp.array(3.2),
        w_inp=normal(ks[8], H0),
        b_inp=jnp.array(2.2),
        w_eta=jnp.zeros(H0),
        b_eta=jnp.array(0.0),
        c=jnp.array(-1.0),
        mu_logit=jnp.array(3.2),
        w_a=normal(k_a, H0),
        h0_init=uniform(ks[9], H0),
        h1_init=uniform(ks[10], H1),
        h2_init=uniform(ks[11], H2),
    )


def st_clip(x: jax.Array, lo: float = -33.0, hi: float = 33.0) -> jax.Array:
    """Clip in the forward pass, identity gradient (the code's straight-through clip)."""
    return x + lax.stop_gradient(jnp.clip(x, lo, hi) - x)


def make_hrnn_optimizer(meta: dict, segment_ids: np.ndarray, cfg: Config) -> tuple:
    """(init(θ, key) -> state, update(g, state, θ) -> (θ, state)); θ[i] lies in tensor
    segment_ids[i]. The state's `log_step` is the mean log step size taken, for diagnosis."""
    seg = np.asarray(segment_ids)
    n = len(seg)
    n_t = int(seg.max()) + 1
    K = cfg.K
    S = jnp.asarray(np.eye(n_t, dtype=np.float32)[seg])  # (n, n_t) one-hot
    counts = S.sum(0)[:, None]  # (n_t, 1)

    def tensor_mean(x):  # (n, d) -> (n_t, d)
        return (S.T @ x) / counts

    def rms(d):  # (n,) -> (n,): the RMS over each coordinate's tensor
        return jnp.sqrt(tensor_mean(d[:, None] ** 2)[seg, 0] + 1e-16)

    def init(params, key):
        k_coord, k_tensor = jax.random.split(key)
        lo = np.log(cfg.eta_lo) / 2  # log η = a coordinate draw plus a per-tensor draw
        hi = np.log(cfg.eta_hi) / 2
        log_eta = jax.random.uniform(k_coord, (n,), minval=lo, maxval=hi)
        log_eta = log_eta + jax.random.uniform(k_tensor, (n_t,), minval=lo, maxval=hi)[seg]
        zeros = jnp.zeros(n)
        return dict(
            h0=jnp.broadcast_to(meta["h0_init"], (n, cfg.H0)),
            h1=jnp.broadcast_to(meta["h1_init"], (n_t, cfg.H1)),
            h2=meta["h2_init"],
            m=jnp.zeros((n, K)),
            v=jnp.zeros((n, K)),
            scl=zeros,
            inp=zeros,
            look=zeros,
            log_eta=log_eta,
            log_step=jnp.zeros([]),
        )

    def update(grad, state, params):
        beta = (state["inp"][:, None] + 1e-12) ** (0.5 ** jnp.arange(K))  # β_{k+1} = √β_k
        m = (1 - beta) * grad[:, None] + beta * state["m"]  # (n, K)
        gamma = state["scl"][:, None]  # 0 at the first step: v starts from m²
        v = (1 - gamma) * (m**2 + 1e-12) + gamma * state["v"]
        s = jnp.arcsinh(m / jnp.sqrt(v + 1e-16))
        log_v = jnp.log(v)
        log_eta = state["log_eta"]
        relative_eta = log_eta - tensor_mean(log_eta[:, None])[seg, 0]
        x = jnp.concatenate(
            [s, s[:, :-1] * s[:, 1:], log_v - log_v.mean(1, keepdims=True), relative_eta[:, None]],
            1,
        )  # (n, 3K)
        h1 = state["h1"]
        h2 = state["h2"]
        h0 = gru(meta["gru0"], x, state["h0"], h1[seg] @ meta["A10"] + h2 @ meta["A20"])  # (n, H0)
        h1 = gru(meta["gru1"], tensor_mean(jnp.concatenate([h0, x], 1)), h1, h2 @ meta["A21"])
        h2 = gru(meta["gru2"], h1.mean(0), h2)  # (H2,)
        d = h0 @ meta["w_u"] + s @ meta["w_s"]
        l_tilde = st_clip(log_eta + h0 @ meta["w_eta"] + meta["b_eta"])
        mu = jax.nn.sigmoid(meta["mu_logit"])
        if cfg.use_attention:
            a = h0 @ meta["w_a"] + s @ meta["w_s"]
            look = -jnp.exp(l_tilde) * a / rms(a)
        else:
            look = jnp.zeros(n)
        new = dict(
            h0=h0,
            h1=h1,
            h2=h2,
            m=m,
            v=v,
            scl=jax.nn.sigmoid(h0 @ meta["w_scl"] + meta["b_scl"]),
            inp=jax.nn.sigmoid(h0 @ meta["w_inp"] + meta["b_inp"]),
            look=look,
            log_eta=mu * log_eta + (1 - mu) * l_tilde,
            log_step=jnp.mean(l_tilde + meta["c"]),
        )
        return params - jnp.exp(l_tilde + meta["c"]) * d / rms(d), new

    return init, update


# %% [markdown]
# ## Meta-objective and truncated unrolls
# The optimizer runs T steps; the meta-loss is the mean log ratio to the *problem's* start θ0,
# on the full-batch loss:
#
# $$\mathcal L(\phi) = \frac1T\sum_{t=s+1}^{s+T}\log\big(f(\theta_t)/f(\theta_0) + 10^{-6}\big).$$
#
# > The log rewards exact convergence and ignores the loss scale. The code writes
# > $f_t/(f_0+10^{-6})$ (our floor is relative, so the invariance is exact) and scores
# > $f(\theta_s)$ twice but not $f(\theta_{s+T})$. In training, ratios are capped at 1e10 (NaN
# > counts as the cap) so that the loss still pushes back from divergence, and a problem that
# > diverges (ratio > 1e3) is replaced; in evaluation the cap is 1e3. The meta-gradient flows
# > through ∇f (Hessian-vector products), as in the code.


# %%
def meta_objective(fs: jax.Array, f0: jax.Array, linear=False, cap=1e3) -> jax.Array:
    """Mean log (or plain, if `linear`) ratio f_t / f_0 over fs (T,); > cap or non-finite: cap."""
    r = jnp.where(jnp.isfinite(fs / f0), jnp.minimum(fs / f0, cap), cap)
    return jnp.where(linear, jnp.mean(r), jnp.mean(jnp.log(r + 1e-6)))


def unroll(
    meta: dict,
    f: Callable,
    grad: Callable,
    theta: jax.Array,
    state: dict,
    keys: jax.Array,
    segment_ids: np.ndarray,
    cfg: Config,
) -> tuple:
    """len(keys) optimizer steps, the gradient at each from grad(θ, key): returns (θ, state,
    f(θ_1..θ_T), mean log step size at each step)."""
    update = make_hrnn_optimizer(meta, segment_ids, cfg)[1]

    def step(carry: OptCarry, key):
        g = grad(carry.theta + carry.state["look"], key)
        theta, state = update(g, carry.state, carry.theta)
        return OptCarry(theta, state), (f(theta), state["log_step"])

    carry, (fs, log_steps) = lax.scan(step, OptCarry(theta, state), keys)
    return carry.theta, carry.state, fs, log_steps


# %% [markdown]
# ## Experiment 1: meta-training, with the checkpoint chosen on validation problems
# A meta-step unrolls each of `batch` problems T more steps; a problem ends after a geometric
# number of unrolls (mean `unrolls`) or when it blows up, and a fresh training-family instance
# replaces it, its hidden states taken from φ inside the loss so that they are learned too.
# Seeds are vmapped.
#
# With `heavy_tailed`, the number of unrolls follows the released code's law instead
# (metarun.py and `metaopt.sample_numiter`): $N = 1 + \mathrm{round}(\mathrm{Exp}(40))$ partial
# unrolls of $50 + \mathrm{round}(\mathrm{Exp}(200))$ steps each, so a horizon
# $H = 50N + 200\,G$ with $G \sim \mathrm{Gamma}(N)$ given N. We draw H in one go, scale it by
# $(\text{unrolls}\cdot T)/E[H]$ to our mean of 200 steps and round it to whole truncations
# of T (at least one); T itself stays fixed, which keeps one compiled shape (the code also
# varies the truncation length, which we do not).
#
# > Computed, not measured: $E[\mathrm{round}(\mathrm{Exp}(s))] = 1/(2\sinh(1/2s))$, so
# > $E[H] = 41.0 \times 250 \approx 10{,}250$ steps with a coefficient of variation of 0.98.
# > Scaled to the same mean, the code's law is about as spread as our geometric (0.95): both
# > are close to exponential. The code's horizons are *long* (41 truncations of ~250 steps),
# > not much heavier-tailed in shape; 1 unroll has probability 0.13 against the geometric's
# > 0.10, more than 30 unrolls 0.046 against 0.042 (Monte Carlo of the two laws).
#
# Every `checkpoint_every` meta-steps we keep φ. Each seed has three sets of instances drawn
# from keys of its own: **training** (meta-training draws fresh instances from the training
# stream; TaskSet's list is built on a fixed training set), **validation** (chooses the
# checkpoint, the untrained φ included, and Adam's learning rates) and **test** (everything
# reported). Score: the mean log ratio over the trained horizon H,
# $\frac1H\sum_{t\le H}\log(f_t/f_0+10^{-6})$, lower is better.
#
# > Why checkpoints: the first edition scored the *last* meta-iterate of a meta-training whose
# > held-out score swung between −0.31 and 0.84 of tuned Adam's from one log line to the next.
# > Choosing among checkpoints on validation costs only evaluation and removes that lottery
# > from the result; reporting on test keeps the choice from flattering it.


# %%
class TrainState(NamedTuple):
    """The meta-training carry of one seed."""

    meta: dict  # φ
    adam: dict  # the meta-optimizer's state
    probs: dict  # the `batch` problems in flight, with their θ and optimizer states
    key: jax.Array


def cosine(start: float, end: float, steps: int) -> Callable:
    """The learning rate t -> end + (start - end)(1 + cos(πt/steps))/2."""

    def schedule(t):
        return end + (start - end) * 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(t / steps, 1.0)))

    return schedule


# the released code's horizon law (metarun.py flags, drawn by metaopt.sample_numiter as
# int(round(Exp(scale)) + minimum)): (minimum, scale) of each count
ORIGINAL_UNROLLS = (1, 40.0)  # partial unrolls per problem: 1 + round(Exp(40))
ORIGINAL_STEPS = (50, 200.0)  # steps per partial unroll: 50 + round(Exp(200))


def mean_rounded_exponential(scale: float) -> float:
    """E[round(X)] for X ~ Exp(scale): Σ_{k≥1} P(X > k - 1/2) = 1 / (2 sinh(1 / (2 scale)))."""
    return 1.0 / (2.0 * math.sinh(0.5 / scale))


def original_horizon_mean() -> float:
    """E[H] of the code's horizon H = Σ_{j≤N} T_j: E[N]·E[T_j] (Wald), with T_j unrounded."""
    unrolls = ORIGINAL_UNROLLS[0] + mean_rounded_exponential(ORIGINAL_UNROLLS[1])
    return unrolls * (ORIGINAL_STEPS[0] + ORIGINAL_STEPS[1])


def sample_horizon(key: jax.Array, cfg: Config) -> jax.Array:
    """A horizon in steps from the code's law, scaled to mean unrolls·T: H = 50N + 200G with
    N = 1 + round(Exp(40)) and G ~ Gamma(N) given N, the sum of the N exponential step counts
    (their rounding, under half a step in 250, is dropped)."""
    k_n, k_g = jax.random.split(key)
    n = ORIGINAL_UNROLLS[0] + jnp.round(ORIGINAL_UNROLLS[1] * jax.random.exponential(k_n))
    steps = ORIGINAL_STEPS[0] * n + ORIGINAL_STEPS[1] * jax.random.gamma(k_g, n)
    return steps * (cfg.unrolls * cfg.T / original_horizon_mean())


def new_problem(key: jax.Array, meta: dict, cfg: Config) -> dict:
    """A fresh training-family instance, its start θ0, optimizer state and number of unrolls."""
    k_kind, k_which, k_prob, k_opt, k_len = jax.random.split(key, 5)
    families = jnp.asarray(TRAIN_FAMILIES)
    kind = families[jax.random.randint(k_kind, (), 0, len(TRAIN_FAMILIES))]
    which = jax.random.randint(k_which, (), 0, len(FUNCTIONS_2D))
    prob = make_problem(k_prob, kind, which, cfg)
    theta = prob["theta0"]
    if cfg.heavy_tailed:
        left = jnp.maximum(1, jnp.round(sample_horizon(k_len, cfg) / cfg.T)).astype(jnp.int32)
    else:
        left = jax.random.geometric(k_len, 1.0 / cfg.unrolls).astype(jnp.int32)
    return dict(
        prob=prob,
        theta=theta,
        state=make_hrnn_optimizer(meta, layout(cfg), cfg)[0](theta, k_opt),
        f0=loss(theta, prob, cfg),
        fresh=jnp.array(True),
        left=left,
    )


def make_meta_train(cfg: Config) -> tuple:
    """(init(key) -> TrainState, train_blocks(ts, num_blocks) -> (ts, (φ after each block,
    meta-losses (blocks, checkpoint_every)))): one block is `checkpoint_every` meta-steps."""
    seg = layout(cfg)
    adam_init, adam_update = utils.adam(cosine(cfg.meta_lr, cfg.meta_lr_end, cfg.meta_steps))
    B = cfg.batch

    def init(key):
        k_meta, k_probs, key = jax.random.split(key, 3)
        meta = init_meta_params(k_meta, cfg)
        probs = jax.vmap(new_problem, (0, None, None))(jax.random.split(k_probs, B), meta, cfg)
        return TrainState(meta, adam_init(meta), probs, key)

    def one_loss(meta, c, key):
        fresh = {
            h: jnp.where(c["fresh"], meta[h + "_init"], c["state"][h]) for h in ("h0", "h1", "h2")
        }
        state = dict(c["state"], **fresh)

        def f(th):
            return loss(th, c["prob"], cfg)

        def grad(th, k):
            return stochastic_grad(th, c["prob"], k, cfg)

        keys = jax.random.split(key, cfg.T)
        theta, state, fs, _ = unroll(meta, f, grad, c["theta"], state, keys, seg, cfg)
        return meta_objective(fs, c["f0"], cap=1e10), (theta, state, fs)  # 1e10: sees divergence

    def meta_step(ts: TrainState, _):
        key, k_unroll, k_new = jax.random.split(ts.key, 3)

        def batch_loss(meta):
            L, aux = jax.vmap(one_loss, (None, 0, 0))(meta, ts.probs, jax.random.split(k_unroll, B))
            return L.mean(), aux

        (L, (theta, state, fs)), g = jax.value_and_grad(batch_loss, has_aux=True)(ts.meta)
        g = jax.tree_util.tree_map(lambda x: jnp.where(jnp.isfinite(x), x, 0.0), g)  # code: NaN->0
        if cfg.meta_clip_norm > 0:
            g = utils.clip_by_global_norm(g, cfg.meta_clip_norm)[0]
        else:
            g = jax.tree_util.tree_map(lambda x: jnp.clip(x, -cfg.meta_clip, cfg.meta_clip), g)
        meta, adam = adam_update(g, ts.adam, ts.meta)
        old = dict(ts.probs, theta=theta, state=state, left=ts.probs["left"] - 1)
        old["fresh"] = jnp.zeros(B, bool)
        done = (old["left"] <= 0) | ~(fs[:, -1] < 1e3 * ts.probs["f0"])  # ended or diverged
        new = jax.vmap(new_problem, (0, None, None))(jax.random.split(k_new, B), meta, cfg)

        def pick(a, b):
            return jnp.where(done.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)

        probs = jax.tree_util.tree_map(pick, new, old)
        return TrainState(meta, adam, probs, key), L

    def train_blocks(ts: TrainState, num_blocks: int):
        def block(ts, _):
            ts, L = lax.scan(meta_step, ts, None, length=cfg.checkpoint_every)
            return ts, (ts.meta, L)

        return lax.scan(block, ts, None, length=num_blocks)

    return init, train_blocks


def run_learned(meta: dict, prob: dict, key: jax.Array, cfg: Config, steps: int) -> tuple:
    """The learned optimizer on one instance: (f(θ_1..θ_steps), mean log step size per step)."""
    k_init, k_steps = jax.random.split(key)
    seg = layout(cfg)
    state = make_hrnn_optimizer(meta, seg, cfg)[0](prob["theta0"], k_init)

    def f(th):
        return loss(th, prob, cfg)

    def grad(th, k):
        return stochastic_grad(th, prob, k, cfg)

    keys = jax.random.split(k_steps, steps)  # the same minibatches as Adam's (run_adam)
    _, _, fs, log_steps = unroll(meta, f, grad, prob["theta0"], state, keys, seg, cfg)
    return fs, log_steps


def evaluate_learned(cfg: Config, metas: dict, probs: dict, keys: jax.Array, steps: int) -> tuple:
    """Every φ of metas (S, P, ...) on every instance of its seed's probs (S, N, ...):
    ((fs, log_steps) each (S, P, N, steps), compile seconds)."""

    def one_seed(metas, probs, keys):
        def one_meta(meta):
            return jax.vmap(run_learned, (None, 0, 0, None, None))(meta, probs, keys, cfg, steps)

        return jax.vmap(one_meta)(metas)

    compiled, compile_s = utils.compile_timed(jax.vmap(one_seed), metas, probs, keys)
    return jax.tree_util.tree_map(np.asarray, compiled(metas, probs, keys)), compile_s


def log_ratio(fs: np.ndarray, f0: np.ndarray) -> np.ndarray:
    """log(f_t/f_0 + 1e-6) with ratios above 1e3 or non-finite taken as 1e3; f0 broadcasts
    against fs without its last (step) axis."""
    r = np.asarray(fs, np.float64) / np.asarray(f0, np.float64)[..., None]
    return np.log(np.where(np.isfinite(r), np.minimum(r, 1e3), 1e3) + 1e-6)


def score(fs: np.ndarray, f0: np.ndarray, horizon: int) -> np.ndarray:
    """The score of each run: its mean log ratio over the first `horizon` steps (lower: better)."""
    return log_ratio(fs[..., :horizon], f0).mean(-1)


def meta_training(cfg: Config, seeds: list, splits: dict, t0: float) -> dict:
    """Experiment: meta-train one φ per seed, keeping a checkpoint every `checkpoint_every`
    meta-steps; choose among them (and the untrained φ) by the validation score on the training
    families. Prints one line; returns the chosen, last and untrained φ per seed (P = 3), the
    meta-losses, the validation scores and the metrics."""
    start = time.perf_counter()
    init, train_blocks = make_meta_train(cfg)
    keys = jnp.stack([jax.random.fold_in(jax.random.key(s), TRAIN_STREAM) for s in seeds])
    init_compiled, compile_s = utils.compile_timed(jax.vmap(init), keys)
    ts = init_compiled(keys)
    meta0 = ts.meta

    def run_blocks(ts, num_blocks):
        return jax.vmap(lambda t: train_blocks(t, num_blocks))(ts)

    def report(out):
        return {"meta_loss": float(np.mean(out[1]))}

    ts, (checkpoints, losses), seconds = utils.run_chunked(
        run_blocks,
        ts,
        (),
        steps=cfg.meta_steps // cfg.checkpoint_every,
        chunks=cfg.chunks,
        label="meta-training (blocks)",
        t0=t0,
        report=report,
        hint="a smaller --meta-lr or --meta-clip-norm 1",
        step_axis=1,
    )
    compile_s += seconds
    candidates = jax.tree_util.tree_map(
        lambda a, b: jnp.concatenate([a[:, None], jnp.asarray(b)], 1), meta0, checkpoints
    )  # (S, 1 + blocks, ...): the untrained φ, then every checkpoint
    val = splits["val"]
    (fs, _), seconds = evaluate_learned(cfg, candidates, val["probs"], val["keys"], cfg.horizon)
    compile_s += seconds
    trained_on = np.isin(np.asarray(val["probs"]["kind"][0]), TRAIN_FAMILIES)
    val_scores = score(fs[:, :, trained_on], val["f0"][:, None, trained_on], cfg.horizon).mean(-1)
    chosen = val_scores.argmin(1)  # (S,)
    rows = np.arange(len(seeds))

    def select(a):
        return jnp.stack([a[rows, chosen], a[:, -1], a[:, 0]], 1)  # chosen, last, untrained

    metas = jax.tree_util.tree_map(select, candidates)
    metrics = {
        "val_score_chosen": utils.summarize(val_scores[rows, chosen]),
        "val_score_last": utils.summarize(val_scores[:, -1]),
        "chosen_meta_step": utils.summarize(chosen * cfg.checkpoint_every),
        "meta_loss_last_block": utils.summarize(np.asarray(losses)[:, -1].mean(-1)),
    }
    run_s = time.perf_counter() - start - compile_s
    print(
        utils.summary_line(
            f"meta-training ({cfg.meta_steps} meta-steps, batch {cfg.batch}, {len(seeds)} "
            "seeds), validation score (lower is better)",
            [
                ("chosen checkpoint", metrics["val_score_chosen"], "1st ed. scored the last"),
                ("last", metrics["val_score_last"], "swings"),
                ("chosen at meta-step", metrics["chosen_meta_step"], "any"),
            ],
            compile_s,
            run_s,
        )
    )
    return dict(
        metas=metas,
        losses=np.asarray(losses).reshape(len(seeds), -1),
        val_scores=val_scores,
        compile_s=compile_s,
        metrics=metrics,
    )


def plot_meta_training(ax: plt.Axes, cfg: Config, trained: dict) -> None:
    """Panel: meta-loss (window means) and the validation score of every checkpoint."""
    losses = trained["losses"]
    k = max(1, losses.shape[1] // 50)
    windows = losses[:, : losses.shape[1] // k * k].reshape(len(losses), -1, k).mean(2)
    x = np.arange(windows.shape[1]) * k
    ax.plot(x, windows.mean(0), color="C0", label="meta-loss (train, mean over seeds)")
    steps = np.arange(trained["val_scores"].shape[1]) * cfg.checkpoint_every
    for s, row in enumerate(trained["val_scores"]):
        ax.plot(steps, row, "o-", ms=3, color=f"C{s + 1}", label=f"validation score, seed {s}")
    ax.set(xlabel="meta-step", ylabel="mean log f_t/f_0", title="Meta-training and validation")
    ax.legend(fontsize=7)


# %% [markdown]
# ## Experiment 2: Adam, tuned the way a reviewer would tune it
# Adam (Kingma & Ba 2015) on the same minibatches as the learned optimizer, over a learning-rate
# grid of factor-3 steps. **Tuned per family**: the rate with the best validation result in each
# family. Where that rate lies on an edge of the grid, the printed line and the JSON
# (`adam_grid_edges`) name the family and the criterion: that baseline may then be under-tuned
# (nothing widens the grid automatically). **Tuned per instance**: the best rate for each test
# instance on that instance itself, an upper bound no real user gets.
#
# > Adam is tuned by the criterion of the comparison it enters. The win rates and steps to
# > match judge the final loss at step H, so for them Adam's rate (per family on validation, per
# > instance on test) minimises the mean over instances of $\log(f_H/f_0)$; the win rate at 5H
# > uses the rate that minimises $\log(f_{5H}/f_0)$ on validation; the scores (mean log ratio over
# > H) use the rate with the best validation score. The first version tuned Adam by the score
# > alone and then judged it by its final loss, which tilts the comparison towards the learned
# > optimizer: the rate that is best on average over H need not be the one that ends lowest
# > (a larger rate gets down sooner, a smaller one ends lower on noisy gradients). The learned
# > optimizer's checkpoint is still chosen by the score (its meta-objective); a mismatch there
# > can only handicap the learned optimizer, not the baseline.
#
# > We also report the share of the tuned Adam's (instance, step) pairs within 10× of the
# > score's floor ($f_t/f_0 < 10^{-5}$): the first edition had 22.6% there.


# %%
def run_adam(hp: dict, prob: dict, key: jax.Array, cfg: Config, steps: int) -> jax.Array:
    """f(θ_1..θ_steps) of Adam with hp = dict(lr, b1, b2, eps) on one instance."""
    init, update = utils.adam(hp["lr"], hp["b1"], hp["b2"], hp["eps"])
    keys = jax.random.split(jax.random.split(key)[1], steps)  # run_learned's minibatches

    def step(carry: OptCarry, k):
        g = stochastic_grad(carry.theta, prob, k, cfg)
        theta, state = update(g, carry.state, carry.theta)
        return OptCarry(theta, state), loss(theta, prob, cfg)

    return lax.scan(step, OptCarry(prob["theta0"], init(prob["theta0"])), keys)[1]


def evaluate_adam(cfg: Config, hp: dict, probs: dict, keys: jax.Array, steps: int) -> tuple:
    """Every setting of hp (leaves (S, C)) on every instance of its seed: (fs (S, C, N, steps),
    compile seconds)."""

    def one_seed(hp, probs, keys):
        def one_setting(h):
            return jax.vmap(run_adam, (None, 0, 0, None, None))(h, probs, keys, cfg, steps)

        return jax.vmap(one_setting)(hp)

    compiled, compile_s = utils.compile_timed(jax.vmap(one_seed), hp, probs, keys)
    return np.asarray(compiled(hp, probs, keys)), compile_s


def adam_settings(lr, b1=0.9, b2=0.999, eps=1e-8) -> dict:
    """Adam hyperparameters as float32 arrays of one shape."""
    lr, b1, b2, eps = np.broadcast_arrays(*(np.asarray(v, np.float32) for v in (lr, b1, b2, eps)))
    return dict(lr=jnp.asarray(lr), b1=jnp.asarray(b1), b2=jnp.asarray(b2), eps=jnp.asarray(eps))


def join_splits(splits: dict, names: tuple) -> dict:
    """Instances of several splits side by side (S, N1 + N2, ...)."""
    parts = [splits[name] for name in names]
    return jax.tree_util.tree_map(lambda *a: jnp.concatenate(a, 1), *parts)


def final_log_ratio(fs: np.ndarray, f0: np.ndarray, t: int) -> np.ndarray:
    """log(f_t/f_0 + 1e-6) at step t (1-based) of each run, capped as in log_ratio: (...,)."""
    return log_ratio(fs[..., t - 1, None], f0)[..., 0]


def tune_per_family(criterion: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """criterion (S, G, N) of every grid setting on every instance (lower is better) -> the
    grid index (S, families) minimising its mean over each family's instances."""
    means = [criterion[:, :, kinds == k].mean(-1).argmin(1) for k in range(len(FAMILIES))]
    return np.stack(means, 1)


CRITERIA = {  # the name of each Adam tuning criterion, as printed
    "final": "final loss at H",
    "final_long": "final loss at the long horizon",
    "mean": "score over H",
}


def adam_baselines(cfg: Config, splits: dict) -> dict:
    """Experiment: Adam's grid on the validation and test instances for 5× the horizon; the
    rate per family chosen on validation, the rate per test instance chosen on itself, each by
    every criterion of CRITERIA. Prints one line; returns the tuned runs on test (a dict per
    criterion) and the metrics."""
    start = time.perf_counter()
    S, N = splits["test"]["keys"].shape
    H = cfg.horizon
    steps = H * cfg.long_factor
    both = join_splits(splits, ("val", "test"))
    hp = jax.tree_util.tree_map(lambda a: jnp.tile(a, (S, 1)), adam_settings(cfg.adam_lrs))
    fs, compile_s = evaluate_adam(cfg, hp, both["probs"], both["keys"], steps)
    fs_val = fs[:, :, :N]  # (S, G, N, steps)
    fs_test = fs[:, :, N:]
    f0_val = splits["val"]["f0"][:, None]  # (S, 1, N)
    f0_test = splits["test"]["f0"][:, None]

    def criteria(runs, f0):  # every criterion of every run: (S, G, N) each
        return {
            "final": final_log_ratio(runs, f0, H),
            "final_long": final_log_ratio(runs, f0, steps),
            "mean": score(runs, f0, H),
        }

    on_val = criteria(fs_val, f0_val)
    on_test = criteria(fs_test, f0_test)
    kinds_val = np.asarray(splits["val"]["probs"]["kind"][0])  # the same in every seed
    kinds = np.asarray(splits["test"]["probs"]["kind"][0])
    rows = np.arange(S)[:, None]
    cols = np.arange(N)[None]
    family_lr = {name: tune_per_family(c, kinds_val) for name, c in on_val.items()}
    tuned = {name: fs_test[rows, lr[:, kinds], cols] for name, lr in family_lr.items()}
    # per instance, chosen on test itself: an upper bound
    oracle = {name: fs_test[rows, on_test[name].argmin(1), cols] for name in ("final", "mean")}
    last = len(cfg.adam_lrs) - 1
    edges = {
        CRITERIA[name]: [
            f"{FAMILIES[k]} ({int(np.isin(lr[:, k], (0, last)).sum())} of {S} seeds)"
            for k in range(len(FAMILIES))
            if np.any(np.isin(lr[:, k], (0, last)))
        ]
        for name, lr in family_lr.items()
    }
    edges = {name: families for name, families in edges.items() if families}
    train = np.isin(kinds, TRAIN_FAMILIES)
    f0_train = splits["test"]["f0"][:, train]
    ratios = tuned["final"][:, train, :H] / f0_train[..., None]
    floor = (ratios < 1e-5).mean((1, 2))
    metrics = {
        "adam_floor_share": utils.summarize(floor),
        "score_adam_tuned": utils.summarize(score(tuned["mean"][:, train], f0_train, H).mean(1)),
        "score_adam_instance_tuned": utils.summarize(
            score(oracle["mean"][:, train], f0_train, H).mean(1)
        ),
    }
    grid = np.asarray(cfg.adam_lrs)
    for k, name in enumerate(FAMILIES):
        short = name.split()[0].lower()
        metrics[f"adam_lr_{short}"] = utils.summarize(grid[family_lr["final"][:, k]])
        metrics[f"adam_lr_{short}_by_score"] = utils.summarize(grid[family_lr["mean"][:, k]])
    chosen = ", ".join(
        f"{FAMILIES[k].split()[0]} {np.median(grid[family_lr['final'][:, k]]):g}"
        for k in range(len(FAMILIES))
    )
    if edges:
        where = "; ".join(f"by {name}: {', '.join(fams)}" for name, fams in edges.items())
        edge_note = f"; BEST LR ON THE GRID'S EDGE (baseline may be under-tuned) {where}"
    else:
        edge_note = "; every best lr strictly inside the grid"
    print(
        utils.summary_line(
            f"Adam tuned per family on validation (median lr by final loss at H: {chosen}"
            f"{edge_note}), test",
            [
                ("score", metrics["score_adam_tuned"], "lower is better"),
                ("per-instance tuned", metrics["score_adam_instance_tuned"], "upper bound"),
                ("share of pairs at the floor", metrics["adam_floor_share"], "1st ed. 0.226"),
            ],
            compile_s,
            time.perf_counter() - start - compile_s,
        )
    )
    return dict(
        tuned=tuned,
        oracle=oracle,
        family_lr=family_lr,
        grid_edges=edges,
        compile_s=compile_s,
        metrics=metrics,
    )


# %% [markdown]
# ## Experiment 3: TaskSet's learned list of Adam settings
# Metz et al. (2020) score C random optimizer settings on many tasks and keep an **ordered
# list**: element k is the setting that, added to the first k − 1, most lowers the mean over
# tasks of the best score so far,
#
# $$c_k = \arg\min_c \frac1{|\mathcal T|}\sum_{\tau} \min\big(b_\tau^{(k-1)}, s_{c\tau}\big),
#   \qquad b_\tau^{(k)} = \min_{j\le k} s_{c_j\tau}.$$
#
# Trying the list's first k settings on a new task is compared with trying k settings drawn at
# random, whose expected best has a closed form: with the C scores sorted,
# $s_{(1)}\le\dots\le s_{(C)}$, the minimum of k drawn without replacement is $s_{(j)}$ with
# probability $\binom{C-j}{k-1}/\binom{C}{k}$, so
#
# $$E\big[\min \text{ of } k\big] = \sum_{j=1}^{C} s_{(j)}\binom{C-j}{k-1}\Big/\binom{C}{k}.$$
#
# We draw Adam's lr, 1 − β₁, 1 − β₂ and ε log-uniformly on the ranges of TaskSet's `adam8p`
# ([1e-8, 10], [1e-4, 1], [1e-6, 1], [1e-10, 1e3]), score them on every training-split
# instance (all four families), build the list there and evaluate it on the test instances.
#
# > The greedy list maximises a monotone submodular gain (the drop of the mean best score), so
# > it is within $1 - 1/e$ of the best list of its length; the tests check that, and that
# > the greedy picks one prototype per cluster of a block-structured score matrix.


# %%
TASKSET_RANGES = {  # log10 ranges (TaskSet adam8p)
    "lr": (-8.0, 1.0),
    "one_minus_b1": (-4.0, 0.0),
    "one_minus_b2": (-6.0, 0.0),
    "eps": (-10.0, 3.0),
}


def expected_best_of_k(scores: np.ndarray, k: int) -> float:
    """The exact expected minimum of k of the 1-D `scores` drawn at random without replacement:
    Σ_j s_(j) C(C-j, k-1) / C(C, k) over the sorted scores (j from 1)."""
    s = np.sort(np.asarray(scores, np.float64))
    C = len(s)
    if not 1 <= k <= C:
        raise ValueError(f"k must be in [1, {C}], got {k}")
    total = math.comb(C, k)
    weights = np.array([math.comb(C - j, k - 1) / total for j in range(1, C + 1)])
    return float(weights @ s)


def greedy_list(score_matrix: np.ndarray, k: int) -> list:
    """The learned list: ordered indices of k configurations (rows of `score_matrix`,
    configurations × tasks, lower is better), each minimising the mean over tasks of
    min(best so far, its score)."""
    s = np.asarray(score_matrix, np.float64)
    best = np.full(s.shape[1], np.inf)
    chosen = []
    for _ in range(k):
        gain = np.minimum(best[None], s).mean(1)
        gain[chosen] = np.inf
        c = int(np.argmin(gain))
        chosen.append(c)
        best = np.minimum(best, s[c])
    return chosen


def random_search_curve(scores: np.ndarray) -> np.ndarray:
    """For k = 1 … C: the mean over tasks (columns of `scores`, C configurations × tasks) of
    the expected best of k random configurations, expected_best_of_k for every k at once."""
    C = len(scores)
    weights = np.array(
        [
            [math.comb(C - j, k - 1) / math.comb(C, k) for j in range(1, C + 1)]
            for k in range(1, C + 1)
        ]
    )  # (k, j)
    return (weights @ np.sort(np.asarray(scores, np.float64), 0)).mean(1)


def trials_to_match(curve: np.ndarray, target: float) -> int:
    """The fewest random trials whose expected best (curve from random_search_curve) is at most
    `target`; len(curve) + 1 if even all of them are not enough."""
    reached = np.nonzero(curve <= target)[0]
    return int(reached[0]) + 1 if len(reached) else len(curve) + 1


def sample_adam_settings(key: jax.Array, count: int) -> dict:
    """`count` Adam settings drawn log-uniformly on TASKSET_RANGES."""
    u = {
        name: jax.random.uniform(k, (count,), minval=lo, maxval=hi)
        for k, (name, (lo, hi)) in zip(jax.random.split(key, 4), TASKSET_RANGES.items())
    }
    return adam_settings(
        10 ** u["lr"], 1 - 10 ** u["one_minus_b1"], 1 - 10 ** u["one_minus_b2"], 10 ** u["eps"]
    )


def taskset(cfg: Config, seeds: list, splits: dict) -> dict:
    """Experiment: per seed, C random Adam settings on the training and test instances; the
    list built on training, evaluated on test against random search. Prints one line; returns
    the curves for the panel, the list's best setting's test runs and the metrics."""
    start = time.perf_counter()
    S, N = splits["test"]["keys"].shape
    keys = [jax.random.fold_in(jax.random.key(s), TASKSET_STREAM) for s in seeds]
    hp = jax.tree_util.tree_map(
        lambda *a: jnp.stack(a), *[sample_adam_settings(k, cfg.taskset_configs) for k in keys]
    )  # (S, C)
    both = join_splits(splits, ("train", "test"))
    fs, compile_s = evaluate_adam(cfg, hp, both["probs"], both["keys"], cfg.horizon)
    f0 = np.concatenate([splits["train"]["f0"], splits["test"]["f0"]], 1)
    scores = score(fs, f0[:, None], cfg.horizon)  # (S, C, 2N)
    L = cfg.taskset_list
    list_at = np.zeros((S, L))
    random_at = np.zeros((S, L))
    to_match_1 = np.zeros(S)
    to_match_10 = np.zeros(S)
    first = []
    for s in range(S):
        order = greedy_list(scores[s, :, :N], L)
        test = scores[s, :, N:]
        first.append(order[0])
        list_at[s] = [test[order[: k + 1]].min(0).mean() for k in range(L)]
        curve = random_search_curve(test)
        random_at[s] = curve[:L]
        to_match_1[s] = trials_to_match(curve, list_at[s, 0])
        to_match_10[s] = trials_to_match(curve, list_at[s, -1])
    chosen = {name: np.asarray(v)[np.arange(S), first] for name, v in hp.items()}
    metrics = {
        "taskset_trials_to_match_list1": utils.summarize(to_match_1),
        "taskset_trials_to_match_list10": utils.summarize(to_match_10),
        "taskset_list1_score": utils.summarize(list_at[:, 0]),
        "taskset_random1_score": utils.summarize(random_at[:, 0]),
        "taskset_list1_lr": utils.summarize(chosen["lr"]),
    }
    print(
        utils.summary_line(
            f"TaskSet list of Adam settings ({cfg.taskset_configs} drawn, built on training, "
            f"test), random trials to match",
            [
                ("list@1", metrics["taskset_trials_to_match_list1"], "paper: list beats random"),
                (f"list@{L}", metrics["taskset_trials_to_match_list10"], "TaskSet: list wins"),
            ],
            compile_s,
            time.perf_counter() - start - compile_s,
        )
    )
    return dict(
        list_at=list_at,
        random_at=random_at,
        first_setting=chosen,
        list_best_test=fs[np.arange(S), first][:, N:],  # (S, N, horizon)
        compile_s=compile_s,
        metrics=metrics,
    )


def plot_taskset(ax: plt.Axes, result: dict) -> None:
    """Panel: mean best test score of the list's first k against random search's."""
    k = np.arange(1, result["list_at"].shape[1] + 1)
    for name, curve, color in (
        ("learned list", "list_at", "C0"),
        ("random search", "random_at", "C7"),
    ):
        mean = result[curve].mean(0)
        std = result[curve].std(0)
        ax.plot(k, mean, "o-", ms=3, color=color, label=name)
        ax.fill_between(k, mean - std, mean + std, color=color, alpha=0.2)
    ax.set(xscale="log", xlabel="settings tried k", ylabel="mean best score (test)")
    ax.set_title("TaskSet: Adam settings, learned list vs random")
    ax.legend(fontsize=7)


# %% [markdown]
# ## Experiment 4: the learned optimizer against tuned Adam, on test instances
# The chosen φ, the last φ and the untrained φ run on each seed's test instances for 5× the
# trained horizon. The headline metrics say what they mean:
#
# - **win rate**: the share of test instances where the learned optimizer's full-batch loss
#   after H steps is below tuned Adam's;
# - **steps to match**: the median over test instances of $t_{\rm learned}/t_{\rm Adam}$, where
#   $t$ is the first step at which each reaches tuned Adam's loss after H steps (below 1: the
#   learned optimizer gets there sooner; an instance it never reaches within 5H counts as
#   5H, so the median is then a lower bound);
# - the same win rate on the **held-out MLP family**, at **5× the horizon** (against Adam tuned
#   on validation for its final loss at 5H), against per-instance tuned Adam and against the
#   TaskSet list's first setting (chosen by TaskSet's score, as the paper builds its list).


# %%
def first_reach(fs: np.ndarray, level: np.ndarray) -> np.ndarray:
    """First step (1-based) at which fs (..., steps) is at or below level (...); steps + 1 if
    never."""
    hit = fs <= level[..., None]
    return np.where(hit.any(-1), hit.argmax(-1) + 1, fs.shape[-1] + 1)


def steps_to_match(learned: np.ndarray, adam: np.ndarray, horizon: int) -> np.ndarray:
    """Per instance: steps the learned optimizer needs to reach Adam's loss after `horizon`
    steps, over the steps Adam needs (≤ horizon); censored at the runs' length."""
    level = adam[..., horizon - 1]
    t_learned = np.minimum(first_reach(learned, level), learned.shape[-1])
    return t_learned / first_reach(adam[..., :horizon], level)


def learned_vs_adam(
    cfg: Config, splits: dict, trained: dict, adam: dict, lists: dict, show: bool = True
) -> dict:
    """Experiment: the headline. Prints one line (if `show`); returns the test curves and the
    metrics."""
    start = time.perf_counter()
    H = cfg.horizon
    steps = H * cfg.long_factor
    test = splits["test"]
    (fs, log_steps), compile_s = evaluate_learned(
        cfg, trained["metas"], test["probs"], test["keys"], steps
    )  # (S, 3, N, steps): chosen, last, untrained
    chosen = fs[:, 0]
    last = fs[:, 1]
    untrained = fs[:, 2]
    f0 = test["f0"]
    kinds = np.asarray(test["probs"]["kind"][0])
    train = np.isin(kinds, TRAIN_FAMILIES)
    held = kinds == HELD_OUT_FAMILY
    tuned = adam["tuned"]["final"]  # Adam tuned by what the win rates judge (Experiment 2)
    tuned_score = adam["tuned"]["mean"]  # ... and by the score, for the score ratios

    def wins(a, b, t, where):
        return (a[:, where, t - 1] < b[:, where, t - 1]).mean(1)

    def scores(runs, where, horizon=H):
        return score(runs[:, where], f0[:, where], horizon).mean(1)

    ratio = steps_to_match(chosen[:, train], tuned[:, train], H)
    censored = (first_reach(chosen[:, train], tuned[:, train, H - 1]) > steps).mean(1)
    metrics = {
        "win_rate_vs_tuned_adam": utils.summarize(wins(chosen, tuned, H, train)),
        "steps_to_match_ratio": utils.summarize(np.median(ratio, 1)),
        "heldout_family_win_rate": utils.summarize(wins(chosen, tuned, H, held)),
        "win_rate_5x_horizon": utils.summarize(
            wins(chosen, adam["tuned"]["final_long"], steps, train)
        ),
        "win_rate_vs_instance_tuned_adam": utils.summarize(
            wins(chosen, adam["oracle"]["final"], H, train)
        ),
        "win_rate_vs_taskset_list1": utils.summarize(
            wins(chosen[..., :H], lists["list_best_test"], H, train)
        ),
        "win_rate_last_iterate": utils.summarize(wins(last, tuned, H, train)),
        "steps_to_match_censored_share": utils.summarize(censored),
        "score_learned": utils.summarize(scores(chosen, train)),
        "score_learned_last_iterate": utils.summarize(scores(last, train)),
        "score_untrained": utils.summarize(scores(untrained, train)),
        "improvement_over_init_nats": utils.summarize(
            scores(untrained, train) - scores(chosen, train)
        ),
        "frac_of_tuned_adam": utils.summarize(scores(chosen, train) / scores(tuned_score, train)),
        "frac_of_tuned_adam_5x_horizon": utils.summarize(
            scores(chosen, train, steps) / scores(tuned_score, train, steps)
        ),
        "frac_of_tuned_adam_heldout_mlp": utils.summarize(
            scores(chosen, held) / scores(tuned_score, held)
        ),
        "improvement_over_init_heldout_mlp_nats": utils.summarize(
            scores(untrained, held) - scores(chosen, held)
        ),
    }
    for k in TRAIN_FAMILIES:
        metrics[f"win_rate_{FAMILIES[k].split()[0].lower()}"] = utils.summarize(
            wins(chosen, tuned, H, kinds == k)
        )
    line = utils.summary_line(
        f"learned (chosen on validation) vs Adam tuned per family, {len(train.nonzero()[0])} "
        "test instances per seed",
        [
            ("win rate", metrics["win_rate_vs_tuned_adam"], "paper: beats Adam, > 0.5"),
            ("steps to match", metrics["steps_to_match_ratio"], "paper: < 1"),
            ("held-out MLP win rate", metrics["heldout_family_win_rate"], "paper: > 0.5"),
            ("5x horizon win rate", metrics["win_rate_5x_horizon"], "paper: > 0.5"),
        ],
        compile_s,
        time.perf_counter() - start - compile_s,
    )
    if show:
        print(line)
    curves = {
        name: dict(
            chosen=log_ratio(chosen[:, where], f0[:, where]).mean(1),
            last=log_ratio(last[:, where], f0[:, where]).mean(1),
            untrained=log_ratio(untrained[:, where], f0[:, where]).mean(1),
            adam=log_ratio(tuned[:, where], f0[:, where]).mean(1),
        )
        for name, where in (("training families", train), ("MLP (never meta-trained on)", held))
    }
    return dict(curves=curves, log_steps=log_steps, compile_s=compile_s, metrics=metrics)


def band(ax: plt.Axes, x: np.ndarray, y: np.ndarray, color: str, label: str) -> None:
    """Mean ± std over seeds (rows of y) against x."""
    ax.plot(x, y.mean(0), color=color, label=label)
    ax.fill_between(x, y.mean(0) - y.std(0), y.mean(0) + y.std(0), color=color, alpha=0.2)


def plot_test_curves(ax: plt.Axes, cfg: Config, name: str, curves: dict) -> None:
    """Panel: mean log f_t/f_0 on the test instances of a group of families."""
    t = np.arange(1, curves["adam"].shape[1] + 1)
    band(ax, t, curves["chosen"], "C0", "learned, chosen on validation")
    band(ax, t, curves["last"], "C1", "learned, last meta-iterate")
    band(ax, t, curves["untrained"], "C7", "learned, untrained")
    band(ax, t, curves["adam"], "C2", "Adam, lr tuned per family (final loss at H)")
    ax.axvline(cfg.horizon, color="k", ls=":", lw=1, label="trained horizon")
    ax.set(xscale="log", xlabel="step", ylabel="mean log f_t/f_0", title=f"Test: {name}")
    ax.legend(fontsize=7)


# %% [markdown]
# ## Why does it go flat past its trained horizon?
# The first edition's figure showed the learned optimizer flattening at about 200 steps, its
# trained horizon, where Adam keeps descending. Its step size is logged at every step
# ($\overline{\tilde l + c}$, the mean log step over coordinates): if the step collapses, the
# optimizer has learned a schedule that ends where training ended; if it stays put, the
# plateau is a noise floor of a constant step.


# %%
def stall_diagnosis(cfg: Config, result: dict) -> dict:
    """Experiment (no new runs): the chosen φ's mean log step size on test, at the start, at the
    trained horizon and at 5×. Prints one line; returns the curve and the metrics."""
    curve = result["log_steps"][:, 0].mean(1)  # (S, steps): chosen φ, mean over instances
    H = cfg.horizon
    at = {"start": curve[:, 0], "horizon": curve[:, H - 1], "end": curve[:, -1]}
    metrics = {
        "log_step_drop_start_to_horizon": utils.summarize(at["start"] - at["horizon"]),
        "log_step_drop_horizon_to_end": utils.summarize(at["horizon"] - at["end"]),
    }
    print(
        utils.summary_line(
            "why it stalls: the learned step size, drop in nats of log step",
            [
                ("start -> H", metrics["log_step_drop_start_to_horizon"], "a schedule if > 0"),
                (
                    f"H -> {cfg.long_factor}H",
                    metrics["log_step_drop_horizon_to_end"],
                    "collapse if > 0",
                ),
            ],
            0.0,
            0.0,
        )
    )
    return dict(curve=curve, metrics=metrics)


def plot_step_size(ax: plt.Axes, cfg: Config, stall: dict) -> None:
    """Panel: the chosen learned optimizer's mean step size against the step."""
    t = np.arange(1, stall["curve"].shape[1] + 1)
    band(ax, t, np.exp(stall["curve"]), "C0", "learned (chosen), mean over test instances")
    ax.axvline(cfg.horizon, color="k", ls=":", lw=1, label="trained horizon")
    ax.set(xscale="log", yscale="log", xlabel="step", ylabel="exp(mean log step)")
    ax.set_title("Learned step size on test")
    ax.legend(fontsize=7)


# %% [markdown]
# ## Ablation: meta-training that is less of a lottery (`--ablation`)
# Meta-training is noisy: the first edition's held-out score swung from −0.31 to 0.84 of tuned
# Adam's between log lines, and one seed gave 0.77 alone and 0.42 beside two others. Selecting
# the checkpoint on validation (Experiment 1) hides part of that; the ablation asks which change
# to meta-training itself makes the outcome less of a draw. Each variant changes one knob of
# the defaults and is meta-trained on the same seeds, with the same splits, the same Adam
# baseline and the same checkpoint selection and test scoring as the headline:
#
# - **baseline**: the defaults (meta-batch 8, element-wise clip at 1, constant meta lr 1e-3,
#   geometric horizons);
# - **meta-batch 2×**: 16 problems per meta-step, half the meta-gradient's variance;
# - **clip by global norm 1** instead of element-wise (keeps the gradient's direction);
# - **lr decay**: cosine from 1e-3 to 1e-4 (the baseline keeps 1e-3);
# - **heavy-tailed horizons**: the code's law above, at the same mean.
#
# Per variant and seed: the win rate against tuned Adam and the score on test (checkpoint
# chosen on validation), the last meta-iterate's win rate (what no selection gives), and the
# swing of the validation score: its standard deviation over the checkpoints of the second half
# of meta-training. The lottery is the spread **over seeds** (± below) of the test numbers and
# the size of the swing. The ablation trains `ablation_meta_steps` (1000, half the default) per
# variant to fit about ten minutes on 2 CPU cores, so its baseline is not the headline run.
#
# > Measured (full size, 3 seeds, 1000 meta-steps per variant; the five variants took 464 s,
# > compile and run, of a 743 s `--ablation` run on 2 CPU cores whose other parts had a warm
# > compilation cache). Test win rate vs tuned Adam / test score / last
# > meta-iterate's win rate / validation swing, mean ± std over seeds:
# >
# > | variant | win rate | score | last iterate | swing |
# > |---|---|---|---|---|
# > | baseline | 0.5 ± 0.2 | −4.13 ± 0.26 | 0.5 ± 0.2 | 0.137 ± 0.079 |
# > | meta-batch 2× | 0.463 ± 0.1 | −4.26 ± 0.042 | 0.463 ± 0.1 | 0.211 ± 0.069 |
# > | clip by global norm 1 | 0.5 ± 0.2 | −4.3 ± 0.093 | 0.426 ± 0.26 | 0.162 ± 0.13 |
# > | lr decay to 1/10 | 0.574 ± 0.2 | −4.1 ± 0.24 | 0.519 ± 0.14 | 0.125 ± 0.042 |
# > | heavy-tailed horizons | 0.444 ± 0.2 | −4.05 ± 0.21 | 0.389 ± 0.16 | 0.113 ± 0.085 |
# >
# > What helps: the larger meta-batch shrinks the spread over seeds of the test score
# > sixfold (± 0.26 → 0.042) and of the win rate by half, at twice the cost per meta-step
# > (104 s against 57 s of meta-training); clipping by global norm gives the best mean score
# > (−4.30) with a third of the spread. Neither raises the win rate above the baseline's 0.5.
# > The lr decay and the code's horizon law change nothing beyond the noise (as expected for the
# > latter: its law is close to ours). No variant calms the swing between checkpoints; with
# > 3 seeds a standard deviation is itself uncertain by about half, and at 1000 meta-steps the
# > swing still holds some of the training trend, so read only the large differences.


# %%
def ablation_variants(cfg: Config) -> dict:
    """The ablation's variants: each a name and the Config fields it changes."""
    return {
        "baseline": {},
        "meta-batch 2x": dict(batch=2 * cfg.batch),
        "clip by global norm 1": dict(meta_clip_norm=1.0),
        "lr decay to 1/10": dict(meta_lr_end=cfg.meta_lr / 10),
        "heavy-tailed horizons": dict(heavy_tailed=True),
    }


def ablation(
    cfg: Config,
    seeds: list,
    splits: dict,
    adam: dict,
    lists: dict,
    t0: float,
    variants: Union[dict, None] = None,
) -> dict:
    """Experiment (`--ablation`): meta-train each variant (default: ablation_variants) for
    `ablation_meta_steps`, choose its checkpoint on validation and score it on test against
    the same tuned Adam (meta_training, learned_vs_adam). Prints one line per variant; returns
    {variants: {name: {overrides, meta_steps, and each metric's {mean, std, per_seed}}}}."""
    variants = ablation_variants(cfg) if variants is None else variants
    steps = cfg.ablation_meta_steps
    out = {}
    compile_s = 0.0
    for name, overrides in variants.items():
        start = time.perf_counter()
        vcfg = replace(cfg, meta_steps=steps, **overrides)
        trained = meta_training(vcfg, seeds, splits, t0)
        tested = learned_vs_adam(vcfg, splits, trained, adam, lists, show=False)
        seconds = trained["compile_s"] + tested["compile_s"]
        blocks = trained["val_scores"].shape[1] - 1  # column 0 is the untrained φ
        second_half = 1 + blocks // 2
        late = trained["val_scores"][:, second_half:]  # (S, checkpoints of the 2nd half)
        metrics = {
            key: tested["metrics"][key]
            for key in ("win_rate_vs_tuned_adam", "score_learned", "win_rate_last_iterate")
        }
        metrics["val_score_swing"] = utils.summarize(late.std(1))
        out[name] = dict(overrides=overrides, meta_steps=steps, **metrics)
        compile_s += seconds
        print(
            utils.summary_line(
                f"ablation, {name} ({steps} meta-steps, {len(seeds)} seeds), test",
                [
                    ("win rate", metrics["win_rate_vs_tuned_adam"], "± over seeds: the lottery"),
                    ("score", metrics["score_learned"], "lower is better"),
                    ("last-iterate win rate", metrics["win_rate_last_iterate"], "no selection"),
                    ("validation swing", metrics["val_score_swing"], "std, 2nd-half checkpoints"),
                ],
                seconds,
                time.perf_counter() - start - seconds,
            )
        )
    return dict(variants=out, compile_s=compile_s, metrics={})


# %% [markdown]
# ## Experiment 5: what did a learned optimizer learn? (Maheswaranathan et al. 2021)
# A simpler learned optimizer, a GRU per coordinate, $h_{t+1} = F(h_t, g_t)$,
# $x_{t+1} = x_t + w^\top h_{t+1} + b$, trained on the renn notebook's quadratics
# ($f = \frac12x^\top Hx + v^\top x + c$, eigenvalues $10^{U(-3,0)}$). **Fixed points**
# $h^* = F(h^*, 0)$ by Newton from visited states (the paper minimises
# $\lVert h-F(h,0)\rVert^2$). **Linearization** $\partial F/\partial h = R\Lambda R^{-1}$,
# $J_{in} = \partial F/\partial g$: mode k is a momentum with $\beta_k = \lambda_k$,
# $\alpha_k = -(w^\top r_k)(l_k^\top J_{in})$; the best heavy ball for curvatures in
# $[a^2, b^2]$ has
#
# $$\alpha^* = 4/(a+b)^2,\qquad \beta^* = ((b-a)/(b+a))^2.$$
#
# **Clipping**: Δ(g) at h* against its tangent. **Schedule**: the step size
# $-\partial\Delta/\partial g$ along g = 0 from h = 0.
#
# > Heavy ball as a one-unit RNN, $h' = \beta h + g$, $\Delta = -\alpha h'$, must come out with
# > exactly α and β: the tests check that before any claim about the GRU.


# %%
def lopt_cell(p: dict, h: jax.Array, g) -> jax.Array:
    """h_{t+1} = F(h_t, g_t), g a scalar per coordinate; the update is Δx = w·h_{t+1} + b."""
    return gru(p["gru"], jnp.asarray(g)[..., None], h)


def random_quadratic(key: jax.Array, dim: int) -> dict:
    """H = Q diag(10^U(-3, 0)) Qᵀ and x* with ∇f(0) standard normal (renn notebook)."""
    k_q, k_lam, k_v = jax.random.split(key, 3)
    Q = jnp.linalg.qr(jax.random.normal(k_q, (dim, dim)))[0]
    H = (Q * 10 ** jax.random.uniform(k_lam, (dim,), minval=-3.0, maxval=0.0)) @ Q.T
    return dict(H=H, x_star=-jnp.linalg.solve(H, jax.random.normal(k_v, (dim,))))


class GruCarry(NamedTuple):
    """The GRU optimizer's carry: iterate and per-coordinate hidden states."""

    x: jax.Array  # (dim,)
    h: jax.Array  # (dim, hidden)


def run_gru_lopt(p: dict, quad: dict, T: int, alpha=None) -> tuple:
    """From x = 0, h = 0: (f_0..f_T, g_t (T, dim), h_{t+1} (T, dim, H)); GD at α if given."""
    H = quad["H"]
    x_star = quad["x_star"]

    def f(x):
        return 0.5 * (x - x_star) @ H @ (x - x_star)

    def step(carry: GruCarry, _):
        g = H @ (carry.x - x_star)
        h = lopt_cell(p, carry.h, g)
        x = carry.x + (h @ p["w"] + p["b"] if alpha is None else -alpha * g)
        return GruCarry(x, h), (f(x), g, h)

    x0 = jnp.zeros(len(x_star))
    start = GruCarry(x0, jnp.zeros((len(x_star), len(p["w"]))))
    fs, gs, hs = lax.scan(step, start, None, length=T)[1]
    return jnp.concatenate([f(x0)[None], fs]), gs, hs


class GruTrainState(NamedTuple):
    """The GRU optimizer's meta-training carry."""

    p: dict  # its weights
    adam: dict  # the meta-optimizer's state
    key: jax.Array


def train_gru_lopt(keys: jax.Array, cfg: Config, t0: float) -> tuple:
    """One GRU optimizer per key (gate bias 0: no built-in momentum), meta-trained on the mean
    ratio f_t/f_0 with full backpropagation: (p, meta-losses (S, steps), compile seconds)."""
    adam_init, adam_update = utils.adam(cfg.re_lr)

    def meta_loss(p, key):
        keys = jax.random.split(key, cfg.re_batch)
        quads = jax.vmap(random_quadratic, (0, None))(keys, cfg.re_dim)
        fs = jax.vmap(lambda q: run_gru_lopt(p, q, cfg.re_T)[0])(quads)
        return jnp.mean(jnp.minimum(fs[:, 1:] / fs[:, :1], 1e3))

    def step(ts: GruTrainState, _):
        key, k_loss = jax.random.split(ts.key)
        value, g = jax.value_and_grad(meta_loss)(ts.p, k_loss)
        g = jax.tree_util.tree_map(lambda x: jnp.where(jnp.isfinite(x), x, 0.0), g)
        g = utils.clip_by_global_norm(g, 5.0)[0]
        p, adam = adam_update(g, ts.adam, ts.p)
        return GruTrainState(p, adam, key), value

    def init(key):
        k_p, key = jax.random.split(key)
        p = dict(
            gru=init_gru(k_p, 1, cfg.re_hidden, 0.0), b=jnp.array(0.0), w=jnp.zeros(cfg.re_hidden)
        )
        return GruTrainState(p, adam_init(p), key)

    def run(ts, num_steps):
        return jax.vmap(lambda t: lax.scan(step, t, None, length=num_steps))(ts)

    def report(values):
        return {"meta_loss": float(np.mean(values))}

    ts, losses, compile_s = utils.run_chunked(
        run,
        jax.vmap(init)(keys),
        (),
        steps=cfg.re_steps,
        chunks=cfg.chunks,
        label="GRU optimizer",
        t0=t0,
        report=report,
        hint="a smaller re_lr",
        step_axis=1,
    )
    return ts.p, losses, compile_s


def fixed_points(cell: Callable, h_starts: jax.Array, g0=0.0, iters: int = 30) -> tuple:
    """Newton on h = F(h, g0) from each start (S, H), steps clipped to ±1: returns (h*, the
    residual q = ½|h - F(h, g0)|² (S,))."""

    def residual(h):
        return h - cell(h, g0)

    def newton(h, _):
        J = jax.jacfwd(residual)(h)
        return h - jnp.clip(jnp.linalg.solve(J, residual(h)), -1.0, 1.0), None

    def solve(h):
        return lax.scan(newton, h, None, length=iters)[0]

    hs = jax.vmap(solve)(h_starts)
    return hs, jax.vmap(lambda h: 0.5 * jnp.sum(residual(h) ** 2))(hs)


def linearize(cell: Callable, readout: Callable, h_star: jax.Array) -> dict:
    """Modes of the linearization at (h*, g = 0), sorted by |λ|: λ_k (= β_k) and α_k."""
    J, J_in = jax.jacfwd(cell, (0, 1))(h_star, 0.0)  # (H, H), (H,)
    w = jax.grad(readout)(cell(h_star, 0.0))  # Δ_t = readout(h_{t+1})
    lam, R = np.linalg.eig(np.asarray(J, np.float64))
    alpha = -(np.asarray(w) @ R) * (np.linalg.inv(R) @ np.asarray(J_in))  # rows of R⁻¹: l_k
    order = np.argsort(-np.abs(lam))
    return dict(lam=lam[order], alpha=alpha[order].real)


def heavy_ball_optimum(lam_min: float, lam_max: float) -> tuple:
    """(α*, β*) of the heavy ball with the fastest worst-case rate on curvatures in
    [lam_min, lam_max]."""
    a = np.sqrt(lam_min)
    b = np.sqrt(lam_max)
    return 4 / (a + b) ** 2, ((b - a) / (b + a)) ** 2


# %% [markdown]
# > The identity the analysis must pass (instant): heavy ball with α = 0.5, β = 0.9 as a
# > one-unit RNN, and the optimal heavy ball for curvatures in [1e-3, 1].

# %%
if utils.in_notebook():
    hb = linearize(lambda h, g: 0.9 * h + g, lambda h: -0.5 * h[0], jnp.zeros(1))
    print(
        f"heavy ball α = 0.5, β = 0.9 -> α = {hb['alpha'][0]:.4f}, β = {hb['lam'][0].real:.4f};"
        f" optimum for λ in [1e-3, 1]: (α*, β*) = {np.round(heavy_ball_optimum(1e-3, 1), 3)}"
    )


# %% [markdown]
# ### Learning-rate adaptation, the fourth mechanism
# The 2021 paper finds, beside momentum, clipping and a schedule, that the step shrinks when
# gradients are large. Under a constant gradient input $g_0$ the RNN settles at a fixed point
# $h^*(g_0) = F(h^*, g_0)$; the **local learning rate** there is the slope of the update in g,
#
# $$\eta(g_0) = -\frac{\partial}{\partial g}\,\Delta\big(h^*(g_0), g\big)\Big|_{g = g_0}.$$
#
# RMSProp written as a one-unit RNN, $v' = \beta v + (1-\beta)g^2$, $\Delta = -\alpha g/\sqrt{v'}$,
# has $v^* = g_0^2$ and $\eta(g_0) = \alpha\beta/|g_0|$ exactly: a log-log slope of −1 against
# $|g_0|$. A plain momentum method has slope 0. We fit that slope for the GRU optimizer over
# $|g_0| \in [10^{-2}, 10]$, both signs, and compare it with the slope at the same g but the
# state held at $h^*(0)$: what that gives is the clipping of the update (a saturating
# Δ(g)); only the difference is adaptation through the state.


# %%
ADAPTATION_G0 = np.concatenate([-np.logspace(-2, 1, 7), np.logspace(-2, 1, 7)])  # |g0| 1e-2…10


def local_learning_rate(cell: Callable, delta: Callable, g0, h_start: jax.Array) -> tuple:
    """(h*(g0), η(g0), residual): the fixed point under constant gradient g0 (Newton from
    h_start) and the slope -∂Δ(h*, g)/∂g at g = g0; delta(h, g) is the update from state h."""
    h_star, q = fixed_points(cell, h_start[None], g0)
    eta = -jax.grad(lambda g: delta(h_star[0], g))(jnp.asarray(g0, h_start.dtype))
    return h_star[0], eta, q[0]


def adaptation_exponent(g0s: np.ndarray, etas: np.ndarray) -> float:
    """The least-squares slope of log η against log |g0| (−1: RMSProp-like, 0: none)."""
    return float(np.polyfit(np.log(np.abs(g0s)), np.log(np.abs(etas)), 1)[0])


def visit(p: dict, key: jax.Array, cfg: Config) -> dict:
    """One jit for all seeds: 32 test rollouts, Newton from 64 visited h, the schedule, the
    GD reference and the fixed points under constant gradients."""

    def cell(h, g):
        return lopt_cell(p, h, g)

    def step_size(h):
        return -jax.grad(lambda g: cell(h, g) @ p["w"])(0.0)

    def delta(h, g):
        return cell(h, g) @ p["w"] + p["b"]

    k_q, k_s = jax.random.split(key)
    quads = jax.vmap(random_quadratic, (0, None))(jax.random.split(k_q, 32), cfg.re_dim)
    fs, gs, hs = jax.vmap(lambda q: run_gru_lopt(p, q, cfg.re_T))(quads)
    hs = hs.reshape(-1, cfg.re_hidden)
    h_fp, q = fixed_points(cell, hs[jax.random.choice(k_s, len(hs), (64,))])

    def schedule_step(h, _):
        return cell(h, 0.0), step_size(h)

    lrs = lax.scan(schedule_step, jnp.zeros(cfg.re_hidden), None, length=cfg.re_T)[1]
    gd = jax.vmap(lambda q: run_gru_lopt(p, q, cfg.re_T, alpha=2 / (1e-3 + 1))[0])(quads)
    g0s = jnp.asarray(ADAPTATION_G0)
    h_best = h_fp[jnp.argmin(jnp.where(jnp.isfinite(q), q, jnp.inf))]  # as `analyse` takes it
    _, etas, residuals = jax.vmap(lambda g: local_learning_rate(cell, delta, g, h_best))(g0s)
    h_zero = fixed_points(cell, h_best[None])[0][0]  # the state held at h*(0): clipping alone
    etas_clip = jax.vmap(jax.grad(lambda g: -delta(h_zero, g)))(g0s)
    return dict(
        fs=fs,
        g_p99=jnp.quantile(jnp.abs(gs), 0.99),
        h_fp=h_fp,
        q=q,
        lrs=lrs,
        gd=gd,
        etas=etas,
        etas_clip=etas_clip,
        eta_residuals=residuals,
    )


def analyse(p: dict, v: dict) -> dict:
    """Fixed point, modes, clipping, schedule, adaptation and test score of one GRU optimizer."""

    def cell(h, g):
        return lopt_cell(p, h, g)

    def update_at(h, g):
        return cell(h, g) @ p["w"] + p["b"]

    q = np.where(np.isfinite(v["q"]), v["q"], np.inf)  # a Newton run may diverge: skip it
    h_star = v["h_fp"][int(np.argmin(q))]
    update = np.asarray(jax.vmap(lambda g: update_at(h_star, g))(jnp.linspace(-10, 10, 201)))
    slope0 = float(jax.grad(lambda g: update_at(h_star, g))(0.0))
    fs = np.asarray(v["fs"])
    gd = np.asarray(v["gd"])
    lrs = np.asarray(v["lrs"])
    modes = linearize(cell, lambda h: h @ p["w"] + p["b"], h_star)
    etas = np.asarray(v["etas"])
    settled = np.asarray(v["eta_residuals"]) < 1e-8
    usable = settled & (np.abs(etas) > 0)
    etas_clip = np.asarray(v["etas_clip"])
    exponent = None  # not measured: fewer than 3 of the fixed points under g0 settled
    if usable.sum() > 2:
        exponent = adaptation_exponent(ADAPTATION_G0[usable], etas[usable])
    clip_only = np.abs(etas_clip) > 0
    clip_exponent = adaptation_exponent(ADAPTATION_G0[clip_only], etas_clip[clip_only])
    return dict(
        modes,
        lambda1=abs(modes["lam"][0]),
        alpha1=modes["alpha"][0],
        update=update,
        slope0=slope0,
        clip_ratio=(update[200] - update[100]) / (10 * slope0),
        g_p99=float(v["g_p99"]),
        converged=int((q < 1e-8).sum()),
        lrs=lrs,
        lr_first_over_last=lrs[0] / lrs[-1],
        objective=np.mean(fs[:, 1:] / fs[:, :1]),
        gd_objective=np.mean(gd[:, 1:] / gd[:, :1]),
        etas=etas,
        etas_clip=etas_clip,
        adaptation_exponent=exponent,
        clip_only_exponent=clip_exponent,
        adaptation_settled=float(settled.mean()),
    )


def reverse_engineering(cfg: Config, seeds: list, t0: float) -> dict:
    """Experiment: train one GRU optimizer per seed, then read momentum, clipping, schedule and
    learning-rate adaptation off its dynamics. Prints one line; returns what the panels need
    and the metrics."""
    start = time.perf_counter()
    keys = jnp.stack([jax.random.fold_in(jax.random.key(s), GRU_STREAM) for s in seeds])
    p, losses, compile_s = train_gru_lopt(keys, cfg, t0)
    compiled, seconds = utils.compile_timed(jax.vmap(lambda p, k: visit(p, k, cfg)), p, keys)
    compile_s += seconds
    found = compiled(p, keys)
    found = jax.tree_util.tree_map(np.asarray, found)
    per_seed = [
        analyse(*jax.tree_util.tree_map(lambda a: a[s], (p, found))) for s in range(len(seeds))
    ]
    a_star, b_star = heavy_ball_optimum(1e-3, 1.0)

    def summary(name):
        return utils.summarize([r[name] for r in per_seed])

    metrics = {
        f"re_{name}": summary(name)
        for name in (
            "lambda1",
            "alpha1",
            "clip_ratio",
            "lr_first_over_last",
            "converged",
            "g_p99",
            "objective",
            "gd_objective",
            "clip_only_exponent",
            "adaptation_settled",
        )
    }
    metrics["re_meta_loss_last_100"] = utils.summarize(np.asarray(losses)[:, -100:].mean(1))
    exponents = [r["adaptation_exponent"] for r in per_seed]  # None where not measured
    rows = [
        ("momentum |λ1|", metrics["re_lambda1"], f"optimal heavy ball β* {b_star:.3f}"),
        ("α1", metrics["re_alpha1"], f"α* {a_star:.2f}"),
        ("update at g=10 / linear", metrics["re_clip_ratio"], "clips if < 1"),
    ]
    title = "2021 mechanisms of a GRU optimizer"
    if None in exponents:  # a mean over the seeds measured would hide which ones were not
        missing = [seeds[s] for s, e in enumerate(exponents) if e is None]
        title += f" (adaptation slope not measured on seed(s) {missing}: ≤ 2 fixed points settled)"
    else:
        metrics["re_adaptation_exponent"] = utils.summarize(exponents)
        rows.append(("adaptation slope", metrics["re_adaptation_exponent"], "RMSProp -1, none 0"))
    rows.append(("same, state held at h*(0)", metrics["re_clip_only_exponent"], "clipping alone"))
    print(utils.summary_line(title, rows, compile_s, time.perf_counter() - start - compile_s))
    return dict(
        per_seed=per_seed,
        adaptation_exponent_per_seed=exponents,
        compile_s=compile_s,
        metrics=metrics,
    )


def plot_modes(ax: plt.Axes, per_seed: list) -> None:
    """Panel: the modes (|λ_k|, α_k) of each seed's GRU optimizer and the optimal heavy ball."""
    for s, r in enumerate(per_seed):
        ax.plot(np.abs(r["lam"]), r["alpha"], "o", ms=4, color=f"C{s}", label=f"seed {s}")
    ax.plot(*heavy_ball_optimum(1e-3, 1)[::-1], "k*", ms=14, label="optimal heavy ball (β*, α*)")
    ax.set(xlabel="|λ_k| (momentum β_k)", ylabel="α_k", title="GRU optimizer: modes at h*")
    ax.legend(fontsize=7)


def plot_update(ax: plt.Axes, per_seed: list) -> None:
    """Panel: the update Δ(g) at the fixed point against its tangent (clipping)."""
    g = np.linspace(-10, 10, 201)
    for s, r in enumerate(per_seed):
        ax.plot(g, r["update"], color=f"C{s}", label=f"seed {s}")
        ax.plot(
            [-10, 10],
            np.array([-10, 10]) * r["slope0"] + r["update"][100],
            ":",
            color=f"C{s}",
            lw=1,
        )
    ax.set(ylim=(-15, 15), xlabel="g", ylabel="Δ(g) at h*", title="Update (dotted: linear)")
    ax.legend(fontsize=7)


def plot_adaptation(ax: plt.Axes, per_seed: list) -> None:
    """Panel: the local learning rate η(g0) at the fixed points under constant gradients."""
    g0 = np.abs(ADAPTATION_G0)
    positive = ADAPTATION_G0 > 0
    for s, r in enumerate(per_seed):
        ax.plot(
            g0[positive],
            np.abs(r["etas"][positive]),
            "o-",
            ms=3,
            color=f"C{s}",
            label=f"seed {s}, g0 > 0",
        )
        ax.plot(g0[~positive], np.abs(r["etas"][~positive]), "x:", ms=3, color=f"C{s}")
        ax.plot(g0[positive], np.abs(r["etas_clip"][positive]), ":", color=f"C{s}", lw=1)
    eta_ref = np.abs(per_seed[0]["etas"][positive][0]) * g0[positive][0] / g0[positive]
    ax.plot(g0[positive], eta_ref, "k--", lw=1, label="RMSProp-like, η ∝ 1/|g0|")
    ax.set(xscale="log", yscale="log", xlabel="|g0|", ylabel="local learning rate η(g0)")
    ax.set_title("Learning-rate adaptation")
    ax.legend(fontsize=7)


# %% [markdown]
# ## Run everything


# %%
PAPER = {
    "title": "Learned Optimizers that Scale and Generalize; Using a thousand optimization tasks "
    "to learn hyperparameter search strategies; Reverse engineering learned optimizers reveals "
    "known and novel mechanisms",
    "url": "https://arxiv.org/abs/1703.04813",
    "url_taskset": "https://arxiv.org/abs/2002.11887",
    "url_2021": "https://arxiv.org/abs/2011.02159",
    "reproduced": "in part: the 2017 claim that the learned optimizer beats Adam on problems like "
    "its meta-training set (toy scale, on held-out instances); its generalisation is tested, "
    "at 5x the trained horizon and on a held-out family (where our full run loses); TaskSet's "
    "learned list vs random search; the 2021 momentum, clipping, schedule and learning-rate "
    "adaptation",
}
PAPER_VALUES = {
    "claim_2017": "outperforms hand-designed optimizers (Adam, RMSProp) on problems like its "
    "meta-training set and generalises to new ones and to longer horizons: read as win rate "
    "> 0.5 and steps-to-match < 1 against tuned Adam",
    "claim_taskset": "the learned list reaches with 1 setting what random search needs several "
    "trials for (Fig. 7; exact factors not verified here)",
    "heavy_ball_optimum_alpha_beta": list(heavy_ball_optimum(1e-3, 1.0)),
    "rmsprop_adaptation_exponent": -1.0,
    "source": "abstracts and text of arXiv:1703.04813, 2002.11887 and 2011.02159 as summarised "
    "in shared/papers/03_hierarchical_rnn_opt.md; (α*, β*) computed for λ in [1e-3, 1]; no "
    "paper table is reproduced",
}


def make_splits(cfg: Config, seeds: list) -> dict:
    """Per split, per seed: instances (S, N, ...), run keys (S, N) and f(θ0) (S, N)."""

    def one_seed(key):
        k_probs, k_runs = jax.random.split(key)
        probs = make_split(k_probs, cfg)
        f0 = jax.vmap(loss, (0, 0, None))(probs["theta0"], probs, cfg)
        return probs, jax.random.split(k_runs, 4 * cfg.per_family), f0

    build = jax.jit(jax.vmap(one_seed))  # one compile serves the three splits
    splits = {}
    for name, stream in SPLIT_STREAMS.items():
        keys = jnp.stack([jax.random.fold_in(jax.random.key(s), stream) for s in seeds])
        probs, run_keys, f0 = build(keys)
        splits[name] = dict(probs=probs, keys=run_keys, f0=np.asarray(f0))
    return splits


def make_figure(cfg: Config, trained: dict, lists: dict, result: dict, stall: dict, re: dict):
    """Meta-training; test curves; step size; TaskSet; the GRU optimizer's modes, update and
    learning-rate adaptation."""
    fig, ax = plt.subplots(2, 4, figsize=(21, 9))
    ax = ax.ravel()
    plot_meta_training(ax[0], cfg, trained)
    for a, (name, curves) in zip(ax[1:3], result["curves"].items()):
        plot_test_curves(a, cfg, name, curves)
    plot_step_size(ax[3], cfg, stall)
    plot_taskset(ax[4], lists)
    plot_modes(ax[5], re["per_seed"])
    plot_update(ax[6], re["per_seed"])
    plot_adaptation(ax[7], re["per_seed"])
    fig.tight_layout()
    return fig


def parse_config(argv: Union[list, None]) -> tuple:
    """The command line -> (args, Config)."""
    parser = utils.make_parser(
        STEM,
        "Hierarchical RNN learned optimizer (Wichrowska et al. 2017) against tuned Adam, "
        "TaskSet's learned list (Metz et al. 2020), reverse engineering (Maheswaranathan et al. "
        "2021).",
    )
    parser.add_argument("--meta-steps", type=utils.positive_int, help="meta-steps per seed (2000)")
    parser.add_argument("--batch", type=utils.positive_int, help="problems per meta-step (8)")
    parser.add_argument("--meta-lr", type=utils.positive_float, help="meta learning rate (1e-3)")
    parser.add_argument(
        "--meta-lr-end", type=utils.positive_float, help="cosine-decay the meta lr to this"
    )
    parser.add_argument(
        "--meta-clip-norm",
        type=utils.positive_float,
        help="clip the meta-gradient's global norm (default: elementwise at 1)",
    )
    parser.add_argument("--re-steps", type=utils.positive_int, help="GRU optimizer steps (1000)")
    parser.add_argument("--attention", action="store_true", help="look-ahead gradient")
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="also run the meta-training ablation (5 variants, about 8 more minutes)",
    )
    parser.add_argument(
        "--scale",
        choices=("cpu", "paper"),
        default="cpu",
        help="paper: meta-batch 128, 20k meta-steps, for a GPU (default cpu)",
    )
    args = utils.parse_args(parser, argv)
    cfg = Config(**QUICK) if args.quick else Config()
    if args.scale == "paper":
        cfg = replace(cfg, **PAPER_SCALE)
    names = ("meta_steps", "batch", "meta_lr", "meta_lr_end", "meta_clip_norm", "re_steps")
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    cfg = replace(cfg, **given, use_attention=args.attention)
    if "meta_lr" in given and "meta_lr_end" not in given:
        cfg = replace(cfg, meta_lr_end=cfg.meta_lr)
    if cfg.meta_steps % cfg.checkpoint_every:
        parser.error(
            f"--meta-steps must be a multiple of {cfg.checkpoint_every} (the checkpoint "
            f"interval), got {cfg.meta_steps}"
        )
    if cfg.re_steps < 100:
        parser.error(f"--re-steps must be >= 100 (its last 100 are reported), got {cfg.re_steps}")
    return args, cfg


def make_record(args, cfg: Config, seeds: list, parts: dict, compile_s: float, run_s: float):
    """The results JSON: every experiment's metrics, the Adam grid's edges, the adaptation
    exponents, TaskSet's first setting and, with --ablation, the ablation's variants."""
    metrics = {k: v for part in parts.values() for k, v in part["metrics"].items()}
    first = parts["lists"]["first_setting"]
    record = dict(
        script=STEM,
        paper=PAPER,
        config=asdict(cfg),
        quick=args.quick,
        seeds=seeds,
        metrics=metrics,
        adam_grid_edges=parts["adam"]["grid_edges"],
        re_adaptation_exponent_per_seed=parts["re"]["adaptation_exponent_per_seed"],
        taskset_first_setting={k: v.tolist() for k, v in first.items()},
        paper_values=PAPER_VALUES,
        compile_s=compile_s,
        run_s=run_s,
    )
    if "ablation" in parts:
        record["ablation"] = parts["ablation"]["variants"]
    return record


def summary_rows(metrics: dict) -> list:
    """The last line's headline metrics, each beside the paper's claim."""
    return [
        ("win rate vs tuned Adam", metrics["win_rate_vs_tuned_adam"], "paper: > 0.5"),
        ("steps to match", metrics["steps_to_match_ratio"], "paper: < 1"),
        ("held-out MLP win rate", metrics["heldout_family_win_rate"], "paper: > 0.5"),
        ("TaskSet trials to match list@1", metrics["taskset_trials_to_match_list1"], "> 1"),
    ]


def main(argv: Union[list, None] = None) -> dict:
    """Meta-train, tune Adam, build the TaskSet list, race on test, reverse-engineer; save."""
    args, cfg = parse_config(argv)
    utils.enable_compilation_cache()
    t0 = time.perf_counter()
    seeds = list(range(args.seed, args.seed + args.seeds))
    splits = make_splits(cfg, seeds)
    trained = meta_training(cfg, seeds, splits, t0)
    adam = adam_baselines(cfg, splits)
    lists = taskset(cfg, seeds, splits)
    result = learned_vs_adam(cfg, splits, trained, adam, lists)
    stall = stall_diagnosis(cfg, result)
    re = reverse_engineering(cfg, seeds, t0)
    parts = dict(trained=trained, adam=adam, lists=lists, result=result, stall=stall, re=re)
    if args.ablation:
        parts["ablation"] = ablation(cfg, seeds, splits, adam, lists, t0)
    compile_s = sum(part.get("compile_s", 0.0) for part in parts.values())
    run_s = time.perf_counter() - t0 - compile_s
    record = make_record(args, cfg, seeds, parts, compile_s, run_s)
    utils.save_results(args.out, STEM, record, make_figure(cfg, trained, lists, result, stall, re))
    title = f"{STEM}{' (quick)' if args.quick else ''}, {len(seeds)} seeds"
    print(utils.summary_line(title, summary_rows(record["metrics"]), compile_s, run_s))
    return record


# %%
if __name__ == "__main__":
    main()
