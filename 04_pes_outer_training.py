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
# # 04 · Persistent ES, the pathologies of unrolled optimization, and a learned optimizer
#
# Vicol, Metz, Sohl-Dickstein, *Unbiased Gradient Estimation in Unrolled Computation Graphs
# with Persistent Evolution Strategies*, ICML 2021,
# [arXiv:2112.13835](https://arxiv.org/abs/2112.13835); with Metz et al., *Understanding and
# correcting pathologies in the training of learned optimizers*, ICML 2019,
# [arXiv:1810.10180](https://arxiv.org/abs/1810.10180), and Metz et al., *Practical tradeoffs
# between memory, compute, and performance in learned optimizers*, 2022,
# [arXiv:2203.11860](https://arxiv.org/abs/2203.11860).
#
# Meta-gradients through long unrolls are usually taken over short truncations: cheap, but
# biased. PES keeps a persistent state per perturbation and sums the noise since the last reset,
# which makes it unbiased. You will learn three estimators over one `unroll`, why PES is unbiased
# and how its variance grows, why backprop through a chaotic unroll explodes, and how to
# outer-train a tiny MLP optimizer with PES on CPU. Reproduced: the PES paper's two toys, the 2019
# variance pathology, a learned optimizer vs an Adam grid. Run `python 04_pes_outer_training.py`
# (~10 min, 2 CPU cores) or `--quick` (~1 min). Expected: influence balancing θ = −1/6 by PES,
# ≈ +3.3 by TBPTT K=1 and truncated ES; schedule meta-loss < 700 by PES, ≈ 2400 by truncated ES
# and TBPTT; learned optimizer / best Adam mean training loss < 1.

# %%
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import utils


# %%
@dataclass(frozen=True)
class Config:
    ib_lr: float = 1e-4  # influence balancing: outer SGD lr (code: 1e-4)
    ib_steps: int = 3000  # outer iterations (code: 3000)
    ib_pairs: int = 500  # N: antithetic pairs (code: 1000 particles)
    ib_sigma: float = 0.1  # σ: perturbation std (code: 0.1)
    sch_T: int = 100  # 2-D schedule: T inner SGD steps per episode (code: 100)
    sch_K: int = 10  # K: steps per truncation (code: 10)
    sch_pairs: int = 50  # N (code: 100 particles)
    sch_sigma: float = 0.3  # σ (code: 0.3)
    sch_lr: float = 1e-2  # outer Adam lr, β₁ = 0.99 (code: 1e-2)
    sch_steps: int = 3000  # outer iterations (our notes' re-run: 3000)
    path_T: tuple = (10, 30, 100, 300, 1000)  # pathologies: unroll lengths T
    path_thetas: tuple = (0.5, -2.0)  # log lr of a chaotic and a smooth regime (our notes)
    path_sigma: float = 0.1  # σ of the smoothing (our notes)
    path_samples: int = 4000  # samples per variance estimate
    hidden: int = 8  # learned optimizer: H, MLP width, 2 hidden layers (small_fc_lopt: 4)
    lam: float = 1e-2  # λ₁ = λ₂ in Δp = -λ₁ d exp(λ₂ m) (library: 1e-3)
    factored: bool = False  # add the 18 Adafactor-style features (small_fc_lopt: yes)
    n_in: int = 8  # task: student n_in → n_hid → 1 (ReLU) fits a tanh teacher n_in → 16 → 1
    n_hid: int = 32
    batch: int = 32  # fresh examples per inner step
    T: int = 200  # inner steps per episode
    K: int = 10  # truncation length (µLO: 50)
    pairs: int = 8  # antithetic pairs (µLO: 8)
    sigma: float = 0.01  # σ (library default 0.01)
    outer_lr: float = 3e-3  # outer Adam (µLO: 3e-3)
    outer_steps: int = 6000  # PES outer steps (notes: 3000, still improving there)
    eval_tasks: int = 64  # fresh tasks for the evaluation
    adam_lrs: tuple = (3e-3, 1e-2, 2e-2, 3e-2, 5e-2, 1e-1)  # the Adam grid
    chunks: int = 5  # progress lines during outer training


QUICK = dict(sch_steps=1000, path_samples=1000, outer_steps=300, eval_tasks=16, chunks=2)


