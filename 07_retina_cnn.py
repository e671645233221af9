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
# # 07 · Convolutional models of the retina
#
# McIntosh\*, Maheswaranathan\*, Nayebi, Ganguli, Baccus, *Deep learning models of the retinal
# response to natural scenes*, NIPS 2016, [arXiv:1702.01825](https://arxiv.org/abs/1702.01825);
# attributions: Tanaka et al., NeurIPS 2019, [arXiv:1912.06207](https://arxiv.org/abs/1912.06207).
#
# A three-layer CNN (conv → ReLU → conv → ReLU → dense → softplus) trained with a Poisson loss
# from a movie to ganglion-cell spikes predicts the retina far better than the linear-nonlinear
# (LN) model, above all on natural scenes, and generalises across stimulus classes. The
# recordings are not public, so we build a ground-truth retina (rectified ON/OFF bipolar and
# amacrine channels pooled by OFF, ON and ON-OFF ganglion cells, Poisson spikes) that an LN model
# cannot capture but a CNN can. You will learn causal history windows, the Poisson likelihood, the
# STA, convolutions as matrix products, the noise ceiling and integrated gradients.
#
# Reproduced, on the simulated retina: the LN-vs-CNN comparison of Fig. 2, the cross-stimulus
# generalisation and data-size curve of Fig. 3; beyond them, flash latencies and integrated
# gradients. Run `python 07_retina_cnn.py` (≈ 4 min on 2 CPU cores) or `--quick` (smaller retina).
# Expected: CNN − LN ≈ 0.21 in correlation on white noise, ≈ 0.20 on natural scenes, ≈ 0.35
# trained on NS and tested on WN; the CNN at ≈ 92% of the ceiling.

# %%
import time
from dataclasses import asdict, dataclass, replace

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from jax import lax

import utils


# %%
# Configuration. Retina values are ours; "paper code": the authors' Keras baccuslab/deep-retina.
@dataclass(frozen=True)
class Config:
    n_pix: int = 16  # N: stimulus is N×N pixels (paper code: 50×50)
    history: int = 16  # H: frames per input window, 320 ms (paper code: 40 frames = 400 ms)
    dt: float = 0.02  # bin width in s (paper code: 10 ms)
    n_cells: int = 8  # ganglion cells: 4 OFF, 2 ON, 2 ON-OFF
    cell_spread: float = 2.0  # spacing of the 3×3 lattice of cell centres (bipolar pixels)
    theta: tuple = (0.5, 0.5, 0.0)  # θ_c: thresholds of ON bipolar, OFF bipolar, amacrine
    base_rate: float = 8.0  # r = base_rate · softplus(gain · d), in Hz
    gain: float = 4.0  # (ours)
    checker: int = 2  # white-noise checker size in pixels
    ns_canvas: int = 48  # 1/f image size; the N×N view jitters over it
    ns_hold: int = 50  # frames per natural image (1 s)
    ns_jitter: float = 0.5  # std of the view's random walk, pixels per frame
    ns_contrast: float = 0.343  # c_ns: matches the ON-bipolar drive of 1-px white noise
    train_frames: int = 30_000  # 10 min of training data, one trial
    val_frames: int = 3000  # early-stopping set
    test_frames: int = 1500  # 30-s held-out segment ...
    repeats: int = 10  # K: ... shown K times (paper code: a repeated test segment too)
    c1: int = 8  # CNN first-layer channels (paper code: 16, or 8 in the successor BN-CNN)
    k1: int = 7  # first-layer kernel size (paper code: 15)
    c2: int = 8  # second-layer channels (paper code: 8)
    k2: int = 5  # second-layer kernel size (paper code: 9 or 11)
    noise: float = 0.1  # σ of the Gaussian noise after each conv, training only (paper code: 0.1)
    l2: float = 1e-4  # L2 on the weights (paper code: 1e-3)
    lr: float = 2e-3  # Adam step (paper code: 1e-3)
    batch: int = 128  # (paper code: 5000)
    steps: int = 500  # CNN Adam steps
    ln_lr: float = 3e-4  # Adam step of the LN (paper code: 1e-2)
    ln_batch: int = 1024  # small batches ruin the 4096-weight filters (notes §5)
    ln_steps: int = 600  # LN Adam steps (validation loss stops falling by ~300)
    eval_every: int = 100  # validation loss checked every ... steps; the best parameters kept
    curve_minutes: tuple = (1.0, 2.5)  # extra training-set sizes, natural scenes (Fig. 3A)
    chunks: int = 5  # progress lines per training
    ig_steps: int = 400  # α-steps of the IG Riemann sum (50 leave ≤ 9% errors at ReLU kinks)


QUICK = dict(n_pix=12, history=12, n_cells=4, cell_spread=1.0, train_frames=10_000,
             val_frames=1500, test_frames=1000, c1=4, k1=5, c2=4, k2=3, steps=400, ln_steps=400,
             curve_minutes=(1.0,), chunks=3)
CELL_TYPES = ("OFF", "ON", "ON-OFF", "OFF", "OFF", "ON-OFF", "ON", "OFF")
TYPE_WEIGHTS = {"ON": (1.0, 0.0, -0.6), "OFF": (0.0, 1.0, -0.6), "ON-OFF": (0.7, 0.7, -0.6)}
LATTICE = (0, 8, 4, 2, 6, 1, 7, 3, 5)  # where cell j sits on the 3×3 lattice (row-major)


