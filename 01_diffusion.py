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
# # 01 · Diffusion probabilistic models: swiss roll and binary heartbeat
#
# Sohl-Dickstein, Weiss, Maheswaranathan, Ganguli, *Deep Unsupervised Learning using
# Nonequilibrium Thermodynamics*, ICML 2015, [arXiv:1503.03585](https://arxiv.org/abs/1503.03585)
# (numbers from arXiv v8).
#
# The paper that started diffusion models: destroy the data's structure with many small noise
# steps (the forward process q), then learn to undo each step (the reverse process p). You will
# learn the Gaussian forward kernel and its marginal, the posterior q(xᵗ⁻¹|xᵗ,x⁰), the reverse
# kernel as a learned perturbation of the forward one (untrained, it is the "null model"), the
# bound K on the log-likelihood (and why it needs data with unit second moment), the per-step
# entropy bounds, the binomial variant, and conditioning by clamping (§2.5).
#
# Reproduced: Table 1's first two rows, a Fig. 1-like panel and heartbeat samples. Run
# `python 01_diffusion.py` (a few minutes on 2 CPU cores) or `--quick`. Expected: swiss roll
# K ≈ 1.7 bits (paper 2.35; β₁ and the roll are unstated, so we print the exact ceiling beside
# K), heartbeat K ≈ −2.75 bits/seq (paper −2.414, truth −2.322), over 90% of samples valid.

# %%
import time
from dataclasses import asdict, dataclass, replace

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import utils

LN2 = float(np.log(2.0))


# %%
@dataclass(frozen=True)
class Config:
    # swiss roll (paper values from App. D.1.1; where the paper is silent we say so)
    T: int = 40  # T: Gaussian diffusion steps (paper: 40)
    beta1: float = 1e-5  # β₁: fixed first step (paper: "small", value not stated)
    beta_T: float = 0.5  # β_T: logit β_t linear from β₁ to β_T (paper learns β₂…T; its fn. 2)
    hidden: int = 64  # RBF units shared over t (paper: 16, which reach K ≈ −0.1 bits here)
    phi_lo: float = 1.5 * np.pi  # roll angle φ ~ U[phi_lo, phi_hi] (paper: not stated)
    phi_hi: float = 4.5 * np.pi
    roll_steps: int = 3000  # Adam steps (paper: SFO, steps not stated)
    roll_batch: int = 256  # points per step, each with all T − 1 KL terms
    roll_lr: float = 3e-2  # peak Adam learning rate, cosine decay (ours)
    n_test: int = 5000  # held-out points for K and for the ceiling E log q(x¹)
    clamp_x1: float = 0.5  # a: clamp x₁ = a for conditional sampling (ours, §2.5)
    # binary heartbeat (App. D.1.2)
    seq_len: int = 20  # sequence length (paper: 20, a 1 every 5th bin)
    period: int = 5
    T_bin: int = 2000  # binomial diffusion steps (paper: 2000)
    p: float = 0.2  # π = B(p) per bit (paper: 0.2)
    width: int = 50  # MLP 20-50-50-50 with sigmoid units (paper)
    bumps: int = 20  # J: temporal bumps sharing the readout over t (paper: one readout per t)
    beat_steps: int = 2000  # Adam steps (paper: SFO)
    beat_batch: int = 512
    beat_lr: float = 1e-2
    beat_test_reps: int = 20  # full-sum K evaluations per valid sequence
    n_samples: int = 500  # samples per seed (both problems)
    chunks: int = 4  # progress lines per training run


QUICK = dict(roll_steps=400, beat_steps=400, n_test=1000, beat_test_reps=4, n_samples=200, chunks=2)


# %% [markdown]
# ## The swiss roll and the forward process
# Data: φ ~ U[1.5π, 4.5π], x⁰ = s·(φ cos φ, φ sin φ), no noise. The paper scales its data "by a
# constant to give them variance 1"; we pick s so that E‖x⁰‖² = d = 2 exactly, using
# E φ² = (a² + ab + b²)/3 (the bound section shows why this matters).
#
# $q(x^t|x^{t-1}) = \mathcal N(x^t; \sqrt{1-\beta_t}\,x^{t-1}, \beta_t I)$ with stationary
# $\pi = \mathcal N(0, I)$. With $\bar\alpha_t = \prod_{s\le t}(1-\beta_s)$ the marginal is
#
# $$q(x^t|x^0) = \mathcal N\big(\sqrt{\bar\alpha_t}\,x^0,\ (1-\bar\alpha_t) I\big).$$
#
# > β is a *variance*. Two public re-implementations pass β as the standard deviation; their
# > xᵀ never reaches N(0, I). We compute 1 − ᾱ as −expm1(Σ log(1 − β)): with β₁ = 1e-5,
# > float32 `1 - cumprod` would lose half the digits.
#
# ## The posterior of one forward step, and the Gaussian KL
# Given x⁰ the step back is Gaussian too (Bayes on two linear-Gaussian factors):
#
# $$q(x^{t-1}|x^t,x^0) = \mathcal N(\tilde\mu_t, \tilde\sigma_t^2 I),\quad
# \tilde\sigma_t^2 = \frac{\beta_t(1-\bar\alpha_{t-1})}{1-\bar\alpha_t},\quad
# \tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t\,x^0
#   + \sqrt{1-\beta_t}\,(1-\bar\alpha_{t-1})\,x^t}{1-\bar\alpha_t}.$$
#
# Per dimension, $D_{KL} = \log\frac{\sigma_p}{\sigma_q} + \frac{\sigma_q^2 +
# (\mu_q-\mu_p)^2}{2\sigma_p^2} - \frac12$.