# %% [markdown]
# ## 1 · One truncation of an unrolled system, and three gradient estimators
# `unroll(theta, state, key) -> (new_state, loss)` runs one truncation (K steps) of an inner
# system and returns its loss $L_\tau$; we want $\nabla_\theta\sum_\tau L_\tau$. **TBPTT**
# differentiates $L_\tau$ with the start state fixed: biased. **Truncated ES** averages
# $\epsilon_i [L_\tau(\theta+\epsilon_i) - L_\tau(\theta-\epsilon_i)]/2\sigma^2$ over
# $\epsilon_i \sim \mathcal N(0, \sigma^2 I)$ from that same state: TBPTT's bias, smoothed. **PES**
# keeps two persistent states per pair, advanced only with $\theta \pm \epsilon_{i,\tau}$, and the
# noise since the reset, $\xi_{i,\tau} = \sum_{j\le\tau}\epsilon_{i,j}$:
#
# $$\hat g^{\text{PES}}_\tau = \frac{1}{N}\sum_i \xi_{i,\tau}
#   \frac{L^+_{i,\tau} - L^-_{i,\tau}}{2\sigma^2}.$$
#
# *Unbiased:* $L_\tau$ depends on every $\theta_j = \theta + \epsilon_j$, $j \le \tau$; Stein's
# identity $E[\epsilon_j L_\tau]/\sigma^2 = E[\partial L_\tau/\partial\theta_j]$ summed over $j$ is
# the total derivative of the smoothed $L_\tau$ (truncated ES keeps only $j = \tau$). *The
# price*, for $L_\tau \approx c + \sum_{j\le\tau} g_j^\top\epsilon_j$ in P dimensions and one pair
# (our derivation): $\operatorname{tr}\operatorname{Var}\hat g_{\text{PES}} = \tau P\sum_j\lVert
# g_j\rVert^2 + \lVert\sum_j g_j\rVert^2$, against $(P+1)\lVert g_\tau\rVert^2$ for truncated ES.
# > A state dict may carry a boolean `done` (episode over, fresh one swapped in): ξ restarts.


# %%
PESState = NamedTuple("PESState", [("pos", Any), ("neg", Any), ("xi", jax.Array)])  # per pair


def init_pes_state(state, num_pairs: int, theta: jax.Array) -> PESState:
    """± states = copies of `state` stacked over pairs, ξ = 0."""
    rep = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (num_pairs,) + jnp.shape(a)), state)
    return PESState(rep, rep, jnp.zeros((num_pairs, theta.size), theta.dtype))


def _antithetic(key, unroll, theta, pos, neg, xi, sigma, num_pairs):
    """One antithetic round, ± unrolls in one vmap; ΔL is weighted by ξ + ε."""
    k_eps, k_run = jax.random.split(key)
    eps = sigma * jax.random.normal(k_eps, (num_pairs, theta.size), theta.dtype)
    keys = jax.random.split(k_run, num_pairs)  # one per pair, shared by ± (common random numbers)
    both = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), pos, neg)
    both, loss = jax.vmap(unroll)(jnp.concatenate([theta + eps, theta - eps]), both,
                                  jnp.concatenate([keys, keys]))
    pos, neg = (jax.tree_util.tree_map(lambda a: a[sl], both)
                for sl in (slice(None, num_pairs), slice(num_pairs, None)))
    grad = (loss[:num_pairs] - loss[num_pairs:]) @ (xi + eps) / (2 * sigma**2 * num_pairs)
    return grad, pos, neg, xi + eps, keys[0]


def tbptt_grad(unroll, theta: jax.Array, state, key: jax.Array):
    """Truncated backprop: ∂L_τ/∂θ with the start state fixed. Returns (grad, new_state)."""
    f = lambda th: unroll(th, state, key)[::-1]  # noqa: E731  (loss, new_state)
    (_, new_state), grad = jax.value_and_grad(f, has_aux=True)(theta)
    return grad, new_state


def tes_grad(key, unroll, theta, state, sigma: float, num_pairs: int):
    """Antithetic truncated ES. Returns (grad, new_state): `state` advanced with the mean θ."""
    grad, *_, key0 = _antithetic(key, unroll, theta, *init_pes_state(state, num_pairs, theta),
                                 sigma, num_pairs)
    return grad, unroll(theta, state, key0)[0]


def pes_grad(key, unroll, theta, pes_state: PESState, sigma: float, num_pairs: int):
    """Persistent ES. Returns (grad, new_pes_state); ξ is zeroed for pairs whose episode ended."""
    grad, pos, neg, xi, _ = _antithetic(key, unroll, theta, *pes_state, sigma, num_pairs)
    done = pos["done"] if isinstance(pos, dict) and "done" in pos else jnp.zeros(num_pairs, bool)
    return grad, PESState(pos, neg, jnp.where(done[:, None], 0.0, xi))


def train_online(method: str, unroll, theta, state, opt, key, steps: int, sigma, num_pairs):
    """Online: an estimate per truncation, then a step of opt = (init, update); θs (steps, P)."""
    grad = {"pes": lambda k, th, e: pes_grad(k, unroll, th, e, sigma, num_pairs),
            "tes": lambda k, th, e: tes_grad(k, unroll, th, e, sigma, num_pairs),
            "tbptt": lambda k, th, e: tbptt_grad(unroll, th, e, k)}[method]

    def step(c, k):
        g, est = grad(k, c[0], c[2])
        theta, opt_state = opt[1](g, c[1], c[0])
        return (theta, opt_state, est), theta
    est = init_pes_state(state, num_pairs, theta) if method == "pes" else state
    return jax.lax.scan(step, (theta, opt[0](theta), est), jax.random.split(key, steps))[1]