# %% [markdown]
# ## The ground-truth retina
# Time kernels $k(\tau) = g(\tau;\tau_1) - a\,g(\tau;\tau_2)$, $g = (\tau/\tau_x)^3
# e^{-\tau/\tau_x}$ scaled to peak 1, at lags $\tau_i = (i+\frac12)dt$: bipolar 40/80 ms, a = 0.7
# (biphasic); amacrine 80/160 ms, a = 0.3 (slow). Each channel c, ON (+, σ = 0.7 px), OFF (−, 0.7)
# and OFF-driven amacrine (−, 1.5), filters with a 7×7 Gaussian and rectifies *before* pooling;
# ganglion cell j pools with a Gaussian $G_j$ (σ = 1.5, sum 1) and weights $w_c$ (ON, OFF, AM):
# OFF (0, 1, −0.6), ON (1, 0, −0.6), ON-OFF (0.7, 0.7, −0.6):
#
# $$b_c = \big[\pm k_c \otimes G_{\sigma_c} * s - \theta_c\big]_+,\quad
#   d_j = \sum_{c,x,y} w_{c} G_j(x,y) b_c(x,y,t),\quad r_j = 8\,\mathrm{Hz}\cdot
#   \mathrm{softplus}(4 d_j),\quad n_j \sim \mathrm{Poisson}(r_j\,dt).$$
#
# > An ON-OFF cell's ON and OFF parts cancel in any linear filter; the CNN's first layer can hold
# > all three channels, its ReLU the threshold. Unlike real data: no adaptation, no spike
# > history, no correlated noise, only three channels.


# %%
def lag_kernel(tau1: float, tau2: float, a: float, cfg: Config) -> jax.Array:
    """(H,) time kernel over one window, oldest frame first (the last entry is lag dt/2)."""
    tau = (jnp.arange(cfg.history)[::-1] + 0.5) * cfg.dt
    g = lambda tx: (tau / tx) ** 3 * jnp.exp(3.0 - tau / tx) / 27.0  # noqa: E731  peak 1 at 3τx
    k = g(tau1) - a * g(tau2)
    return k / jnp.linalg.norm(k)


def band(cfg: Config, sigma: float) -> np.ndarray:
    """(M, N) valid 7-tap Gaussian filter, M = N - 6; the 7×7 kernel A⊗A has unit L2 norm."""
    g, M = np.exp(-((np.arange(7) - 3.0) ** 2) / (2 * sigma**2)), cfg.n_pix - 6
    A = np.zeros((M, cfg.n_pix), np.float32)
    for y in range(M):
        A[y, y:y + 7] = g / np.linalg.norm(g)
    return A


def bipolar_layer(stimulus: jax.Array, cfg: Config) -> jax.Array:
    """(T, N, N) movie -> rectified ON, OFF, amacrine activity (T, 3, M, M); gray before t=0."""
    T, H = stimulus.shape[0], cfg.history
    pad = jnp.concatenate([jnp.zeros((H - 1,) + stimulus.shape[1:]), stimulus])
    time_filter = lambda k: sum(k[i] * pad[i:i + T] for i in range(H))  # noqa: E731
    space_filter = lambda v, A: jnp.einsum("yn,tnm,xm->tyx", A, v, A)  # noqa: E731  separable
    on = space_filter(time_filter(lag_kernel(0.04, 0.08, 0.7, cfg)), band(cfg, 0.7))
    amacrine = -space_filter(time_filter(lag_kernel(0.08, 0.16, 0.3, cfg)), band(cfg, 1.5))
    u = jnp.stack([on, -on, amacrine], 1)
    return jax.nn.relu(u - jnp.asarray(cfg.theta)[:, None, None])


def ganglion_weights(cfg: Config) -> np.ndarray:
    """(cells, 3, M, M) pooling weights w_c G_j(x, y) on the M×M bipolar grid."""
    M, out = cfg.n_pix - 6, []
    y, x = np.mgrid[:M, :M]
    for j in range(cfg.n_cells):
        cy, cx = ((M - 1) / 2 + cfg.cell_spread * (i - 1) for i in divmod(LATTICE[j], 3))
        G = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * 1.5**2))
        out.append(np.asarray(TYPE_WEIGHTS[CELL_TYPES[j]])[:, None, None] * G / G.sum())
    return np.stack(out).astype(np.float32)


def simulate_retina(key: jax.Array, stimulus: jax.Array, cfg: Config):
    """Ground truth for a (T, N, N) movie: rates (T, cells) in Hz and one trial of spike counts
    per dt bin (T, cells). Causal: the response at t depends on frames <= t only."""
    d = jnp.einsum("tcxy,jcxy->tj", bipolar_layer(stimulus, cfg), ganglion_weights(cfg))
    rates = cfg.base_rate * jax.nn.softplus(cfg.gain * d)
    return rates, jax.random.poisson(key, rates * cfg.dt).astype(jnp.float32)


# %% [markdown]
# ## Two stimulus classes, in the same physical units
# White noise (WN): ±1 checkers of 2×2 px, new every frame. Natural scenes (NS): random-phase
# images with a $1/f$ amplitude spectrum, a new one every second, seen through a window that
# jitters like a fixating eye (a Gaussian random walk), z-scored and scaled by $c_{ns} = 0.343$ so
# that both drive the bipolar cells comparably: the models must generalise in physical units.