# %%
def roll_points(phi, cfg: Config) -> jax.Array:
    """Points (..., 2) on the standardized roll, E|x⁰|² = 2 over φ ~ U[lo, hi]."""
    a, b = cfg.phi_lo, cfg.phi_hi
    s, xp = np.sqrt(2.0 / ((a * a + a * b + b * b) / 3)), np if isinstance(phi, np.ndarray) else jnp
    return s * phi[..., None] * xp.stack([xp.cos(phi), xp.sin(phi)], -1)


def make_swiss_roll(key: jax.Array, n: int, cfg: Config) -> jax.Array:
    """n points x⁰ (n, 2) of the standardized swiss roll."""
    return roll_points(jax.random.uniform(key, (n,), minval=cfg.phi_lo, maxval=cfg.phi_hi), cfg)


def gaussian_betas(cfg: Config) -> jax.Array:
    """β_1..β_T (T,): logit-linear from β₁ to β_T (a fixed schedule, as footnote 2 allows)."""
    logit = lambda b: np.log(b / (1 - b))  # noqa: E731
    return jax.nn.sigmoid(jnp.linspace(logit(cfg.beta1), logit(cfg.beta_T), cfg.T))


def one_minus_alpha_bar(betas: jax.Array) -> jax.Array:
    """1 − ᾱ_t for t = 0..T (T+1,), with 1 − ᾱ_0 = 0."""
    return -jnp.expm1(jnp.concatenate([jnp.zeros(1), jnp.cumsum(jnp.log1p(-betas))]))


def q_sample(key: jax.Array, x0: jax.Array, t, betas: jax.Array) -> jax.Array:
    """xᵗ ~ q(xᵗ|x⁰); the 1-based t broadcasts against x0."""
    om = one_minus_alpha_bar(betas)[t]
    eps = jax.random.normal(key, jnp.broadcast_shapes(x0.shape, jnp.shape(om)))
    return jnp.sqrt(1 - om) * x0 + jnp.sqrt(om) * eps


def gaussian_posterior(x0, xt, t, betas):
    """(mean, var) of q(xᵗ⁻¹|xᵗ, x⁰); t is 1-based (t = 1 gives mean x0, var 0)."""
    om = one_minus_alpha_bar(betas)
    b, om_prev, om_t = betas[t - 1], om[t - 1], om[t]
    mean = (jnp.sqrt(1 - om_prev) * b * x0 + jnp.sqrt(1 - b) * om_prev * xt) / om_t
    return mean, b * om_prev / om_t


def gaussian_kl(mu_q, var_q, mu_p, var_p):
    """KL(N(mu_q, var_q) ‖ N(mu_p, var_p)), elementwise, in nats."""
    return 0.5 * (jnp.log(var_p / var_q) + (var_q + (mu_q - mu_p) ** 2) / var_p - 1)


# %% [markdown]
# ## The reverse kernel: a normalized RBF network (App. D.1.1)
# $p(x^{t-1}|x^t) = \mathcal N(f_\mu(x^t,t), \mathrm{diag}\,f_\Sigma(x^t,t))$. One hidden layer of
# normalized radial basis functions (a softmax over $-\lVert x-c_j\rVert^2/2w_j^2$) is shared over
# t; a linear readout per t gives $z = (z^\mu, z^\Sigma)$, a perturbation of the forward kernel:
#
# $$f_\mu = \sqrt{1-\beta_t}\,x^t + \sqrt{\beta_t}\,z^\mu,\qquad
#   f_\Sigma = \sigma\big(z^\Sigma + \operatorname{logit}\beta_t\big) \in (0, 1).$$
#
# With the readout at zero, p is the forward kernel run backwards: for N(0, I) data that is
# the exact reverse process (the *null model*), so training starts from K ≈ L_null.


# %%
def init_rbf(key: jax.Array, cfg: Config) -> dict:
    """Centres c (H, 2), log widths (H,), readout W (T, H, 4) and b (T, 4) at zero."""
    return {"c": jax.random.normal(key, (cfg.hidden, 2)),
            "log_w": jnp.full((cfg.hidden,), np.log(0.3), jnp.float32),
            "W": jnp.zeros((cfg.T, cfg.hidden, 4)), "b": jnp.zeros((cfg.T, 4))}