# %% [markdown]
# ## 2 · Two toys where truncation bias bites (the PES paper's)
# **Influence balancing** (after Tallec & Ollivier): 23 units, $s_{t+1} = A s_t + \theta b$ with
# $A = \tfrac12 I + \tfrac12(\text{superdiagonal})$, $b = (+1 \times 10, -1 \times 13)$, $s_0 = 1$,
# never reset; each truncation's loss is $\tfrac12(s[0] - 1)^2$ at its end. The steady state
# $s^* = (I - A)^{-1} b\,\theta$ has $s^*[0] = 2\theta\sum_k b_k = -6\theta$, so $\theta^* = -1/6$.
# But the K-step sensitivity $c_K = \sum_{j<K}(A^j b)[0]$ is $+K$ for $K \le 10$: a short
# truncation sees only the positive units and pushes θ the wrong way.
#
# **The 2-D learning-rate schedule** (`toy_regression.py`): $f(x) = \sqrt{x_0^2+5} - \sqrt5 +
# \sin^2(x_1)e^{-5x_0^2} + \tfrac14|x_1 - 100|$ from $x = (1, 1)$, $T = 100$ SGD steps at
# $\eta_t = e^{\theta_0}(1 - t/T) + e^{\theta_1}t/T$, meta-loss $\sum_t f(x_t)$; truncations of 10.
# Short truncations prefer small rates that avoid the oscillating valley; only the full horizon
# sees that a large early rate pays.


# %%
def ib_closed_form(n: int = 23, Ks=(1, 5, 10, 20, 30, 50, 100)):
    """θ* from the linear solve, and c_K (sensitivity of s_K[0] to θ) for each K."""
    A, b = 0.5 * np.eye(n) + 0.5 * np.eye(n, k=1), np.r_[np.ones(10), -np.ones(n - 10)]
    c_K = {K: float(sum(np.linalg.matrix_power(A, j) @ b for j in range(K))[0]) for K in Ks}
    return 1.0 / np.linalg.solve(np.eye(n) - A, b)[0], c_K


def make_ib_unroll(K: int, n: int = 23):
    """One truncation of K steps; A·s written as a shift (no 23×23 matmul)."""
    b = jnp.concatenate([jnp.ones(10), -jnp.ones(n - 10)])

    def unroll(theta, s, key):
        step = lambda s, _: (0.5 * s + 0.5 * jnp.append(s[1:], 0.0) + theta[0] * b, None)  # noqa
        s = jax.lax.scan(step, s, None, length=K)[0]
        return s, 0.5 * (s[0] - 1.0) ** 2
    return unroll


def sch_f(x: jax.Array) -> jax.Array:
    return (jnp.sqrt(x[0] ** 2 + 5) - jnp.sqrt(5.0) + jnp.sin(x[1]) ** 2 * jnp.exp(-5 * x[0] ** 2)
            + 0.25 * jnp.abs(x[1] - 100))


def make_sch_unroll(K: int, T: int = 100):
    """K SGD steps of the schedule toy on the state dict(x, t, done)."""
    def unroll(theta, state, key):
        def step(c, _):
            x, t = c
            lr = (1 - t / T) * jnp.exp(theta[0]) + t / T * jnp.exp(theta[1])  # η_t
            x = x - lr * jax.grad(sch_f)(x)
            return (x, t + 1), sch_f(x)
        (x, t), losses = jax.lax.scan(step, (state["x"], state["t"]), None, length=K)
        done = t >= T  # the episode ended: start the next one from x = (1, 1)
        return dict(x=jnp.where(done, 1.0, x), t=jnp.where(done, 0, t), done=done), losses.sum()
    return unroll


def sch_meta_loss(theta: jax.Array) -> jax.Array:  # the full-unroll meta-loss Σ_t f(x_t)
    return make_sch_unroll(100)(theta, dict(x=jnp.ones(2), t=0), None)[1]


# %% [markdown]
# ## 3 · The pathologies of unrolled optimization (Metz et al. 2019)
# Same $f$, SGD at a constant rate $e^\theta$, $L_T(\theta) = \frac1T\sum_{t\le T} f(x_t)$. Backprop
# $g_{\text{rp}} = \tfrac12[\nabla L(\theta+\epsilon) + \nabla L(\theta-\epsilon)]$ and ES
# $g_{\text{es}} = \epsilon[L(\theta+\epsilon) - L(\theta-\epsilon)]/2\sigma^2$ both estimate the
# smoothed gradient. In a chaotic regime backprop multiplies T Jacobians of norm > 1 and its
# variance explodes; ES sees only the bounded loss. So weight them by inverse variance:
# $$\hat g = w\,\bar g_{\text{rp}} + (1 - w)\,\bar g_{\text{es}},\qquad
#   w = v_{\text{rp}}^{-1}/(v_{\text{rp}}^{-1} + v_{\text{es}}^{-1}).$$
# > θ is a scalar, so one forward-mode pass (`jax.jvp`) gives $d\ell_t/d\theta$ for every t: the
# > backprop gradient for every T at once. Beyond T ≈ 100 it overflows float32 (variance ∞).