# %%
def white_noise(key: jax.Array, T: int, cfg: Config) -> jax.Array:
    """(T, N, N) binary checkers of cfg.checker px."""
    s = jax.random.rademacher(key, (T,) + (-(-cfg.n_pix // cfg.checker),) * 2, jnp.float32)
    return jnp.repeat(jnp.repeat(s, cfg.checker, 1), cfg.checker, 2)[:, : cfg.n_pix, : cfg.n_pix]


def natural_movie(key: jax.Array, T: int, cfg: Config) -> jax.Array:
    """(T, N, N) jittered views of 1/f images, one image per cfg.ns_hold frames."""
    k_img, k_walk = jax.random.split(key)
    C, N, hold = cfg.ns_canvas, cfg.n_pix, cfg.ns_hold
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(C), np.fft.fftfreq(C)))
    amp = jnp.asarray(np.where(f > 0, 1 / np.maximum(f, 1e-9), 0.0), jnp.float32)  # 1/f, no DC
    white = jax.random.normal(k_img, (-(-T // hold), C, C))
    images = jnp.real(jnp.fft.ifft2(jnp.fft.fft2(white) * amp))

    def walk(pos, inp):  # inp: (step, new image?); the view re-centres on each new image
        pos = jnp.where(inp[1], (C - N) / 2.0, jnp.clip(pos + inp[0], 0.0, C - N))
        return pos, jnp.round(pos).astype(jnp.int32)

    inputs = (cfg.ns_jitter * jax.random.normal(k_walk, (T, 2)), jnp.arange(T) % hold == 0)
    corner = lax.scan(walk, jnp.zeros(2), inputs)[1]
    crop = lambda t, c: lax.dynamic_slice(images[t // hold], (c[0], c[1]), (N, N))  # noqa: E731
    movie = jax.vmap(crop)(jnp.arange(T), corner)
    return cfg.ns_contrast * (movie - movie.mean()) / movie.std()


def make_data(key: jax.Array, cfg: Config) -> dict:
    """Both classes (axis 0: WN, NS): train, val and test movies (stim_*) with spikes (spikes_*);
    for the test segment the true rates in Hz and the PSTH, the mean count of K repeats."""
    out = {}
    for cls, stim_fn in enumerate((white_noise, natural_movie)):
        keys = jax.random.split(jax.random.fold_in(key, cls), 7)
        for i, name in enumerate(("train", "val", "test")):
            s = stim_fn(keys[2 * i], getattr(cfg, f"{name}_frames"), cfg)
            rates, spikes = simulate_retina(keys[2 * i + 1], s, cfg)
            out.setdefault(f"stim_{name}", []).append(s)
            out.setdefault(f"spikes_{name}", []).append(spikes)
        reps = jax.random.poisson(keys[6], rates * cfg.dt, (cfg.repeats,) + rates.shape)
        out.setdefault("rate_test", []).append(rates)
        out.setdefault("psth", []).append(reps.mean(0))
    return {k: jnp.stack(v) for k, v in out.items()}


# %% [markdown]
# ## The CNN, and the same CNN as matrix products
# The input at bin t is the causal window $X_t = (s_{t-H+1}, \dots, s_t)$, H frames as channels,
# oldest first (bins t < H − 1 are dropped), gathered per batch: the full Toeplitz tensor
# (T, H, N, N) would hold H copies of the movie.
#
# $$h_1 = [W_1 * X + b_1 + \sigma\xi_1]_+,\quad h_2 = [W_2 * h_1 + b_2 + \sigma\xi_2]_+,\quad
#   \hat r = \mathrm{softplus}(W_3\, \mathrm{vec}(h_2) + b_3),$$
# valid convolutions (16 → 10 → 6 px), noise ξ in training only, $\hat r$ the expected count per
# bin. `apply_conv` uses `lax.conv`, whose gradients XLA runs ~10× slower on a CPU than a matmul
# form (notes §6); so `apply_cnn` takes k shifted column slices of the input and a banded row
# matrix $B_{y,Y,b} = W_{y-Y,b}$ built from the kernel: the same numbers (a test checks).


# %%
def windows(stimulus: jax.Array, t: jax.Array, history: int) -> jax.Array:
    """(history, N, N) frames t-history+1 ... t of a (T, N, N) movie; needs t >= history-1."""
    return lax.dynamic_slice(stimulus, (t - history + 1, 0, 0), (history,) + stimulus.shape[1:])


def init_cnn(key: jax.Array, cfg: Config, ybar: jax.Array) -> dict:
    """Normal weights with std 1/√fan-in, a small readout, output bias softplus⁻¹(ȳ)."""
    k1, k2, k3 = jax.random.split(key, 3)
    m2, normal = cfg.n_pix - cfg.k1 - cfg.k2 + 2, jax.random.normal
    return dict(w1=normal(k1, (cfg.c1, cfg.history, cfg.k1, cfg.k1)) / cfg.history**0.5 / cfg.k1,
                w2=normal(k2, (cfg.c2, cfg.c1, cfg.k2, cfg.k2)) / np.sqrt(cfg.c1) / cfg.k2,
                w3=0.01 * normal(k3, (cfg.n_cells, cfg.c2 * m2 * m2)), b1=jnp.zeros(cfg.c1),
                b2=jnp.zeros(cfg.c2), b3=jnp.log(jnp.expm1(ybar)))


def _noisy_relu(h, key, noise):
    return jax.nn.relu(h if key is None else h + noise * jax.random.normal(key, h.shape))


def apply_conv(params: dict, x: jax.Array, key=None, noise: float = 0.0) -> jax.Array:
    """Reference form. x (B, H, N, N) -> expected counts (B, cells); noise only if key given."""
    conv = lambda a, w: lax.conv_general_dilated(  # noqa: E731
        a, w, (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW"))
    keys = (None, None) if key is None else jax.random.split(key)
    h = _noisy_relu(conv(x, params["w1"]) + params["b1"][:, None, None], keys[0], noise)
    h = _noisy_relu(conv(h, params["w2"]) + params["b2"][:, None, None], keys[1], noise)
    return jax.nn.softplus(h.reshape(x.shape[0], -1) @ params["w3"].T + params["b3"])


def conv_matmul(a: jax.Array, w: jax.Array) -> jax.Array:
    """Valid convolution (B, I, Y, X) * (O, I, k, k) -> (B, O, Y-k+1, X-k+1) as one matmul."""
    k, Y, X = w.shape[-1], a.shape[2], a.shape[3]
    shifted = jnp.stack([a[..., b:b + X - k + 1] for b in range(k)], -1)  # (B, I, Y, X', k)
    sel = np.arange(Y)[:, None, None] == np.arange(Y - k + 1)[None, :, None] + np.arange(k)
    band = jnp.einsum("oiab,yYa->iyYbo", w, jnp.asarray(sel, w.dtype))  # (I, Y, Y', k, O)
    return jnp.einsum("niyxb,iyYbo->noYx", shifted, band)


def cnn_head(params: dict, a: jax.Array, key=None, noise: float = 0.0) -> jax.Array:
    """From first-layer activations a (B, c1, M1, M1) to expected counts (B, cells)."""
    h = _noisy_relu(conv_matmul(a, params["w2"]) + params["b2"][:, None, None], key, noise)
    return jax.nn.softplus(h.reshape(a.shape[0], -1) @ params["w3"].T + params["b3"])


def apply_cnn(params: dict, x: jax.Array, key=None, noise: float = 0.0) -> jax.Array:
    """Same model as apply_conv, convolutions as matrix products (used for training)."""
    keys = (None, None) if key is None else jax.random.split(key)
    a = _noisy_relu(conv_matmul(x, params["w1"]) + params["b1"][:, None, None], keys[0], noise)
    return cnn_head(params, a, keys[1], noise)


# %% [markdown]
# ## The LN model and the Poisson likelihood
# LN: $\hat r_j = \mathrm{softplus}(w_j \cdot \mathrm{vec}(X_t) + b_j)$, one full H×N×N filter
# per cell (4,097 parameters each: 3× the whole CNN). Both minimise the Poisson negative
# log-likelihood of the counts y (up to $\log y!$), the CNN with L2 on its weights:
#
# $$\mathcal L = \frac{1}{TJ}\sum_{t,j} \big[\hat r_{tj} - y_{tj}\log(\hat r_{tj} + \varepsilon)
#   \big],\qquad \frac{\partial\mathcal L}{\partial \hat r} \propto 1 - \frac{y}{\hat r +
#   \varepsilon}:\ \text{a constant rate is best at } \hat r = \bar y \text{ (the bias init).}$$
#
# The classic fit: under white noise $\mathrm{STA} = \sum_t n_t X_t / \sum_t n_t$ is
# proportional to the filter (Bussgang), and the nonlinearity is the mean count in equal-count
# bins of $g_t = \mathrm{STA}\cdot X_t$; we use it to check the gradient-descent LN (the headline
# LN: the STA is biased on natural scenes).


# %%
def init_ln(key: jax.Array, cfg: Config, ybar: jax.Array) -> dict:
    """Zero filters, bias softplus⁻¹(ȳ): the best constant model."""
    return dict(w=jnp.zeros((cfg.n_cells, cfg.history * cfg.n_pix**2)), b=jnp.log(jnp.expm1(ybar)))


def apply_ln(params: dict, x: jax.Array, key=None, noise: float = 0.0) -> jax.Array:
    """x (B, H, N, N) -> expected counts (B, cells); key and noise unused."""
    return jax.nn.softplus(x.reshape(x.shape[0], -1) @ params["w"].T + params["b"])


def poisson_nll(rate: jax.Array, counts: jax.Array, eps: float = 1e-6) -> jax.Array:
    """mean of r̂ − y·log(r̂ + ε): the Poisson negative log-likelihood without the log y! term."""
    return jnp.mean(rate - counts * jnp.log(rate + eps))


def spike_triggered_average(stimulus: jax.Array, spikes: jax.Array, history: int) -> jax.Array:
    """(history, N, N): spike-weighted mean of the windows ending at (and including) each spike's
    bin, oldest frame first; bins t < history-1 (no full window) are ignored."""
    T, n = stimulus.shape[0], spikes[history - 1:]
    sta = jnp.stack([jnp.tensordot(n, stimulus[k:T - history + 1 + k], 1) for k in range(history)])
    return sta / jnp.sum(n)


def binned_nonlinearity(g: jax.Array, y: jax.Array, bins: int = 30):
    """Equal-count bins of g: (bin-mean g, bin-mean count), for `jnp.interp`."""
    order, n = jnp.argsort(g), (g.shape[0] // bins) * bins
    return g[order][:n].reshape(bins, -1).mean(1), y[order][:n].reshape(bins, -1).mean(1)


def sta_ln(stim: jax.Array, spikes: jax.Array, stim_test: jax.Array, history: int) -> jax.Array:
    """The classic LN of one cell fitted on (stim, spikes): its counts for stim_test's windows."""
    gen = lambda s, f: sum(jnp.tensordot(s[k:len(s) - history + 1 + k], f[k], 2)  # noqa: E731
                           for k in range(history))  # g_t = STA · X_t
    sta, y = spike_triggered_average(stim, spikes, history), spikes[history - 1:]
    return jnp.interp(gen(stim_test, sta), *binned_nonlinearity(gen(stim, sta), y))


# %% [markdown]
# ## Metric and training
# Per-cell Pearson ρ over time, averaged over cells; against the true rate (only in simulation)
# and against the noisy PSTH of K repeats, where the ceiling is $\rho(r, \mathrm{PSTH})$.
# Training: Adam on random windows, `lax.scan` chunks vmapped over runs (seed × class × data
# size); every `eval_every` steps the validation loss decides whether to keep the parameters
# (early stopping inside the scan). A run trains on its first `n_used` frames: one compile.


# %%
def pearson_per_cell(pred: jax.Array, target: jax.Array) -> jax.Array:
    """(T, cells) arrays -> (cells,) Pearson ρ over time. A constant column gives 0, not NaN."""
    p, t = pred - pred.mean(0), target - target.mean(0)
    den = jnp.sqrt(jnp.sum(p**2, 0) * jnp.sum(t**2, 0))
    return jnp.where(den > 0, jnp.sum(p * t, 0) / jnp.where(den > 0, den, 1.0), 0.0)


def predict(apply, params, stimulus, history, block: int = 250) -> jax.Array:
    """Model rates (T - H + 1, cells) for every full window of a (T, N, N) movie, in blocks."""
    T = stimulus.shape[0]
    ts = jnp.arange(history - 1, history - 1 + -(-(T - history + 1) // block) * block)
    one = lambda tb: apply(params, jax.vmap(windows, (None, 0, None))(  # noqa: E731
        stimulus, jnp.minimum(tb, T - 1), history))
    out = lax.map(one, ts.reshape(-1, block))
    return out.reshape(-1, out.shape[-1])[: T - history + 1]


def make_train(cfg: Config, model: str):
    """(init(key, data, run), chunk(state, data, run, n_evals)) for 'cnn' | 'ln'; data: make_data
    stacked over seeds (not vmapped); run: dict(seed, cls, n_used) of scalars (vmapped)."""
    init_fn, apply = (init_cnn, apply_cnn) if model == "cnn" else (init_ln, apply_ln)
    lr, batch, l2 = (cfg.lr, cfg.batch, cfg.l2) if model == "cnn" else (cfg.ln_lr, cfg.ln_batch, 0)
    opt_init, opt_update = utils.adam(lr)
    H = cfg.history

    def loss_fn(params, x, y, key):
        l2_term = sum(jnp.sum(v**2) for k, v in params.items() if k.startswith("w"))
        return poisson_nll(apply(params, x, key, cfg.noise), y) + l2 * l2_term

    def init(key, data, run):
        spikes = data["spikes_train"][run["seed"], run["cls"]]
        used = jnp.arange(spikes.shape[0])[:, None] < run["n_used"]
        ybar = jnp.sum(jnp.where(used, spikes, 0.0), 0) / run["n_used"]
        params = init_fn(key, cfg, jnp.maximum(ybar, 1e-3))
        return dict(params=params, opt=opt_init(params), best=params, best_val=jnp.inf, key=key)

    def step(state, data, run):
        key, k_t, k_noise = jax.random.split(state["key"], 3)
        T, N = data["stim_train"].shape[2:4]  # index the flat movie: no per-run copy of it
        t = jax.random.randint(k_t, (batch,), H - 1, run["n_used"])
        t = t + (2 * run["seed"] + run["cls"]) * T
        x = jax.vmap(windows, (None, 0, None))(data["stim_train"].reshape(-1, N, N), t, H)
        y = data["spikes_train"].reshape(-1, cfg.n_cells)[t]
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], x, y, k_noise)
        params, opt = opt_update(grads, state["opt"], state["params"])
        return dict(state, params=params, opt=opt, key=key), loss

    def evaluate_and_keep(state, data, run):
        s = (run["seed"], run["cls"])
        val = poisson_nll(predict(apply, state["params"], data["stim_val"][s], H),
                          data["spikes_val"][s][H - 1:])
        keep = lambda new, old: jnp.where(val < state["best_val"], new, old)  # noqa: E731
        best = jax.tree_util.tree_map(keep, state["params"], state["best"])
        return dict(state, best=best, best_val=jnp.minimum(val, state["best_val"])), val

    def chunk(state, data, run, n_evals):
        def block(st, _):
            st, losses = lax.scan(lambda c, _: step(c, data, run), st, None, length=cfg.eval_every)
            st, val = evaluate_and_keep(st, data, run)
            return st, (losses.mean(), val)
        return lax.scan(block, state, None, length=n_evals)

    return init, chunk


def train_runs(cfg: Config, model: str, data: dict, runs: dict, key: jax.Array, t0: float):
    """Train one model per run (vmapped): (best parameters, leading axis runs; compile s)."""
    init, chunk = make_train(cfg, model)
    n_evals = (cfg.steps if model == "cnn" else cfg.ln_steps) // cfg.eval_every
    per = max(1, round(n_evals / cfg.chunks))  # evaluations per chunk: one compiled chunk size
    keys = jax.random.split(key, runs["seed"].shape[0])
    state = jax.jit(jax.vmap(init, (0, None, 0)))(keys, data, runs)
    tc, run = time.perf_counter(), jax.jit(jax.vmap(chunk, (0, None, 0, None)), static_argnums=3)
    run = run.lower(state, data, runs, per).compile()
    compile_s, total = time.perf_counter() - tc, -(-n_evals // per) * per * cfg.eval_every
    for i in range(-(-n_evals // per)):
        state, (loss, val) = run(state, data, runs)
        utils.check_finite(loss, f"{model} training loss", "a smaller learning rate")
        utils.progress(t0, f"{model} (all runs)", (i + 1) * per * cfg.eval_every, total,
                       train_nll=float(loss[:, -1].mean()), val_nll=float(val[:, -1].mean()))
    return state["best"], compile_s


def evaluate_runs(cfg: Config, model: str, params: dict, data: dict, runs: dict):
    """Per run and test class: ρ vs true rate, ρ vs PSTH (runs, 2, cells), rates in Hz."""
    apply, H = (apply_cnn if model == "cnn" else apply_ln), cfg.history

    def one(p, seed):
        pred = jnp.stack([predict(apply, p, data["stim_test"][seed, c], H) for c in (0, 1)])
        true, psth = data["rate_test"][seed][:, H - 1:], data["psth"][seed][:, H - 1:]
        per_cell = jax.vmap(pearson_per_cell)
        return per_cell(pred, true), per_cell(pred, psth), pred / cfg.dt

    return jax.jit(jax.vmap(one))(params, runs["seed"])


# %% [markdown]
# ## Looking inside: flashes and integrated gradients (Tanaka et al. 2019)
# 40-ms full-field flashes: dark ones should drive OFF and ON-OFF cells, bright ones ON and ON-OFF
# cells, in truth and CNN alike, with similar latencies (onset to peak). Integrated gradients
# attribute a cell's rate to layer-1 channels c, from the activations $a_0$ for gray to those for
# the flash, a, and sum to $\hat r(a) - \hat r(a_0)$ (completeness, checked; midpoint rule in α):
#
# $$A_c = \sum_{x,y} (a - a_0)_{c,x,y}\int_0^1 \frac{\partial \hat r_j}{\partial a_{c,x,y}}
#   \Big|_{a_0 + \alpha(a - a_0)} d\alpha.$$


# %%
def integrated_gradients(params: dict, x: jax.Array, cell: int, steps: int):
    """(c1,) IG of the cell's r̂ at window x (H, N, N) onto layer-1 channels; r̂(a) - r̂(a0)."""
    a, a0 = (jax.nn.relu(conv_matmul(v, params["w1"])[0] + params["b1"][:, None, None])
             for v in (x[None], jnp.zeros_like(x)[None]))  # layer-1 activations, flash and gray
    head = lambda z: cnn_head(params, z[None])[0, cell]  # noqa: E731
    alphas = (jnp.arange(steps) + 0.5) / steps
    mean_grad = jax.vmap(lambda al: jax.grad(head)(a0 + al * (a - a0)))(alphas).mean(0)
    return jnp.sum((a - a0) * mean_grad, (1, 2)), head(a) - head(a0)


def flash_analysis(cfg: Config, params: dict, intensities=(-2.0, -1.0, 1.0, 2.0)) -> dict:
    """Truth, CNN rates (Hz) from a bin before a 2-frame flash (flashes, 21, cells); IG at each
    cell's CNN peak, first/last flash (2, cells, c1); completeness errors; latencies (ms)."""
    H, cells, base = cfg.history, np.arange(cfg.n_cells), np.zeros((cfg.history + 20, cfg.n_pix))
    base[H:H + 2] = 1.0  # gray, then a 2-frame full-field flash at bin H

    def one(intensity):
        movie = intensity * jnp.asarray(base, jnp.float32)[:, :, None] * jnp.ones(cfg.n_pix)
        gt = simulate_retina(jax.random.key(0), movie, cfg)[0][H - 1:]
        cnn = predict(apply_cnn, params, movie, H, block=21) / cfg.dt
        return gt, cnn, *jax.vmap(lambda j, pk: integrated_gradients(  # IG at each cell's peak
            params, windows(movie, H - 1 + pk, H), j, cfg.ig_steps))(cells, jnp.argmax(cnn, 0))

    gt, cnn, attr, delta = map(np.asarray, jax.jit(jax.vmap(one))(jnp.asarray(intensities)))
    best = (gt - gt[:, :1]).max(1).argmax(0)  # each cell's preferred flash in the truth
    lat = lambda r: (np.argmax(r[best, :, cells], 1) - 1) * cfg.dt * 1e3  # noqa: E731  to peak
    rel = np.abs(attr.sum(-1) - delta) / np.maximum(np.abs(delta), 1e-6)
    return dict(intensities=intensities, gt=gt, cnn=cnn, attribution=attr[[0, -1]],
                completeness=rel, latency_true=lat(gt), latency_cnn=lat(cnn))


# %% [markdown]
# ## Figure


# %%
def make_figure(cfg: Config, res: dict) -> plt.Figure:
    """(a) Figs. 2/3B bars, (b) Fig. 3A data curve, (c) held-out rates, (d) layer-1 filters,
    (e) flash responses, (f) integrated gradients."""
    fig, ax = plt.subplots(2, 3, figsize=(17, 9))
    ax, col, conds = ax.ravel(), {"ln": "tab:blue", "cnn": "tab:red"}, ("wn_wn ns_ns wn_ns ns_wn")
    for i, m in enumerate(col):
        v = np.array([res["rho"][f"{m}_{c}"] for c in conds.split()])  # (4, seeds)
        ax[0].bar(np.arange(4) + i * 0.4 - 0.2, v.mean(1), 0.4, yerr=v.std(1), color=col[m],
                  label=m)
        o, v = np.argsort(res["curve"]["minutes"]), np.array(res["curve"][m])  # (sizes, seeds)
        ax[1].errorbar(np.sort(res["curve"]["minutes"]), v.mean(1)[o], v.std(1)[o], color=col[m],
                       marker="o", label=m)
    ax[0].set(xticks=range(4), xticklabels=["WN→WN", "NS→NS", "WN→NS", "NS→WN"], ylim=(0, 1),
              ylabel="ρ(model, true rate), mean over cells", title="Train → test (cf. Figs. 2, 3B)")
    ax[1].set(xscale="log", xlabel="training data (minutes)", ylabel="held-out ρ, NS → NS",
              title="Data efficiency (cf. Fig. 3A)")
    t, j = np.arange(200) * cfg.dt, CELL_TYPES.index("ON-OFF")
    for name, c in [("psth", "0.75"), ("true", "k"), ("ln", col["ln"]), ("cnn", col["cnn"])]:
        ax[2].plot(t, res["trace"][name][:200, j], color=c, label=name)
    ax[2].set(xlabel="time (s)", ylabel="rate (Hz)", title="Held-out natural scenes, ON-OFF cell")
    space = np.stack([np.linalg.svd(f.reshape(f.shape[0], -1))[2][0] for f in res["w1"]])
    space *= np.sign(space.sum(1, keepdims=True) + 1e-12) / np.abs(space).max(1, keepdims=True)
    space = np.pad(space.reshape(-1, cfg.k1, cfg.k1), ((0, 0), (1, 1), (1, 1)))  # rank-1 space part
    ax[3].imshow(np.concatenate(list(space), 1), cmap="RdBu_r", vmin=-1, vmax=1)
    ax[3].set(title="Layer-1 filters, spatial part (WN-trained)", xticks=[], yticks=[])
    fl, tt = res["flash"], (np.arange(res["flash"]["gt"].shape[1]) - 1) * cfg.dt * 1000
    for fi, cell in [(0, 0), (0, 1), (-1, 0), (-1, 1)]:  # OFF, ON cell; darkest, brightest flash
        fmt, c = ("k" if fi == 0 else "C1") + "-:"[cell], fl["intensities"][fi]
        ax[4].plot(tt, fl["gt"][fi, :, cell], fmt, label=f"{CELL_TYPES[cell]}, flash {c:+g}")
        ax[4].plot(tt, fl["cnn"][fi, :, cell], fmt, alpha=0.4, lw=3)
    ax[4].set(xlabel="ms after flash onset", ylabel="rate (Hz)", title="Truth (thin), CNN (thick)")
    A = np.concatenate(list(fl["attribution"]), 0).T  # (c1, dark cells + bright cells)
    im = ax[5].imshow(A, cmap="RdBu_r", aspect="auto", vmin=-np.abs(A).max(), vmax=np.abs(A).max())
    ax[5].set(xticks=range(A.shape[1]), xticklabels=CELL_TYPES[: cfg.n_cells] * 2,
              yticks=range(len(A)), ylabel="layer-1 channel",
              title="Integrated gradients: dark flash | bright flash")
    fig.colorbar(im, ax=ax[5])
    [a.legend(fontsize=7) for a in (*ax[:3], ax[4])]
    fig.tight_layout()
    return fig


# %% [markdown]
# ## Run everything
# The paper's values come from recordings: we compare qualitatively (CNN > LN on both classes)
# and against targets for the simulation (notes §3).


# %%
PAPER = {"title": "Deep Learning Models of the Retinal Response to Natural Scenes",
         "url": "https://arxiv.org/abs/1702.01825", "reproduced": "Figs. 2 and 3, simulated retina"}
TARGETS = {"cnn_minus_ln_wn": 0.10, "cnn_minus_ln_ns": 0.25, "cnn_frac_ceiling": 0.80,
           "ns_to_wn_cnn_minus_ln": 0.10}


def main(argv=None) -> dict:
    """Simulate the retina, train LN and CNN on both classes and data sizes, evaluate, save."""
    p = utils.make_parser(
        "07_retina_cnn",
        "CNN vs LN models (McIntosh et al. 2016) on a simulated retina.",
    )
    p.add_argument("--steps", type=utils.check(int, lambda v: v >= 100, "an integer >= 100"),
                   help="CNN training steps (default 500)")
    p.add_argument("--minutes", type=utils.check(float, lambda v: 0.5 <= v <= 30, "a number in "
                   "[0.5, 30]"), help="training data in minutes (default 10)")
    args = utils.parse_args(p, argv)
    cfg = Config(**QUICK) if args.quick else Config()
    minutes = args.minutes or cfg.train_frames * cfg.dt / 60
    cfg = replace(cfg, steps=args.steps or cfg.steps, train_frames=round(minutes * 60 / cfg.dt),
                  curve_minutes=tuple(m for m in cfg.curve_minutes if m < minutes))
    utils.enable_compilation_cache()
    t0, H, S = time.perf_counter(), cfg.history, args.seeds
    seeds = list(range(args.seed, args.seed + S))
    data = jax.jit(jax.vmap(make_data, (0, None)), static_argnums=1)(
        jax.vmap(jax.random.key)(jnp.asarray(seeds)), cfg)
    utils.progress(t0, "simulated retina", S, S, rate_hz=float(data["rate_test"].mean()))
    sizes = [cfg.train_frames] + [round(m * 60 / cfg.dt) + H - 1 for m in cfg.curve_minutes]
    per_seed = [(0, sizes[0])] + [(1, n) for n in sizes]  # WN, NS, then NS with less data
    runs = {k: jnp.asarray([[s, c, n][i] for s in range(S) for c, n in per_seed], jnp.int32)
            for i, k in enumerate(("seed", "cls", "n_used"))}
    cnn, compile_s = train_runs(cfg, "cnn", data, runs, jax.random.key(args.seed + 2**20), t0)
    ln, c = train_runs(cfg, "ln", data, runs, jax.random.key(args.seed + 2**21), t0)
    ev = {m: [np.asarray(a) for a in evaluate_runs(cfg, m, prm, data, runs)]
          for m, prm in (("cnn", cnn), ("ln", ln))}  # ρ true, ρ PSTH, rates: (runs, 2 classes, ...)
    rt, psth = data["rate_test"][:, :, H - 1:], data["psth"][:, :, H - 1:]
    ceiling = np.asarray(jax.vmap(jax.vmap(pearson_per_cell))(rt, psth))  # (seeds, 2, cells)
    wn, ns, stride = np.arange(S) * len(per_seed), np.arange(S) * len(per_seed) + 1, len(per_seed)
    rho = {f"{m}_{a}_{b}": ev[m][0][idx, c].mean(-1) for m in ev for a, b, idx, c in
           (("wn", "wn", wn, 0), ("ns", "ns", ns, 1), ("wn", "ns", wn, 1), ("ns", "wn", ns, 0))}
    frac = [ev["cnn"][1][idx, c].mean(-1) / ceiling[:, c].mean(-1) for idx, c in ((wn, 0), (ns, 1))]
    types = np.array(CELL_TYPES[: cfg.n_cells])
    curve = {"minutes": [cfg.train_frames * cfg.dt / 60, *cfg.curve_minutes],
             **{m: [ev[m][0][ns + k, 1].mean(-1).tolist() for k in range(stride - 1)] for m in ev}}
    sta = jax.jit(jax.vmap(jax.vmap(lambda *a: sta_ln(*a, H), (None, 1, None))))(
        data["stim_train"][:, 0], data["spikes_train"][:, 0], data["stim_test"][:, 0])
    sta = np.asarray(jax.vmap(pearson_per_cell)(jnp.swapaxes(sta, 1, 2), rt[:, 0]))
    flash = flash_analysis(cfg, jax.tree_util.tree_map(lambda a: a[0], cnn))  # seed 0, WN
    compile_s += c  # the figure shows the first seed's WN-trained CNN
    run_s = time.perf_counter() - t0 - compile_s
    diffs = {"cnn_minus_ln_wn": "wn_wn", "cnn_minus_ln_ns": "ns_ns",
             "ns_to_wn_cnn_minus_ln": "ns_wn", "wn_to_ns_cnn_minus_ln": "wn_ns"}
    per_seed_metrics = {
        **rho, **{k: rho[f"cnn_{a}"] - rho[f"ln_{a}"] for k, a in diffs.items()},
        "cnn_frac_ceiling": (frac[0] + frac[1]) / 2, "cnn_frac_ceiling_wn": frac[0],
        "cnn_frac_ceiling_ns": frac[1], "ceiling_wn": ceiling[:, 0].mean(-1),
        "ceiling_ns": ceiling[:, 1].mean(-1), "sta_ln_wn_wn": sta.mean(-1),
        **{f"{m}_{t.lower().replace('-', '')}_wn": ev[m][0][wn, 0][:, types == t].mean(-1)
           for m in ev for t in set(types)},
        **{f"{m}_ns_{mins:.2g}min": v for m in ev for mins, v in zip(curve["minutes"], curve[m])},
        "ig_completeness_max_rel_error": [flash["completeness"].max()],
        **{f"flash_latency_ms_{k}": [flash[f"latency_{k}"].mean()] for k in ("true", "cnn")}}
    metrics = {k: utils.summarize(v) for k, v in per_seed_metrics.items()}
    record = {"script": "07_retina_cnn", "paper": PAPER, "config": asdict(cfg), "quick": args.quick,
              "seeds": seeds, "metrics": metrics, "curve": curve, "cell_types": list(types),
              "flash": {k: flash[k].tolist() for k in ("attribution", "latency_true",
                                                       "latency_cnn")},
              "paper_values": {**TARGETS, "qualitative": "CNN > GLM > LN on WN and NS (Fig. 2)",
                               "source": "targets for this simulation (issue 6, notes §3)"},
              "compile_s": compile_s, "run_s": run_s}
    trace = {"true": np.asarray(data["rate_test"][0, 1, H - 1:]), "ln": ev["ln"][2][1, 1],
             "psth": np.asarray(data["psth"][0, 1, H - 1:]) / cfg.dt, "cnn": ev["cnn"][2][1, 1]}
    fig = make_figure(cfg, dict(rho=rho, curve=curve, trace=trace, w1=np.asarray(cnn["w1"][0]),
                                flash=flash))
    utils.save_results(args.out, "07_retina_cnn", record, fig)
    f = lambda k: f"{metrics[k]['mean']:.3f} ± {metrics[k]['std']:.3f}"  # noqa: E731
    print(f"07_retina_cnn{' (quick)' if args.quick else ''}, {S} seeds: CNN − LN on WN "
          f"{f('cnn_minus_ln_wn')} (target >= 0.10), on NS {f('cnn_minus_ln_ns')} (>= 0.25); "
          f"NS→WN {f('ns_to_wn_cnn_minus_ln')} (>= 0.10); CNN at {f('cnn_frac_ceiling')} of the "
          f"PSTH ceiling (>= 0.80); ρ LN / CNN: WN {f('ln_wn_wn')} / {f('cnn_wn_wn')}, NS "
          f"{f('ln_ns_ns')} / {f('cnn_ns_ns')}; compile {compile_s:.0f} s, run {run_s:.0f} s")
    return record


if __name__ == "__main__":
    main()