def rbf_reverse(params: dict, xt: jax.Array, t, betas: jax.Array):
    """(f_μ, f_Σ) of p(xᵗ⁻¹|xᵗ) for xt (..., N, 2) and 1-based t of shape (...)."""
    c = params["c"]
    sq = jnp.sum(xt**2, -1, keepdims=True) - 2 * xt @ c.T + jnp.sum(c**2, -1)  # (..., N, H)
    h = jax.nn.softmax(-0.5 * sq * jnp.exp(-2 * params["log_w"]), axis=-1)
    z = jnp.einsum("...nh,...hk->...nk", h, params["W"][t - 1]) + params["b"][t - 1][..., None, :]
    b = betas[t - 1][..., None, None]
    return (jnp.sqrt(1 - b) * xt + jnp.sqrt(b) * z[..., :2],
            jax.nn.sigmoid(z[..., 2:] + jnp.log(b / (1 - b))))


# %% [markdown]
# ## The bound K (eq. 14)
# Jensen's inequality on $\log p(x^0) = \log E_q[p(x^{0:T})/q(x^{1:T}|x^0)]$, with the last step
# fixed to the π-reversal of the first forward step, $p(x^0|x^1) = \mathcal N(\sqrt{1-\beta_1}x^1,
# \beta_1 I)$ (App. B.2), gives
#
# $$K = -\sum_{t=2}^{T} E_{q(x^0,x^t)} D_{KL}\big(q(x^{t-1}|x^t,x^0)\,\big\|\,p(x^{t-1}|x^t)\big)
#     + H_q(X^T|X^0) - H_q(X^1|X^0) - H_p(X^T),$$
#
# with $H_q(X^t|X^0) = \frac d2\log 2\pi e(1-\bar\alpha_t)$ and $H_p(X^T) = \frac d2\log 2\pi e$.
# We sum all T − 1 KL terms for every point (one xᵗ ~ q(xᵗ|x⁰) per t). Table 1 also reports
# $K - L_{null}$, $L_{null} = E\log_2\pi(x^0) = -\frac d2\log_2 2\pi e$ for unit-variance data.
#
# > **Unit second moment.** Eq. 14 silently replaces $E\log\pi(x^t)$ by $-H_p$ for every t, true
# > only if $E\lVert x^0\rVert^2 = d$. In general eq. 14 exceeds the true Jensen bound by
# > $\frac12(\beta_1 + \bar\alpha_T)(E\lVert x^0\rVert^2 - d)$, and for wide data it can exceed the
# > log-likelihood itself (a test shows it). Hence the exact standardization above.
#
# ## The ceiling, and the entropy bounds of each step (eq. 24)
# With the last step fixed and unit-second-moment data, $K = E_q\log q(x^1) -
# KL(q(x^{1:T})\|p(x^{1:T})) \le E_q\log q(x^1)$. On a noiseless roll x¹ is the roll blurred by β₁:
# the ceiling grows like $-\frac12\log_2\beta_1$, so the paper's unstated β₁ and roll decide what K
# can reach. We estimate it by Monte Carlo over x¹, with a fine quadrature over φ. Eq. 24
# brackets the entropy of each reverse step (nats per dimension; we plot the learned
# $\frac12\log 2\pi e f_\Sigma$ against it): $\frac12\log 2\pi e\beta_t +
# \frac12\log\frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t} \le H_q(X^{t-1}|X^t)
# \le \frac12\log 2\pi e\beta_t$.


# %%
def gaussian_K(key: jax.Array, x0: jax.Array, betas: jax.Array, reverse) -> jax.Array:
    """Eq. 14 per point, in nats (N,). reverse(xt (T-1, N, d), t (T-1,)) -> (mean, var)."""
    T, d = betas.shape[0], x0.shape[-1]
    ts = jnp.arange(2, T + 1)
    xt = q_sample(key, x0, ts[:, None, None], betas)  # (T-1, N, d)
    mu_q, var_q = gaussian_posterior(x0, xt, ts[:, None, None], betas)
    kl = jnp.sum(gaussian_kl(mu_q, var_q, *reverse(xt, ts)), axis=(0, 2))  # (N,)
    H = lambda var: 0.5 * d * jnp.log(2 * np.pi * np.e * var)  # noqa: E731
    return -kl + H(one_minus_alpha_bar(betas)[T]) - H(betas[0]) - H(1.0)


def L_null_bits(d: int) -> float:
    """E log₂ π(x⁰) for data with E|x⁰|² = d: the null model's log-likelihood, bits."""
    return -0.5 * d * float(np.log2(2 * np.pi * np.e))


def roll_ceiling(key: jax.Array, cfg: Config, n: int, grid: int = 2**14):
    """(mean, standard error) of E log₂ q(x¹) in bits per point."""
    beta1, k_x, k_e = cfg.beta1, *jax.random.split(key)
    x1 = q_sample(k_e, make_swiss_roll(k_x, n, cfg), 1, jnp.array([beta1]))
    phi = cfg.phi_lo + (jnp.arange(grid) + 0.5) * (cfg.phi_hi - cfg.phi_lo) / grid
    centres = np.sqrt(1 - beta1) * roll_points(phi, cfg)  # q(x¹) = E_φ N(x¹; √(1-β₁)x⁰(φ), β₁I)
    lse = jax.lax.map(lambda x: jax.nn.logsumexp(-jnp.sum((x - centres) ** 2, -1) / 2 / beta1), x1)
    v = (lse - np.log(grid) - np.log(2 * np.pi * beta1)) / LN2  # log₂ q(x¹), (n,)
    return v.mean(), v.std() / np.sqrt(n)