# %%
def path_estimates(key, theta: float, Ts, sigma: float, samples: int):
    """(g_rp, g_es), each (samples, len(Ts)): antithetic samples of both estimators per T."""
    idx, t_max = jnp.asarray(Ts) - 1, max(Ts)

    def losses(th):  # per-step losses ℓ_t, t = 1..t_max, of SGD at lr e^θ
        step = lambda x, _: (x - jnp.exp(th) * jax.grad(sch_f)(x),) * 2  # noqa: E731
        return jax.vmap(sch_f)(jax.lax.scan(step, jnp.ones(2), None, length=t_max)[1])

    def one(e):
        prefix = lambda v: (jnp.cumsum(v) / jnp.arange(1, t_max + 1))[idx]  # noqa: E731  L_T
        (lp, gp), (lm, gm) = (jax.jvp(losses, (theta + s,), (jnp.ones(()),)) for s in (e, -e))
        return 0.5 * (prefix(gp) + prefix(gm)), e * (prefix(lp) - prefix(lm)) / (2 * sigma**2)
    return jax.vmap(one)(sigma * jax.random.normal(key, (samples,)))


def combine(g_rp: jax.Array, g_es: jax.Array):
    """Inverse-variance combination over axis 0 (es_grad_inv_var.py): (ĝ, w_rp, v_rp, v_es)."""
    v_rp, v_es = jnp.var(g_rp, 0) + 1e-8, jnp.var(g_es, 0) + 1e-8
    w_rp = jnp.where(jnp.isfinite(v_rp), (1 / v_rp) / (1 / v_rp + 1 / v_es), 0.0)
    mean_rp = jnp.where(w_rp > 0, jnp.mean(g_rp, 0), 0.0)
    v_rp = jnp.where(jnp.isfinite(v_rp), v_rp, jnp.inf)
    return w_rp * mean_rp + (1 - w_rp) * jnp.mean(g_es, 0), w_rp, v_rp, v_es


# %% [markdown]
# ## 4 · A small per-parameter learned optimizer (small_fc_lopt-like), outer-trained by PES
# Per element: $g$, $p$, momenta $m$ (0.9/0.99/0.999), second moment $v$ (0.999), $m v^{-1/2}$,
# $v^{-1/2}$, optionally 18 Adafactor-style features (a factored $v \approx$ row ⊗ col / mean(row)
# at 3 decays: $g$, $m$ scaled by it, row, col, their rsqrt); each column divided by its RMS over
# the tensor; then 11 time features $\tanh(t/s - 1)$, $s = 1, 3, \dots, 10^5$. A 2-hidden-layer
# ReLU MLP outputs $(d, m)$, and (with learned decays $\beta = 1 - (1 - \beta_0)e^{10\delta}$)
#
# $$\Delta p = -\lambda_1\, d\, \exp(\lambda_2 m).$$
#
# | per step, per parameter | meta-params | state floats | MLP multiply-adds |
# |---|---|---|---|
# | ours (10 + 11 inputs, H = 8) | 270 | 4 (m ×3, v) | 21·8 + 8·8 + 8·2 = 248 |
# | small_fc_lopt layout (factored, H = 4) | 197 | 4 + 3·(rows + cols) | 39·4 + 16 + 8 = 180 |
# | Adam | 1 (lr) | 2 | none (≈ 10 flops in all) |
# > Our counts, not the tradeoffs paper's. Inner parameters: one flat vector (compiles faster).
#
# **Outer training.** A task: a random tanh teacher 8→16→1, a ReLU student 8→32→1 (321 params),
# fresh batches of 32, MSE, T = 200 steps. Meta-loss: mean per-step loss, clipped at 3, NaN ↦ 3.
# Pairs start at staggered steps in $\{0, K, \dots, T-K\}$ so resets do not come in lockstep; the
# outer Adam sees the gradient clipped at ±3, NaN ↦ 0. Evaluation: fresh tasks, vs an Adam grid.


# %%
DECAYS = (0.9, 0.99, 0.999, 0.999, 0.9, 0.99, 0.999)  # β₀: m ×3, v, factored ×3
TIME_SCALES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5)


def task_shapes(cfg: Config):  # the student's W1, b1, W2, b2
    return ((cfg.n_in, cfg.n_hid), (cfg.n_hid,), (cfg.n_hid, 1), (1,))


def meta_shapes(cfg: Config):  # the MLP's W1, b1, W2, b2, W3, b3 and the decay offsets δ
    F, H = (28 if cfg.factored else 10) + len(TIME_SCALES), cfg.hidden
    return ((F, H), (H,), (H, H), (H,), (H, 2), (2,), (7 if cfg.factored else 4,))