def entropy_bounds(betas: jax.Array):
    """(lower, upper) bounds on H_q(Xᵗ⁻¹|Xᵗ) per dimension, nats, for t = 2..T."""
    om, upper = one_minus_alpha_bar(betas), 0.5 * jnp.log(2 * np.pi * np.e * betas[1:])
    return upper + 0.5 * jnp.log(om[1:-1] / om[2:]), upper


# %% [markdown]
# ## Training and sampling
# We maximise K with Adam (the paper used SFO), one `lax.scan` per chunk, vmapped over seeds.
# Sampling runs the chain down from π, ending with the fixed step. **Conditioning (§2.5, eq. 23):**
# to sample $\tilde p(x^0) \propto p(x^0)r(x^0)$, multiply every reverse step by r; for r a delta
# on some coordinates, clamp them at every step. Clamping x₁ = a on the roll should give one
# mode in x₂ per crossing of the roll with the line x₁ = a.


# %%
def fit(loss, init_fn, keys, cfg: Config, name: str, t0: float):
    """Adam on loss(params, key), params = init_fn(keys[s, 0], cfg) per seed s, for cfg.<name>_steps
    with peak cfg.<name>_lr on a cosine decay. Returns (params, losses (S, steps), compile s)."""
    steps, lr = getattr(cfg, f"{name}_steps"), getattr(cfg, f"{name}_lr")
    params, keys = jax.vmap(init_fn, (0, None))(keys[:, 0], cfg), keys[:, 1]
    init, update = utils.adam(1.0)  # lr 1; we scale each step ourselves for the schedule

    def step(carry, i):
        p, opt, key = carry
        key, sub = jax.random.split(key)
        value, g = jax.value_and_grad(loss)(p, sub)
        new, opt = update(g, opt, p)
        lr_i = lr * 0.5 * (1 + jnp.cos(np.pi * i / steps))
        return (jax.tree_util.tree_map(lambda a, b: a + lr_i * (b - a), p, new), opt, key), value

    run = jax.jit(jax.vmap(lambda c, i: jax.lax.scan(step, c, i), in_axes=(0, None)))
    carry, ends = (params, jax.vmap(init)(params), keys), np.linspace(0, steps, cfg.chunks + 1)
    chunks, tc = np.split(np.arange(steps), ends[1:-1].astype(int)), time.perf_counter()
    compiled = {len(c): run.lower(carry, jnp.asarray(c)).compile() for c in chunks}
    compile_s, losses = time.perf_counter() - tc, []
    for c in chunks:
        carry, v = compiled[len(c)](carry, jnp.asarray(c))
        losses.append(np.asarray(v))
        utils.progress(t0, name, int(c[-1]) + 1, steps, K_bits=-float(v[:, -100:].mean()))
    losses = np.concatenate(losses, 1)
    utils.check_finite(losses, f"{name} loss", "a smaller learning rate", np.arange(steps))
    return carry[0], losses, compile_s


def sample_gaussian(key, params, betas, mask, values):
    """Samples x⁰ (N, 2) from p with x[mask] clamped to values (both (N, 2)); also x^{T/2}, x^T."""
    T, fix = betas.shape[0], lambda x: jnp.where(mask, values, x)  # noqa: E731
    k_T, k_steps, k_last = jax.random.split(key, 3)

    def step(x, inp):
        mean, var = rbf_reverse(params, x, inp[0], betas)
        return (x := fix(mean + jnp.sqrt(var) * jax.random.normal(inp[1], x.shape))), x

    xT = fix(jax.random.normal(k_T, mask.shape))
    x1, path = jax.lax.scan(step, xT, (jnp.arange(T, 1, -1), jax.random.split(k_steps, T - 1)))
    x0 = jnp.sqrt(1 - betas[0]) * x1 + jnp.sqrt(betas[0]) * jax.random.normal(k_last, x1.shape)
    return fix(x0), path[T - 1 - T // 2], xT


# %% [markdown]
# ## Binomial diffusion: the binary heartbeat (App. D.1.2)
# 20 bits, a 1 every 5th bin, random phase: 5 sequences, true log-likelihood log₂(1/5) = −2.322
# bits/seq. The forward kernel $q(x^t_i = 1|x^{t-1}) = x^{t-1}_i(1-\beta_t) + p\beta_t$ with
# $\beta_t = 1/(T-t+1)$ gives $q(x^t_i=1|x^0) = x^0_i(1-t/T) + p\,t/T$, so $x^T \sim \pi = B(p)$
# exactly. The posterior is Bayes over $x^{t-1}_i\in\{0,1\}$: with $a = q(x^{t-1}_i=1|x^0)$ and the
# likelihoods $P_1, P_0$ of the observed $x^t_i$, $r = aP_1/(aP_1 + (1-a)P_0)$. The reverse kernel
# is $B(f_b)$, $f_b = \sigma(\text{net} + \operatorname{logit}(x^t(1-\beta_t)+p\beta_t))$; q is
# reversible w.r.t. π, so a zero net is again the null model. The $X^T$ entropies of eq. 14 cancel:
# $K = -\sum_{t\ge2} E\,D_{KL} - H_q(X^1|X^0)$, a bound here since the data mean is p.
#
# > The paper gives every t its own readout; with T = 2000 each sees 1/2000 of the data and in
# > CPU budgets K never left L_null in our prototype. We share the readout through J smooth
# > bumps, as the authors' image code does (eqs. 62–64): $z(t) = \sum_j y_j g_j(t)$.


# %%
def heartbeat(phase: jax.Array, cfg: Config) -> jax.Array:
    """Sequences (..., seq_len) with ones at positions ≡ phase (mod period)."""
    return (jnp.arange(cfg.seq_len) % cfg.period == phase[..., None]).astype(jnp.float32)


def binomial_rate(x0, t, T: int, p: float):
    """q(xᵗ = 1 | x⁰) = x⁰(1 − t/T) + p t/T."""
    return x0 * (1 - t / T) + p * t / T


def binomial_posterior(x0, xt, t, T: int, p: float):
    """q(xᵗ⁻¹ = 1 | xᵗ, x⁰) under β_t = 1/(T − t + 1); t is 1-based."""
    b, a = 1.0 / (T - t + 1), binomial_rate(x0, t - 1, T, p)
    P1 = jnp.where(xt == 1, 1 - b + p * b, b * (1 - p))  # P(xᵗ | xᵗ⁻¹ = 1)
    P0 = jnp.where(xt == 1, p * b, 1 - p * b)  # P(xᵗ | xᵗ⁻¹ = 0)
    return a * P1 / (a * P1 + (1 - a) * P0)


def bernoulli_kl(r, f):
    """KL(B(r) ‖ B(f)) elementwise, in nats; rates clipped to [1e-7, 1 − 1e-7]."""
    r, f = jnp.clip(r, 1e-7, 1 - 1e-7), jnp.clip(f, 1e-7, 1 - 1e-7)
    return r * jnp.log(r / f) + (1 - r) * jnp.log((1 - r) / (1 - f))


def init_mlp(key: jax.Array, cfg: Config) -> dict:
    """MLP 20-50-50-50 (sigmoid units); readout (50, 20, J) at zero."""
    n, keys = [cfg.seq_len] + [cfg.width] * 3, jax.random.split(key, 3)
    params = {f"W{i}": jax.random.normal(keys[i], n[i:i + 2]) * 2 / np.sqrt(n[i]) for i in range(3)}
    params.update({f"b{i}": jnp.zeros(cfg.width) for i in range(3)})
    return dict(params, Wout=jnp.zeros((cfg.width, cfg.seq_len, cfg.bumps)),
                bout=jnp.zeros((cfg.seq_len, cfg.bumps)))


def mlp_reverse(params: dict, xt: jax.Array, t, cfg: Config) -> jax.Array:
    """f_b = p(xᵗ⁻¹ = 1 | xᵗ) for xt (..., seq_len); the 1-based t broadcasts against xt[..., 0]."""
    h = 2 * xt - 1
    for i in range(3):
        h = jax.nn.sigmoid(h @ params[f"W{i}"] + params[f"b{i}"])
    t = jnp.asarray(t, jnp.float32)
    centres = jnp.linspace(1.0, cfg.T_bin, cfg.bumps)  # g_j(t): width = spacing, normalized
    g = jax.nn.softmax(-0.5 * ((t[..., None] - centres) / (centres[1] - centres[0])) ** 2, -1)
    z = jnp.einsum("...h,hij,...j->...i", h, params["Wout"], g) + g @ params["bout"].T  # (..., 20)
    b = 1.0 / (cfg.T_bin - t[..., None] + 1.0)
    null = jnp.clip(xt * (1 - b) + cfg.p * b, 1e-6, 1 - 1e-6)  # the π-reversal of step t
    return jax.nn.sigmoid(z + jnp.log(null / (1 - null)))


def binomial_K(key: jax.Array, x0: jax.Array, f_b, cfg: Config, ts=None) -> jax.Array:
    """Eq. 14 per sequence, nats (N,); f_b(xt, t) is the reverse rate. ts=None sums all T − 1
    KL terms; ts (N,) of 1-based steps gives the unbiased (T − 1)·KL_t (for training)."""
    T, p, r1, full = cfg.T_bin, cfg.p, binomial_rate(x0, 1, cfg.T_bin, cfg.p), ts is None
    H1 = -jnp.sum(r1 * jnp.log(r1) + (1 - r1) * jnp.log(1 - r1), -1)  # H_q(X¹|X⁰)
    if full:
        ts, x0 = jnp.arange(2, T + 1)[:, None], jnp.broadcast_to(x0, (T - 1,) + x0.shape)
    xt = jax.random.bernoulli(key, binomial_rate(x0, ts[..., None], T, p)).astype(jnp.float32)
    kl = jnp.sum(bernoulli_kl(binomial_posterior(x0, xt, ts[..., None], T, p), f_b(xt, ts)), -1)
    return -(kl.sum(0) if full else (T - 1) * kl) - H1


def sample_binary(key, params, cfg: Config, mask, values):
    """Samples (N, seq_len) with x[mask] clamped to values (both (N, seq_len))."""
    T, p, fix = cfg.T_bin, cfg.p, lambda x: jnp.where(mask, values, x)  # noqa: E731
    k_T, k_steps = jax.random.split(key)

    def step(x, inp):
        f = jnp.where(inp[0] == 1, x * (1 - 1 / T) + p / T,  # the fixed last step
                      mlp_reverse(params, x, inp[0], cfg))
        return fix(jax.random.bernoulli(inp[1], f).astype(jnp.float32)), None

    xT = fix(jax.random.bernoulli(k_T, p, mask.shape).astype(jnp.float32))
    return jax.lax.scan(step, xT, (jnp.arange(T, 0, -1), jax.random.split(k_steps, T)))[0]


# %% [markdown]
# ## Run everything
# The roll sums all T − 1 KL terms per fresh point; the heartbeat draws one t ~ U{2..T} per
# sequence. Evaluation: K on held-out data with every KL term, samples, clamped samples. Table 1
# (arXiv v8): swiss roll K = 2.35 bits, K − L_null = 6.45; heartbeat K = −2.414 bits/seq,
# K − L_null = 12.024, with L_null = 20·(0.2 log₂ 0.2 + 0.8 log₂ 0.8) = −14.439.


# %%
def roll_loss(cfg: Config):
    """loss(params, key) = −K in bits per point on a fresh minibatch."""
    betas = gaussian_betas(cfg)
    return lambda params, key: -jnp.mean(gaussian_K(
        key, make_swiss_roll(jax.random.fold_in(key, 1), cfg.roll_batch, cfg), betas,
        lambda x, t: rbf_reverse(params, x, t, betas))) / LN2


def beat_loss(cfg: Config):
    """loss(params, key) = −K in bits per sequence, one random t per sequence."""
    def loss(params, key):
        k_x, k_t, k_q = jax.random.split(key, 3)
        x0 = heartbeat(jax.random.randint(k_x, (cfg.beat_batch,), 0, cfg.period), cfg)
        ts = jax.random.randint(k_t, (cfg.beat_batch,), 2, cfg.T_bin + 1)
        f_b = lambda x, t: mlp_reverse(params, x, t, cfg)  # noqa: E731
        return -jnp.mean(binomial_K(k_q, x0, f_b, cfg, ts)) / LN2
    return loss


def roll_crossings(cfg: Config) -> np.ndarray:
    """x₂ where the roll crosses the line x₁ = a (numpy: a constant even under jit)."""
    x = np.asarray(roll_points(np.linspace(cfg.phi_lo, cfg.phi_hi, 2**16), cfg))
    return x[1:, 1][np.diff(np.sign(x[:, 0] - cfg.clamp_x1)) != 0]


def evaluate_roll(key, params, cfg: Config) -> dict:
    """Per-seed metrics and figure data for one trained RBF model."""
    betas, ts, n = gaussian_betas(cfg), jnp.arange(2, cfg.T + 1), cfg.n_samples
    k_x, k_k, k_s, k_q = jax.random.split(key, 4)
    reverse = lambda x, t: rbf_reverse(params, x, t, betas)  # noqa: E731
    K = gaussian_K(k_k, make_swiss_roll(k_x, cfg.n_test, cfg), betas, reverse) / LN2
    mask = jnp.zeros((2 * n, 2), bool).at[n:, 0].set(True)  # the second half: x₁ clamped
    x0, x_half, xT = sample_gaussian(k_s, params, betas, mask, jnp.full(mask.shape, cfg.clamp_x1))
    roll = roll_points(jnp.linspace(cfg.phi_lo, cfg.phi_hi, 2**12), cfg)
    xq = q_sample(k_q, make_swiss_roll(k_q, 500, cfg), ts[:, None, None], betas)
    grid = jnp.stack(jnp.meshgrid(*[jnp.linspace(-2.2, 2.2, 13)] * 2), -1).reshape(-1, 2)
    return dict(K=K.mean(), K_se=K.std() / np.sqrt(K.size), samples=(x0[:n], x_half[:n], xT[:n]),
                dist=jnp.median(jnp.min(jnp.sum((x0[:n, None] - roll) ** 2, -1), 1) ** 0.5),
                cond_gap=jnp.median(jnp.min(jnp.abs(x0[n:, 1:] - roll_crossings(cfg)), 1)),
                x_cond=x0[n:], grid=grid,
                entropy=jnp.mean(0.5 * jnp.log(2 * np.pi * np.e * reverse(xq, ts)[1]), (1, 2)),
                drift=jnp.stack([reverse(grid, t)[0] - grid for t in (2, cfg.T // 2, cfg.T)]))


def evaluate_beat(key, params, cfg: Config) -> dict:
    """Per-seed metrics and samples for one trained heartbeat model."""
    (k_k, k_s), n = jax.random.split(key), cfg.n_samples
    valid = heartbeat(jnp.arange(cfg.period), cfg)  # the 5 sequences, (5, 20)
    f_b = lambda x, t: mlp_reverse(params, x, t, cfg)  # noqa: E731
    K = binomial_K(k_k, jnp.repeat(valid, cfg.beat_test_reps, 0), f_b, cfg) / LN2
    mask = jnp.zeros((2 * n, cfg.seq_len), bool).at[n:, :cfg.period].set(True)  # inpainting
    x = sample_binary(k_s, params, cfg, mask, jnp.broadcast_to(valid[2], mask.shape))
    return dict(K=K.mean(), K_se=K.std() / np.sqrt(K.size), samples=x[:n], inpainted=x[n:],
                valid=jnp.any(jnp.all(x[:n, None] == valid, -1), -1).mean(),
                inpaint=jnp.all(x[n:] == valid[2], -1).mean())


def make_figure(cfg: Config, roll: dict, beat: dict, curves: dict, ceiling: float) -> plt.Figure:
    """Fig. 1-like panel (q, p, drift; seed 0), clamped samples, eq. 24, heartbeats, training."""
    fig, ax = plt.subplots(3, 5, figsize=(23, 13))
    ax[1, 3].remove()
    betas, T, lim = gaussian_betas(cfg), cfg.T, dict(xlim=(-2.5, 2.5), ylim=(-2.5, 2.5), aspect=1)
    xq = q_sample(jax.random.key(0), make_swiss_roll(jax.random.key(1), cfg.n_samples, cfg),
                  jnp.array([0, T // 2, T])[:, None, None], betas)
    for j, t in enumerate((0, T // 2, T)):
        ax[0, j].scatter(*np.asarray(xq[j]).T, s=2)
        ax[1, j].scatter(*np.asarray(roll["samples"][j][0]).T, s=2, color="tab:orange")
        ax[2, j].quiver(*np.asarray(roll["grid"][0]).T, *np.asarray(roll["drift"][0, j]).T)
        for i, title in enumerate((f"q(xᵗ), t = {t}", f"p(xᵗ), t = {t}",
                                   f"drift f_μ(xᵗ, t) − xᵗ, t = {max(t, 2)}")):
            ax[i, j].set(**lim, xlabel="x₁", ylabel="x₂", title=title)
    ax[0, 3].plot(*roll_points(np.linspace(cfg.phi_lo, cfg.phi_hi, 2000), cfg).T, color="0.7")
    ax[0, 3].scatter(*np.asarray(roll["x_cond"][0]).T, s=4, color="tab:red", label="samples")
    ax[0, 3].plot(0 * roll_crossings(cfg) + cfg.clamp_x1, roll_crossings(cfg), "k+", ms=12,
                  label="crossings of the roll")
    ax[0, 3].set(**lim, xlabel="x₁", ylabel="x₂", title=f"x₁ clamped to {cfg.clamp_x1} (§2.5)")
    (lo, up), ts = map(np.asarray, entropy_bounds(betas)), np.arange(2, T + 1)
    ax[2, 3].fill_between(ts, lo - up, 0 * up, color="0.8", label="eq. 24 bounds")
    ax[2, 3].plot(ts, (np.asarray(roll["entropy"]) - up).T, lw=1)
    ax[2, 3].set(xlabel="t", ylabel="nats per dim., minus the upper bound ½log 2πeβ_t",
                 title="Reverse-step entropy: learned ½log 2πe f_Σ (one line per seed)")
    for a, x, title in ((ax[0, 4], beat["samples"][0], "Heartbeat samples (cf. App. D.1.2)"),
                        (ax[1, 4], beat["inpainted"][0], "Inpainting: first 5 bins clamped")):
        a.imshow(np.asarray(x[:30]), cmap="gray_r", aspect="auto", interpolation="nearest")
        a.set(title=title, xlabel="bin", ylabel="sample")
    for name, c, paper in (("swiss roll", "tab:blue", 2.35), ("heartbeat", "tab:purple", -2.414)):
        v = -curves[name].reshape(len(curves[name]), -1, 50).mean(-1)  # 50-step averages
        steps, mu, sd = 50 * np.arange(1, v.shape[1] + 1), v.mean(0), v.std(0)
        ax[2, 4].plot(steps, mu, color=c, label=f"{name} (mean ± std, seeds)")
        ax[2, 4].fill_between(steps, mu - sd, mu + sd, color=c, alpha=0.2)
        ax[2, 4].axhline(paper, color=c, ls="--", lw=1, label=f"{name}, paper")
    ax[2, 4].axhline(ceiling, color="tab:blue", ls=":", lw=1, label="swiss roll ceiling")
    ax[2, 4].set(xlabel="Adam step", ylabel="K, bits (minibatch)", ylim=(-6, 3.5), title="Training")
    [a.legend(fontsize=7) for a in (ax[0, 3], ax[2, 3], ax[2, 4])]
    fig.tight_layout()
    return fig


PAPER = {"title": "Deep Unsupervised Learning using Nonequilibrium Thermodynamics",
         "url": "https://arxiv.org/abs/1503.03585", "reproduced": "Table 1 rows 1-2, Fig. 1"}
PAPER_VALUES = {"K_bits_swiss_roll": 2.35, "K_minus_L_null_swiss_roll": 6.45, "K_bits_heartbeat":
                -2.414, "K_minus_L_null_heartbeat": 12.024, "source": "arXiv v8, Table 1 (bits)"}


def main(argv=None) -> dict:
    """Train both toys over seeds, evaluate K and samples; save JSON + PNG; return the record."""
    p = utils.make_parser(
        "01_diffusion",
        "Diffusion probabilistic models (Sohl-Dickstein et al. 2015), toys.",
    )
    p.add_argument("--hidden", type=utils.positive_int, help="RBF units (default 64; paper 16)")
    below_half = utils.check(float, lambda v: 0 < v < 0.5, "a number in (0, 0.5)")
    p.add_argument("--beta1", type=below_half, help="the fixed first step β₁ (default 1e-5)")
    args = utils.parse_args(p, argv)
    cfg = replace(Config(**QUICK) if args.quick else Config(),
                  **{f: v for f in ("hidden", "beta1") if (v := getattr(args, f))})
    utils.enable_compilation_cache()
    t0, seeds = time.perf_counter(), list(range(args.seed, args.seed + args.seeds))
    keys = jax.vmap(lambda s: jax.random.split(jax.random.key(s), 6))(jnp.asarray(seeds))
    evaluate = lambda f, k, p: jax.jit(jax.vmap(f, (0, 0, None)), static_argnums=2)(k, p, cfg)
    params, c_roll, cs1 = fit(roll_loss(cfg), init_rbf, keys[:, :2], cfg, "roll", t0)
    roll = evaluate(evaluate_roll, keys[:, 2], params)
    ceiling, ceiling_se = jax.jit(roll_ceiling, static_argnums=(1, 2))(
        jax.random.key(args.seed), cfg, cfg.n_test)
    params, c_beat, cs2 = fit(beat_loss(cfg), init_mlp, keys[:, 3:5], cfg, "beat", t0)
    beat = evaluate(evaluate_beat, keys[:, 5], params)
    compile_s = cs1 + cs2  # training compiles; evaluation compiles count as run time
    run_s = time.perf_counter() - t0 - compile_s
    l_null_beat = cfg.seq_len * float(cfg.p * np.log2(cfg.p) + (1 - cfg.p) * np.log2(1 - cfg.p))
    metrics = {name: utils.summarize(v) for name, v in {
        "K_bits_swiss_roll": roll["K"], "K_minus_L_null_swiss_roll": roll["K"] - L_null_bits(2),
        "K_se_swiss_roll": roll["K_se"], "ceiling_bits_swiss_roll": [ceiling],
        "roll_sample_median_dist": roll["dist"], "conditional_median_gap": roll["cond_gap"],
        "K_bits_heartbeat": beat["K"], "K_minus_L_null_heartbeat": beat["K"] - l_null_beat,
        "K_se_heartbeat": beat["K_se"], "valid_fraction_heartbeat": beat["valid"],
        "inpaint_accuracy_heartbeat": beat["inpaint"]}.items()}
    utils.check_finite([m["mean"] for m in metrics.values()], "a metric", "a smaller learning rate")
    record = {"script": "01_diffusion", "paper": PAPER, "config": asdict(cfg), "quick": args.quick,
              "seeds": seeds, "metrics": metrics, "paper_values": PAPER_VALUES,
              "compile_s": compile_s, "run_s": run_s}
    fig = make_figure(cfg, roll, beat, {"swiss roll": c_roll, "heartbeat": c_beat}, float(ceiling))
    utils.save_results(args.out, "01_diffusion", record, fig)
    kr, kb = metrics["K_bits_swiss_roll"], metrics["K_bits_heartbeat"]
    ok = metrics["valid_fraction_heartbeat"]["mean"]
    print(f"01_diffusion{' (quick)' if args.quick else ''}, {len(seeds)} seeds: swiss roll K = "
          f"{kr['mean']:.2f} ± {kr['std']:.2f} bits (paper 2.35; ceiling {float(ceiling):.2f} ± "
          f"{float(ceiling_se):.2f} at β₁ = {cfg.beta1:g}; {cfg.hidden} RBF units); heartbeat K = "
          f"{kb['mean']:.3f} ± {kb['std']:.3f} bits/seq (paper −2.414, truth −2.322), "
          f"{ok:.1%} valid samples; compile {compile_s:.0f} s, run {run_s:.0f} s")
    return record


if __name__ == "__main__":
    main()