def split_flat(v: jax.Array, shapes):  # consecutive static slices of axis 0, reshaped
    ends = np.cumsum([int(np.prod(s)) for s in shapes])
    return [v[e - int(np.prod(s)):e].reshape(s + v.shape[1:]) for s, e in zip(shapes, ends)]


def lopt_init(key, cfg: Config) -> jax.Array:
    """Flat meta-parameters θ: truncated-normal weights (std 1/√fan_in), zero biases, δ = 0."""
    keys = iter(jax.random.split(key, 3))
    parts = [jax.random.truncated_normal(next(keys), -2, 2, s) / np.sqrt(s[0]) if len(s) == 2
             else jnp.zeros(s) for s in meta_shapes(cfg)]
    return jnp.concatenate([p.ravel() for p in parts])


def lopt_update(theta, p, g, state, t, cfg: Config):
    """One learned-optimizer step on the flat inner params p (n,). Returns (new_p, new_state)."""
    W1, b1, W2, b2, W3, b3, delta = split_flat(theta, meta_shapes(cfg))
    beta = jnp.clip(1 - (1 - jnp.asarray(DECAYS[:len(delta)])) * jnp.exp(10 * delta), 0, 1 - 1e-7)
    m = beta[:3] * state["m"] + (1 - beta[:3]) * g[:, None]  # (n, 3)
    v = beta[3] * state["v"] + (1 - beta[3]) * g**2  # (n,)
    rs, new = jax.lax.rsqrt(v + 1e-8)[:, None], dict(m=m, v=v)
    x = jnp.concatenate([g[:, None], p[:, None], m, v[:, None], m * rs, rs], 1)  # (n, 10)
    flat = [(int(np.prod(s)),) for s in task_shapes(cfg)]
    if cfg.factored:  # Adafactor-style: v ≈ row ⊗ col / mean(row), at the 3 decays beta[4:]
        feats, new["fac"], b, rsqrt = [], [], beta[4:, None], jax.lax.rsqrt
        for acc, gi, mi in zip(state["fac"], split_flat(g, flat), split_flat(m, flat)):
            (_, r), (_, c) = acc["row"].shape, acc["col"].shape
            g2 = gi.reshape(r, c) ** 2 + 1e-30
            row, col = b * acc["row"] + (1 - b) * g2.mean(1), b * acc["col"] + (1 - b) * g2.mean(0)
            R, C = jnp.repeat(row, c, axis=1), jnp.tile(col, (1, r))  # (3, size)
            scale = rsqrt(R / row.mean(1, keepdims=True) * C)  # 1/√v
            feats.append(jnp.concatenate([gi * scale, R, C, rsqrt(R), rsqrt(C), mi.T * scale]).T)
            new["fac"].append(dict(row=row, col=col))
        x = jnp.concatenate([x, jnp.concatenate(feats)], 1)  # (n, 28)
    x = jnp.concatenate([c * jax.lax.rsqrt(1e-5 + jnp.mean(c**2, 0)) for c in split_flat(x, flat)])
    tf = jnp.broadcast_to(jnp.tanh(t / jnp.asarray(TIME_SCALES) - 1.0), (len(p), len(TIME_SCALES)))
    h = jax.nn.relu(jax.nn.relu(jnp.concatenate([x, tf], 1) @ W1 + b1) @ W2 + b2)
    d, mag = (h @ W3 + b3).T
    return p - cfg.lam * d * jnp.exp(cfg.lam * mag), new


def new_task(key, cfg: Config, t0=0) -> dict:
    """Fresh teacher and student at step t0; optimizer state m (n, 3), v (n,) and, factored,
    row (3, r) and col (3, c) per tensor, a vector being a column (its rows: the full v)."""
    k1, k2, k3, k4, k_data = jax.random.split(key, 5)
    n, h, normal = cfg.n_in, cfg.n_hid, jax.random.normal
    teacher = jnp.r_[normal(k1, (n * 16,)) / np.sqrt(n), normal(k2, (16,)) / 4.0]
    p = jnp.r_[normal(k3, (n * h,)) / np.sqrt(n), jnp.zeros(h), normal(k4, (h,)) / np.sqrt(h), 0.0]
    opt = dict(m=jnp.zeros((p.size, 3)), v=jnp.zeros(p.size))
    if cfg.factored:
        opt["fac"] = [dict(row=jnp.zeros((3, s[0])), col=jnp.zeros((3, int(np.prod(s[1:])))))
                      for s in task_shapes(cfg)]
    return dict(p=p, opt=opt, t=jnp.asarray(t0, jnp.int32), teacher=teacher,
                data=jax.random.key_data(k_data), done=jnp.zeros((), bool))


def task_loss(p, task, t, cfg: Config):
    """MSE of the student on step t's batch (which depends only on the task and t)."""
    x = jax.random.normal(jax.random.fold_in(jax.random.wrap_key_data(task["data"]), t),
                          (cfg.batch, cfg.n_in))
    tw1, tw2 = split_flat(task["teacher"], ((cfg.n_in, 16), (16,)))
    W1, b1, W2, b2 = split_flat(p, task_shapes(cfg))
    return jnp.mean(((jax.nn.relu(x @ W1 + b1) @ W2 + b2)[:, 0] - jnp.tanh(x @ tw1) @ tw2) ** 2)


def lopt_inner_step(theta, c, cfg: Config):
    """One inner step with the learned optimizer; returns (state, loss before the step)."""
    loss, g = jax.value_and_grad(task_loss)(c["p"], c, c["t"], cfg)
    p, opt = lopt_update(theta, c["p"], g, c["opt"], c["t"], cfg)
    return dict(c, p=p, opt=opt, t=c["t"] + 1), loss


def make_lopt_unroll(cfg: Config):
    """One truncation of K inner steps; a new task (from the pair's key) once t reaches T."""
    def unroll(theta, state, key):
        c, losses = jax.lax.scan(lambda c, _: lopt_inner_step(theta, c, cfg), state, None, cfg.K)
        meta = jnp.minimum(jnp.nan_to_num(losses, nan=3.0), 3.0).mean()  # clip, NaN → 3
        done = c["t"] >= cfg.T
        c = jax.tree_util.tree_map(lambda a, b: jnp.where(done, a, b), new_task(key, cfg), c)
        return dict(c, done=done), meta
    return unroll


def make_outer(cfg: Config):
    """(init(key), run(carry, n)): n PES outer steps with Adam; vmap both over outer seeds."""
    unroll, (adam_init, adam_update) = make_lopt_unroll(cfg), utils.adam(cfg.outer_lr)

    def init(key):
        k_theta, k_tasks, k_off, key = jax.random.split(key, 4)
        theta = lopt_init(k_theta, cfg)
        t0 = cfg.K * jax.random.randint(k_off, (cfg.pairs,), 0, cfg.T // cfg.K)  # staggered
        s = jax.vmap(new_task, (0, None, 0))(jax.random.split(k_tasks, cfg.pairs), cfg, t0)
        return dict(theta=theta, opt=adam_init(theta), key=key,
                    pes=PESState(s, s, jnp.zeros((cfg.pairs, theta.size))))

    def step(c, _):
        key, k = jax.random.split(c["key"])
        g, pes = pes_grad(k, unroll, c["theta"], c["pes"], cfg.sigma, cfg.pairs)
        g = jnp.clip(jnp.where(jnp.isfinite(g), g, 0.0), -3.0, 3.0)  # GradientClipOptimizer
        theta, opt = adam_update(g, c["opt"], c["theta"])
        return dict(theta=theta, opt=opt, pes=pes, key=key), None
    return init, lambda c, n: jax.lax.scan(step, c, None, length=n)[0]


def eval_curves(theta, keys, cfg: Config, lrs=None):
    """Loss curves on fresh tasks: learned optimizer (tasks, T), or Adam per lr (lrs, tasks, T)."""
    def adam(lr, key):
        (init, update), task = utils.adam(lr), new_task(key, cfg)

        def step(c, t):
            loss, g = jax.value_and_grad(task_loss)(c[0], task, t, cfg)
            return update(g, c[1], c[0]), loss
        return jax.lax.scan(step, (task["p"], init(task["p"])), jnp.arange(cfg.T))[1]
    if lrs is not None:
        return jax.vmap(lambda lr: jax.vmap(lambda k: adam(lr, k))(keys))(jnp.asarray(lrs))
    step = lambda c, _: lopt_inner_step(theta, c, cfg)  # noqa: E731
    return jax.vmap(lambda k: jax.lax.scan(step, new_task(k, cfg), None, cfg.T)[1])(keys)


def make_figure(cfg, sch, path, lo) -> plt.Figure:
    """Schedule surface + trajectories; variance vs unroll length; learned optimizer vs Adam."""
    fig, ax = plt.subplots(1, 3, figsize=(18, 4.8), layout="tight")
    g0, g1, surf = sch.pop("grid")
    fig.colorbar(ax[0].contourf(g0, g1, np.log10(surf), 30), ax=ax[0], label="log10 meta-loss")
    for name, tr in sch.items():
        ax[0].plot(tr[:, 0], tr[:, 1], label=name, lw=1.5)
    i = np.unravel_index(np.argmin(surf), surf.shape)
    ax[0].plot(g0[i], g1[i], "w*", ms=12, label="grid optimum")
    ax[0].set(xlabel="θ₀ (log lr at t=0)", ylabel="θ₁ (log lr at t=T)", title="2-D schedule")
    for j, th in enumerate(cfg.path_thetas):
        for kind, ls, lab in (("v_rp", "-o", "backprop"), ("v_es", "--o", "ES")):
            ax[1].plot(cfg.path_T, np.minimum(path[th][kind], 1e38), ls, c=f"C{j}",
                       label=f"{lab}, θ={th}")
    ax[1].set(xscale="log", yscale="log", xlabel="unroll length T", ylabel="gradient variance",
              title="Pathologies (1e38: float32 overflow)")
    mu, sd, steps = lo["curve"].mean(0), lo["curve"].std(0), np.arange(1, cfg.T + 1)
    ax[2].plot(steps, mu, color="C3", label="learned optimizer (PES), ± std over outer seeds")
    ax[2].fill_between(steps, mu - sd, mu + sd, color="C3", alpha=0.2)
    ax[2].plot(steps, lo["adam"], color="k", label=f"Adam, best lr of the grid ({lo['lr']:g})")
    ax[2].set(yscale="log", xlabel="inner step", ylabel="training loss (mean over fresh tasks)",
              title="Learned optimizer vs tuned Adam")
    for a in ax:
        a.legend(fontsize=7)
    return fig


PAPER = {"title": "Unbiased Gradient Estimation in Unrolled Computation Graphs with Persistent "
         "Evolution Strategies", "url": "https://arxiv.org/abs/2112.13835", "reproduced":
         "influence balancing, 2-D schedule toy; Metz 2019 variance; learned optimizer vs Adam"}
NOTES = {"theta_star": -1 / 6, "theta_tes_influence": 3.26, "schedule_grid_min": 558.4,
         "schedule_loss_pes": 561.8, "schedule_loss_tes": 2423, "lopt_to_adam_ratio": 0.91,
         "source": "θ* closed form; the rest: re-runs of the authors' code, a one-seed prototype "
         "(shared/papers/04); the papers give curves, not these numbers"}


def main(argv=None) -> dict:
    """All four experiments; saves JSON + PNG and prints one summary line."""
    p = utils.make_parser(
        "04_pes_outer_training",
        "PES (Vicol et al. 2021), pathologies, a PES-trained learned optimizer.",
    )
    p.add_argument("--outer-steps", type=utils.positive_int, help="PES outer steps, an integer > 0")
    p.add_argument("--pairs", type=utils.positive_int, help="antithetic pairs for the optimizer")
    p.add_argument("--factored", action="store_const", const=True, help="Adafactor features")
    args = utils.parse_args(p, argv)
    cfg = replace(Config(**QUICK) if args.quick else Config(), **{
        f: v for f in ("outer_steps", "pairs", "factored") if (v := getattr(args, f)) is not None})
    utils.enable_compilation_cache()
    t0, compile_s, S, cache, m = time.perf_counter(), 0.0, utils.summarize, {}, {}
    seeds = list(range(args.seed, args.seed + args.seeds))
    keys = jax.vmap(lambda s: jax.random.split(jax.random.key(s), 4))(jnp.asarray(seeds))  # (S, 4)

    def timed(name, fn, *a):  # jit, compile once per name (timed), run
        nonlocal compile_s
        if name not in cache:
            tc = time.perf_counter()
            cache[name] = jax.jit(fn).lower(*a).compile()
            compile_s += time.perf_counter() - tc
        return cache[name](*a)

    sgd = (lambda th: (), lambda g, s, th: (th - cfg.ib_lr * g, ()))  # plain SGD, from θ = 0.5
    for name, method, K in [("PES", "pes", 1), ("truncated ES", "tes", 1), ("TBPTT", "tbptt", 1),
                            ("TBPTT", "tbptt", 10), ("TBPTT", "tbptt", 100)]:
        train = lambda k: train_online(method, make_ib_unroll(K), jnp.full(1, 0.5),  # noqa: E731
                                       jnp.ones(23), sgd, k, cfg.ib_steps, cfg.ib_sigma,
                                       cfg.ib_pairs)
        th = np.asarray(timed(f"{name}{K}", jax.vmap(train), keys[:, 0]))[..., 0]  # (S, steps)
        if K == 10:  # it overflows: we report the step where |θ| passed 1e6 instead
            diverged_at = int(np.argmax(~(np.abs(th[0]) < 1e6)))
        else:
            m[f"theta_{method}{K if method == 'tbptt' else ''}_influence"] = S(th[:, -1])
        utils.progress(t0, f"influence {name} K={K}", cfg.ib_steps, cfg.ib_steps, theta=th[0, -1])
    sch, path, opt = {}, {}, utils.adam(cfg.sch_lr, b1=0.99)  # Adam from θ = (-4, -4)
    for name, method in [("PES", "pes"), ("truncated ES", "tes"), ("TBPTT", "tbptt")]:
        train = lambda k: train_online(  # noqa: E731
            method, make_sch_unroll(cfg.sch_K, cfg.sch_T), jnp.full(2, -4.0),
            dict(x=jnp.ones(2), t=0, done=False), opt, k, cfg.sch_steps, cfg.sch_sigma,
            cfg.sch_pairs)
        tr = timed(method, jax.vmap(train), keys[:, 1])
        sch[name], m[f"schedule_loss_{method}"] = tr[0], S(jax.vmap(sch_meta_loss)(tr[:, -1]))
        utils.progress(t0, f"schedule {name}", 1, 1, meta_loss=m[f"schedule_loss_{method}"]["mean"])
    g0, g1 = np.meshgrid(*[np.linspace(-5.0, 4.0, 46, dtype=np.float32)] * 2)
    surf = np.asarray(jax.jit(jax.vmap(sch_meta_loss))(np.c_[g0.ravel(), g1.ravel()]))
    sch["grid"], m["schedule_grid_min"] = (g0, g1, surf.reshape(g0.shape)), S([surf.min()])
    for th in cfg.path_thetas:
        est = lambda k: jnp.stack(combine(*path_estimates(k, th, cfg.path_T, cfg.path_sigma,  # noqa
                                                          cfg.path_samples)))
        out = np.asarray(timed(th, jax.vmap(est), keys[:, 2]))  # (seeds, ĝ|w_rp|v_rp|v_es, T)
        path[th] = dict(v_rp=out[0, 2], v_es=out[0, 3])
        m.update({f"w_rp_theta{th}_T{T}": S(out[:, 1, i]) for i, T in enumerate(cfg.path_T)})
        utils.progress(t0, f"pathologies θ={th}", 1, 1, w_rp_T10=out[0, 1, 0])
    init, run = make_outer(cfg)  # the learned optimizer, vmapped over outer seeds
    carry = jax.jit(jax.vmap(init))(keys[:, 3])
    eval_keys = jax.random.split(jax.random.key(10_000 + args.seed), cfg.eval_tasks)
    adam = np.nan_to_num(timed("adam", lambda k: eval_curves(None, k, cfg, cfg.adam_lrs),
                               eval_keys), nan=np.inf)  # (lrs, tasks, T); diverged: never best
    best = int(np.argmin(adam.mean((1, 2))))
    lopt_eval = jax.vmap(lambda th: eval_curves(th, eval_keys, cfg))
    ev = lambda c: np.asarray(timed("ev", lopt_eval, c["theta"]))  # noqa: E731 (seeds, tasks, T)
    hist, done = [ev(carry).mean()], 0
    for i in range(cfg.chunks):
        n = cfg.outer_steps // cfg.chunks + (cfg.outer_steps % cfg.chunks if i == 0 else 0)
        carry, done = timed(n, jax.vmap(lambda c: run(c, n)), carry), done + n
        hist.append((curves := ev(carry)).mean())
        utils.progress(t0, "PES outer training", done, cfg.outer_steps, eval_mean_loss=hist[-1])
    utils.check_finite(curves.mean((0, 1)), "lopt eval loss", "more --pairs", np.arange(cfg.T))
    m.update(lopt_mean_loss=S(curves.mean((1, 2))), adam_best_mean_loss=S([adam[best].mean()]),
             lopt_to_adam_mean_loss_ratio=S(curves.mean((1, 2)) / adam[best].mean()),
             lopt_to_adam_final_loss_ratio=S(curves[:, :, -10:].mean((1, 2))
                                             / adam[:, :, -10:].mean((1, 2)).min()))
    run_s = time.perf_counter() - t0 - compile_s
    fin = lambda v: np.minimum(np.asarray(v, np.float64), 1e300).tolist()  # noqa: E731 1e300: inf
    record = {
        "script": "04_pes_outer_training", "paper": PAPER, "config": asdict(cfg),
        "quick": args.quick, "seeds": seeds, "metrics": m, "c_K": ib_closed_form()[1],
        "tbptt10_diverged_at_step": diverged_at, "paper_values": NOTES,
        "variance_vs_T": {str(th): {k: fin(v) for k, v in path[th].items()} for th in path},
        "adam_grid_mean_loss": dict(zip(map(str, cfg.adam_lrs), fin(adam.mean((1, 2))))),
        "outer_eval_mean_loss": fin(hist), "meta_params": int(carry["theta"].shape[-1]),
        "compile_s": compile_s, "run_s": run_s}
    fig = make_figure(cfg, sch, path, dict(curve=curves.mean(1), adam=adam[best].mean(0),
                                           lr=cfg.adam_lrs[best]))
    utils.save_results(args.out, "04_pes_outer_training", record, fig)
    f = lambda k, d=4: f"{m[k]['mean']:.{d}g} ± {m[k]['std']:.2g}"  # noqa: E731
    print(f"04_pes_outer_training{' (quick)' * args.quick}, {len(seeds)} seeds: influence θ "
          f"PES {f('theta_pes_influence', 6)} (θ* -0.166667), TES {f('theta_tes_influence')} "
          f"(notes 3.26); schedule loss PES {f('schedule_loss_pes')} (notes 562, grid min "
          f"{surf.min():.0f}), TES {f('schedule_loss_tes')} (notes 2423); learned opt / best Adam "
          f"mean loss {f('lopt_to_adam_mean_loss_ratio', 3)} (notes 0.91, 1 seed); compile "
          f"{compile_s:.0f} s, run {run_s:.0f} s")
    return record


if __name__ == "__main__":
    main()
