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
# # 03 · A hierarchical RNN learned optimizer, meta-trained and reverse-engineered
#
# Wichrowska, Maheswaranathan, Hoffman, Gomez Colmenarejo, Denil, de Freitas, Sohl-Dickstein,
# *Learned Optimizers that Scale and Generalize*, ICML 2017,
# [arXiv:1703.04813](https://arxiv.org/abs/1703.04813); and Maheswaranathan, Sussillo, Metz, Sun,
# Sohl-Dickstein, *Reverse engineering learned optimizers reveals known and novel mechanisms*,
# NeurIPS 2021, [arXiv:2011.02159](https://arxiv.org/abs/2011.02159).
#
# An optimizer can be a neural network, meta-trained so that what it optimizes goes down fast. You
# will build the 2017 one (GRUs per parameter, tensor and problem, linked by means and gate biases;
# scale-free inputs; a normalised direction times a learned step), meta-train it on small problems
# behind one `lax.switch`, race it against Adam's learning-rate grid, then, as in 2021, find
# momentum, clipping and a schedule in a simpler learned optimizer's dynamics. Run
# `python 03_hierarchical_rnn_opt.py` (≈ 10 min, 2 idle CPU cores) or `--quick`. Expected (3 seeds):
# it beats its untrained self by ≈ 4.6 nats of mean log loss ratio and Adam at lr 1e-3 by ≈ 5.3, but
# reaches only ≈ 0.56 of tuned Adam's score (target 0.7) and stalls past its trained horizon; the
# GRU optimizer's slowest mode (|λ1| ≈ 0.86, α1 ≈ 3.7) sits at the optimal heavy ball (0.88, 3.76),
# and it clips (≈ 16%).

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
@dataclass(frozen=True)
class Config:
    """Defaults; "code" is the released TF code (`research/learned_optimizer`, metarun)."""
    K: int = 3  # timescales of gradient averaging (code: 4)
    H0: int = 10  # per-parameter GRU width (code: 10)
    H1: int = 20  # per-tensor GRU width (code: 20; the paper text may say 30, unverified)
    H2: int = 20  # global GRU width (code: 20)
    eta_lo: float = 1e-3  # initial step sizes η in [eta_lo, eta_hi] (code: 1e-6)
    eta_hi: float = 1e-1  # (code: 1e-2; widened so that a short meta-training can take big steps)
    use_attention: bool = False  # look-ahead gradient (code: off)
    n_in: int = 3  # the problems' θ is laid out as an MLP n_in-n_hidden-1: n = 36
    n_hidden: int = 7
    n_data: int = 64  # rows of the design/data matrix A
    train_families: tuple = (0, 1, 2)  # quadratic, 2-D test functions, logistic (not 3: MLP)
    T: int = 20  # steps per truncated unroll (code: 50 + Exp(200))
    unrolls: int = 10  # mean unrolls per problem, geometric (code: 1 + Exp(40))
    batch: int = 8  # problems per meta-step
    meta_steps: int = 2000  # meta-steps per seed (code: async workers, many more)
    meta_lr: float = 1e-3  # hand-written Adam (code: RMSProp, lr 1e-6; 3e-3 collapsed 1 seed in 3)
    meta_clip: float = 1.0  # elementwise clip after NaN -> 0 (code: 1e4)
    ablation: bool = True  # also meta-train with the plain-ratio objective
    eval_per_family: int = 8  # held-out instances per family
    horizon: int = 200  # steps scored: T × unrolls, the mean trained horizon
    long_factor: int = 5  # also scored at 5× the trained horizon
    adam_lrs: tuple = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)  # the baseline's grid, 1e-3 first
    re_hidden: int = 32  # 2021 analysis: GRU width (renn notebook: 64)
    re_dim: int = 5  # quadratic dimension, eigenvalues 10^U(-3, 0) (renn notebook)
    re_T: int = 101  # unroll length, full backprop (renn: 201)
    re_batch: int = 32  # quadratics per meta-step (renn: 64)
    re_steps: int = 1000  # Adam steps (renn: 2001)
    re_lr: float = 1e-3  # (renn: 8e-3 with eps 0.1, halved every 1000 steps; 3e-3 diverged)
    chunks: int = 5  # progress lines per training


QUICK = dict(meta_steps=300, eval_per_family=4, long_factor=2, ablation=False,
             re_hidden=16, re_T=51, re_batch=16, re_steps=300, re_lr=3e-3)  # 3e-3: stable at T=51


# %% [markdown]
# ## The problems: four families, one flat parameter vector
# Every instance is a function of the same $\theta\in\mathbb{R}^{36}$, cut into four "tensors" as
# the weights of an MLP 3-7-1; one `lax.switch` on the family index picks the loss, so all families
# share one compiled meta-step: a quadratic $\frac1{2M}\lVert A(\theta-\theta^*)\rVert^2$,
# Rosenbrock, Booth or Matyas on pairs, logistic regression, or regression onto a teacher MLP.


# %%
def layout(cfg: Config) -> np.ndarray:  # segment_ids (n,): the tensor of each coordinate
    return np.repeat(np.arange(4), (cfg.n_in * cfg.n_hidden, cfg.n_hidden, cfg.n_hidden, 1))


def mlp(theta, X, cfg):
    a, h = cfg.n_in * cfg.n_hidden, cfg.n_hidden
    W1, b1, w2 = theta[:a].reshape(cfg.n_in, h), theta[a:a + h], theta[a + h:a + 2 * h]
    return jnp.tanh(X @ W1 + b1) @ w2 + theta[-1]  # (M,)


def make_problem(key, kind, cfg: Config) -> dict:
    """One instance of family `kind` (a traced int): data, teacher and initial point θ0."""
    n, (kA, kt, k0, kn, kw) = len(layout(cfg)), jax.random.split(key, 5)
    A = jax.random.normal(kA, (cfg.n_data, n))
    target, z = jax.random.normal(kt, (n,)), jax.random.normal(k0, (n,))
    theta0 = jnp.stack([z, jax.random.uniform(k0, (n,), minval=-2, maxval=2), 0.1 * z, 0.5 * z])
    logits = A[:, :-1] @ target[:-1] + target[-1] + jax.random.normal(kn, (cfg.n_data,))
    y = jnp.where(kind == 2, (logits > 0).astype(jnp.float32), mlp(target, A[:, :cfg.n_in], cfg))
    return dict(kind=kind, A=A, target=target, y=y, theta0=theta0[kind],
                which=jax.random.randint(kw, (), 0, 3))


def loss(theta, prob, cfg: Config):
    """f(θ) ≥ 0 of the instance's family (minimum 0 except for logistic regression)."""
    A, y = prob["A"], prob["y"]
    def test_2d(th):  # Rosenbrock, Booth, Matyas on coordinate pairs
        a, b = th[0::2], th[1::2]
        return jnp.mean(jnp.stack([(1 - a) ** 2 + 100 * (b - a**2) ** 2,
                                   (a + 2 * b - 7) ** 2 + (2 * a + b - 5) ** 2,
                                   0.26 * (a**2 + b**2) - 0.48 * a * b])[prob["which"]])
    return lax.switch(prob["kind"], [
        lambda th: 0.5 * jnp.mean((A @ (th - prob["target"])) ** 2), test_2d,
        lambda th: jnp.mean(jax.nn.softplus(-(2 * y - 1) * (A[:, :-1] @ th[:-1] + th[-1]))),
        lambda th: 0.5 * jnp.mean((mlp(th, A[:, :cfg.n_in], cfg) - y) ** 2)], theta)


# %% [markdown]
# ## The optimizer (details from the released code)
# **Inputs**, per coordinate: gradient averages at K timescales ($\beta_1$ learned,
# $\beta_{k+1}=\sqrt{\beta_k}$) over their running RMS (learned decay γ),
# $m_k \leftarrow (1-\beta_k)g + \beta_k m_k$, $v_k \leftarrow (1-\gamma)(m_k^2+10^{-12}) +
# \gamma v_k$, $s_k = \operatorname{asinh}(m_k/\sqrt{v_k})$, and the features
# $x_i = [s_k \mid s_k s_{k+1} \mid \log v_k - \overline{\log v} \mid \log\eta_i -
# \overline{\log\eta}_\tau]$ (3K numbers; none changes if f is scaled). **Hierarchy**: GRUs per
# coordinate, per tensor τ and per problem; means go up, the level above comes down as a bias:
#
# $$h^0_i{}' = \mathrm{GRU}_0(x_i, h^0_i;\ A_{10}h^1_\tau + A_{20}h^2),\quad
#   h^1_\tau{}' = \mathrm{GRU}_1(\mathrm{mean}_{i\in\tau}[h^0_i{}', x_i], h^1_\tau;\ A_{21}h^2),
#   \quad h^2{}' = \mathrm{GRU}_2(\mathrm{mean}_\tau h^1_\tau{}', h^2).$$
#
# **Outputs**: a direction with a gradient shortcut, unit RMS per tensor; a log step size with
# momentum μ and a straight-through clip:
#
# $$d_i = w_u\cdot h^0_i + w_s\cdot s_i,\ \ \hat d_i = d_i/\mathrm{rms}_\tau(d),\ \ \tilde l_i =
#   \mathrm{clip}(\log\eta_i + w_\eta\cdot h^0_i + b_\eta),\ \ \theta_i \leftarrow \theta_i -
#   e^{\tilde l_i + c}\hat d_i,\ \ \log\eta_i \leftarrow \mu\log\eta_i + (1-\mu)\tilde l_i.$$
#
# > With $w_u = 0$, $w_s = (1, 0, …)$ this is sign-SGD (sign of momentum if β is kept) whatever
# > the GRUs do; $w_s$ starts at 1/K: the untrained optimizer is already sign/Adam-like.
# > **The code differs:** it feeds only the *last* tensor's $h^1$ up (we average, as the paper
# > says) and averages log η over the problem (we use the tensor, so tensors talk only through
# > the hierarchy). Attention (off, as in the code) takes the next gradient at
# > $\theta' - e^{\tilde l}\hat a$, with $\hat a$ a second normalised readout.


# %%
def init_gru(key, n_in: int, n_h: int, gate_bias: float = 2.2) -> dict:
    k1, k2 = jax.random.split(key)
    dense = lambda k, m: 0.5 / np.sqrt(n_in + n_h) * jax.random.normal(k, (n_in + n_h, m))  # noqa
    return dict(Wg=dense(k1, 2 * n_h), bg=jnp.full(2 * n_h, gate_bias), Wc=dense(k2, n_h),
                bc=jnp.zeros(n_h))


def gru(p, x, h, bias=0.0):
    """GRU in TF's convention, h' = u·h + (1-u)·c, with an additive gate bias (..., 3H)."""
    H, bias = h.shape[-1], jnp.broadcast_to(bias, h.shape[:-1] + (3 * h.shape[-1],))
    ru = jax.nn.sigmoid(jnp.concatenate([x, h], -1) @ p["Wg"] + p["bg"] + bias[..., :2 * H])
    r, u = ru[..., :H], ru[..., H:]  # gate bias 2.2: u ≈ 0.9, slow states at init
    c = jnp.tanh(jnp.concatenate([x, r * h], -1) @ p["Wc"] + p["bc"] + bias[..., 2 * H:])
    return u * h + (1 - u) * c


def init_meta_params(key, cfg: Config) -> dict:
    """φ: the optimizer's own weights (about 7.4k numbers with the defaults)."""
    (H0, H1, H2, F), ks = (cfg.H0, cfg.H1, cfg.H2, 3 * cfg.K), jax.random.split(key, 12)
    nrm = lambda k, *s: 0.5 / np.sqrt(s[0]) * jax.random.normal(k, s)  # noqa: E731
    unif = lambda k, n: jax.random.uniform(k, (n,), minval=-1, maxval=1)  # noqa: E731
    return dict(gru0=init_gru(ks[0], F, H0), gru1=init_gru(ks[1], H0 + F, H1),
                gru2=init_gru(ks[2], H1, H2), A10=nrm(ks[3], H1, 3 * H0),
                A20=nrm(ks[4], H2, 3 * H0), A21=nrm(ks[5], H2, 3 * H1), w_u=nrm(ks[6], H0),
                w_s=jnp.full(cfg.K, 1.0 / cfg.K), w_scl=nrm(ks[7], H0), b_scl=jnp.array(3.2),
                w_inp=nrm(ks[8], H0), b_inp=jnp.array(2.2), w_eta=jnp.zeros(H0),
                b_eta=jnp.array(0.0), c=jnp.array(-1.0), mu_logit=jnp.array(3.2),
                w_a=nrm(ks[6], H0), h0_init=unif(ks[9], H0), h1_init=unif(ks[10], H1),
                h2_init=unif(ks[11], H2))


def st_clip(x, lo=-33.0, hi=33.0):  # clip in the forward pass, identity gradient
    return x + lax.stop_gradient(jnp.clip(x, lo, hi) - x)


def make_hrnn_optimizer(meta_params: dict, segment_ids, cfg: Config):
    """(init(θ, key) -> state, update(g, state, θ) -> (θ, state)); θ[i] is in tensor seg_ids[i]."""
    mp, seg = meta_params, np.asarray(segment_ids)
    n, n_t, K = len(seg), int(seg.max()) + 1, cfg.K
    S = jnp.asarray(np.eye(n_t, dtype=np.float32)[seg])  # (n, n_t) one-hot
    tmean = lambda x: (S.T @ x) / S.sum(0)[:, None]  # noqa: E731  (n, d) -> (n_t, d)
    rms = lambda d: jnp.sqrt(tmean(d[:, None] ** 2)[seg, 0] + 1e-16)  # noqa: E731  per tensor
    def init(params, key):
        k1, k2 = jax.random.split(key)
        lo, hi = np.log(cfg.eta_lo) / 2, np.log(cfg.eta_hi) / 2  # plus a per-tensor offset
        z, u = jnp.zeros(n), lambda k, s: jax.random.uniform(k, s, minval=lo, maxval=hi)
        return dict(h0=jnp.broadcast_to(mp["h0_init"], (n, cfg.H0)), m=jnp.zeros((n, K)),
                    h1=jnp.broadcast_to(mp["h1_init"], (n_t, cfg.H1)), h2=mp["h2_init"], scl=z,
                    v=jnp.zeros((n, K)), inp=z, look=z, log_eta=u(k1, (n,)) + u(k2, (n_t,))[seg])
    def update(grad, state, params):
        beta = (state["inp"][:, None] + 1e-12) ** (0.5 ** jnp.arange(K))  # β_{k+1} = √β_k
        m = (1 - beta) * grad[:, None] + beta * state["m"]  # (n, K)
        gam = state["scl"][:, None]  # 0 at the first step: v starts from m²
        v = (1 - gam) * (m**2 + 1e-12) + gam * state["v"]
        s, log_v, log_eta = jnp.arcsinh(m / jnp.sqrt(v + 1e-16)), jnp.log(v), state["log_eta"]
        x = jnp.concatenate([s, s[:, :-1] * s[:, 1:], log_v - log_v.mean(1, keepdims=True),
                             (log_eta - tmean(log_eta[:, None])[seg, 0])[:, None]], 1)  # (n, 3K)
        h1, h2 = state["h1"], state["h2"]
        h0 = gru(mp["gru0"], x, state["h0"], h1[seg] @ mp["A10"] + h2 @ mp["A20"])  # (n, H0)
        h1 = gru(mp["gru1"], tmean(jnp.concatenate([h0, x], 1)), h1, h2 @ mp["A21"])  # (n_t, H1)
        h2 = gru(mp["gru2"], h1.mean(0), h2)  # (H2,)
        d, l_t = h0 @ mp["w_u"] + s @ mp["w_s"], st_clip(log_eta + h0 @ mp["w_eta"] + mp["b_eta"])
        a, mu = h0 @ mp["w_a"] + s @ mp["w_s"], jax.nn.sigmoid(mp["mu_logit"])  # a: attention
        look = -jnp.exp(l_t) * a / rms(a) if cfg.use_attention else jnp.zeros(n)
        new = dict(h0=h0, h1=h1, h2=h2, m=m, v=v, look=look, log_eta=mu * log_eta + (1 - mu) * l_t,
                   scl=jax.nn.sigmoid(h0 @ mp["w_scl"] + mp["b_scl"]),
                   inp=jax.nn.sigmoid(h0 @ mp["w_inp"] + mp["b_inp"]))
        return params - jnp.exp(l_t + mp["c"]) * d / rms(d), new
    return init, update


# %% [markdown]
# ## Meta-objective and truncated unrolls
# The optimizer runs T steps; the meta-loss is the mean log ratio to the *problem's* start θ0:
#
# $$\mathcal L(\phi) = \frac1T\sum_{t=s+1}^{s+T}\log\big(f(\theta_t)/f(\theta_0) + 10^{-6}\big).$$
#
# > The log rewards exact convergence and ignores the loss scale. The code writes
# > $f_t/(f_0+10^{-6})$ (our floor is relative, so the invariance is exact) and scores $f(\theta_s)$
# > twice but not $f(\theta_{s+T})$. In training, ratios are capped at 1e10 (NaN counts as the cap)
# > so that the loss still pushes back from divergence, and a problem that diverges (ratio > 1e3) is
# > replaced; in evaluation the cap is 1e3. The meta-gradient flows through ∇f (Hessian-vector
# > products), as in the code.


# %%
def meta_objective(fs, f0, linear=False, cap=1e3):
    """Mean log (or plain, if `linear`) ratio f_t / f_0 over fs (T,); > cap or non-finite: cap."""
    r = jnp.where(jnp.isfinite(fs / f0), jnp.minimum(fs / f0, cap), cap)
    return jnp.where(linear, jnp.mean(r), jnp.mean(jnp.log(r + 1e-6)))


def unroll(meta, f, theta, state, segment_ids, cfg: Config, T: int):
    """T optimizer steps on f: returns (θ, state, f(θ_1..θ_T))."""
    update = make_hrnn_optimizer(meta, segment_ids, cfg)[1]
    def step(carry, _):
        theta, state = update(jax.grad(f)(carry[0] + carry[1]["look"]), carry[1], carry[0])
        return (theta, state), f(theta)
    (theta, state), fs = lax.scan(step, (theta, state), None, length=T)
    return theta, state, fs


# %% [markdown]
# ## Meta-training and evaluation
# A meta-step unrolls each of `batch` problems T more steps; a problem ends after a geometric number
# of unrolls (a light version of the paper's heavy-tailed horizons) or when it blows up, and a fresh
# training-family instance replaces it, its hidden states taken from φ inside the loss so that they
# are learned too. Seeds and the plain-ratio ablation are vmapped.
#
# **Evaluation**: held-out instances of every family (a key no training run sees), `long_factor` ×
# the trained horizon. Score: the mean log ratio $\frac1H\sum_{t\le H}\log(f_t/f_0+10^{-6})$ (lower
# is better), at H = the trained horizon and 5× it, against Adam over lr 1e-3 … 1 (edges included).


# %%
def make_meta_train(cfg: Config):
    """(init(key) -> training state, chunk(ts, linear, length) -> (ts, meta-losses))."""
    seg, (adam_init, adam_update) = layout(cfg), utils.adam(cfg.meta_lr)
    fams, B = jnp.asarray(cfg.train_families), cfg.batch
    def new_problem(key, meta):
        k_kind, k_prob, k_opt, k_len = jax.random.split(key, 4)
        prob = make_problem(k_prob, fams[jax.random.randint(k_kind, (), 0, len(fams))], cfg)
        th, left = prob["theta0"], jax.random.geometric(k_len, 1.0 / cfg.unrolls).astype(jnp.int32)
        return dict(prob=prob, theta=th, state=make_hrnn_optimizer(meta, seg, cfg)[0](th, k_opt),
                    f0=loss(th, prob, cfg), fresh=jnp.array(True), left=left)
    def init(key):
        k_meta, k_prob, key = jax.random.split(key, 3)
        meta = init_meta_params(k_meta, cfg)
        probs = jax.vmap(new_problem, (0, None))(jax.random.split(k_prob, B), meta)
        return dict(meta=meta, adam=adam_init(meta), probs=probs, key=key)
    def one_loss(meta, c, linear):  # cap 1e10: the log-loss still sees divergence
        st = dict(c["state"], **{h: jnp.where(c["fresh"], meta[h + "_init"], c["state"][h])
                                 for h in ("h0", "h1", "h2")})
        theta, st, fs = unroll(meta, lambda th: loss(th, c["prob"], cfg), c["theta"], st, seg,
                               cfg, cfg.T)
        return meta_objective(fs, c["f0"], linear, jnp.where(linear, 10.0, 1e10)), (theta, st, fs)
    def meta_step(ts, linear):
        def batch_loss(meta):
            L, aux = jax.vmap(one_loss, (None, 0, None))(meta, ts["probs"], linear)
            return L.mean(), aux
        (L, (theta, st, fs)), g = jax.value_and_grad(batch_loss, has_aux=True)(ts["meta"])
        (key, k_new), c = jax.random.split(ts["key"]), cfg.meta_clip
        clip = lambda x: jnp.clip(jnp.where(jnp.isfinite(x), x, 0.0), -c, c)  # noqa: E731
        meta, adam = adam_update(jax.tree_util.tree_map(clip, g), ts["adam"], ts["meta"])
        old = dict(ts["probs"], theta=theta, state=st, left=ts["probs"]["left"] - 1,
                   fresh=jnp.zeros(B, bool))
        done = (old["left"] <= 0) | ~(fs[:, -1] < 1e3 * ts["probs"]["f0"])  # ended or diverged
        new = jax.vmap(new_problem, (0, None))(jax.random.split(k_new, B), meta)
        pick = lambda a, b: jnp.where(done.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)  # noqa
        return dict(meta=meta, adam=adam, probs=jax.tree_util.tree_map(pick, new, old), key=key), L
    return init, lambda ts, lin, n: lax.scan(lambda t, _: meta_step(t, lin), ts, None, length=n)


def compile_timed(fn, *args):  # jit(fn) compiled for these arguments, and the seconds it took
    t = time.perf_counter()
    return jax.jit(fn).lower(*args).compile(), time.perf_counter() - t


def meta_train(cfg: Config, keys, linear, t0: float):
    """Meta-train one φ per key, plain ratio where `linear`: (φ_0, φ, losses, compile seconds)."""
    init, chunk = make_meta_train(cfg)
    ts = jax.jit(jax.vmap(init))(keys)
    meta0, n, losses = ts["meta"], cfg.meta_steps // cfg.chunks, []
    run, compile_s = compile_timed(jax.vmap(lambda t, lin: chunk(t, lin, n)), ts, linear)
    for i in range(cfg.chunks):
        ts, L = run(ts, linear)
        losses.append(np.asarray(L))
        utils.check_finite(losses[-1], "meta-loss", "a smaller meta_lr or meta_clip",
                           steps=np.arange(i * n, (i + 1) * n))
        utils.progress(t0, "meta-training", (i + 1) * n, n * cfg.chunks,
                       meta_loss=float(losses[-1][~np.asarray(linear), -n // 5:].mean()))
    return meta0, ts["meta"], np.concatenate(losses, 1), compile_s


def run_learned(meta, probs, key, cfg: Config, steps: int):
    """f(θ_1..θ_steps) (instances, steps) of the learned optimizer with weights `meta`."""
    def one(prob, k):
        state = make_hrnn_optimizer(meta, layout(cfg), cfg)[0](prob["theta0"], k)
        return unroll(meta, lambda th: loss(th, prob, cfg), prob["theta0"], state, layout(cfg),
                      cfg, steps)[2]
    return jax.vmap(one)(probs, jax.random.split(key, len(probs["kind"])))


def run_adam(lr, probs, cfg: Config, steps: int):
    """f(θ_1..θ_steps) (instances, steps) of Adam at learning rate lr."""
    init, update = utils.adam(lr)
    def one(prob):
        f = lambda th: loss(th, prob, cfg)  # noqa: E731
        step = lambda c, _: ((u := update(jax.grad(f)(c[0]), c[1], c[0])), f(u[0]))  # noqa: E731
        return lax.scan(step, (prob["theta0"], init(prob["theta0"])), None, length=steps)[1]
    return jax.vmap(one)(probs)


# %% [markdown]
# ## What did it learn? (Maheswaranathan et al. 2021)
# A simpler learned optimizer, a GRU per coordinate, $h_{t+1} = F(h_t, g_t)$, $x_{t+1} = x_t +
# w^\top h_{t+1} + b$, trained on the renn notebook's quadratics ($f = \frac12x^\top Hx + v^\top x +
# c$, eigenvalues $10^{U(-3,0)}$). **Fixed points** $h^* = F(h^*, 0)$ by Newton from visited states
# (the paper minimises $\lVert h-F(h,0)\rVert^2$). **Linearization** $\partial F/\partial h =
# R\Lambda R^{-1}$, $J_{in} = \partial F/\partial g$: mode k is a momentum with $\beta_k =
# \lambda_k$, $\alpha_k = -(w^\top r_k)(l_k^\top J_{in})$; the best heavy ball for λ in $[a^2, b^2]$
# has $\alpha^* = 4/(a+b)^2$, $\beta^* = ((b-a)/(b+a))^2$. **Clipping**: Δ(g) at h* against its
# tangent. **Schedule**: the step size $-\partial\Delta/\partial g$ along g = 0 from h = 0.
# > Heavy ball as a one-unit RNN, $h' = \beta h + g$, $\Delta = -\alpha h'$, must come out with
# > exactly α and β: the tests check that before any claim about the GRU.


# %%
def lopt_cell(p, h, g):  # h_{t+1} = F(h_t, g_t), g a scalar per coordinate; Δx = w·h_{t+1} + b
    return gru(p["gru"], jnp.asarray(g)[..., None], h)


def random_quadratic(key, dim: int):
    kq, kl, kv = jax.random.split(key, 3)
    Q = jnp.linalg.qr(jax.random.normal(kq, (dim, dim)))[0]
    H = (Q * 10 ** jax.random.uniform(kl, (dim,), minval=-3.0, maxval=0.0)) @ Q.T
    return dict(H=H, x_star=-jnp.linalg.solve(H, jax.random.normal(kv, (dim,))))  # ∇f(0) = v


def run_gru_lopt(p, quad, T: int, alpha=None):
    """From x = 0, h = 0: (f_0..f_T, g_t (T, dim), h_{t+1} (T, dim, H)); GD at α if given."""
    H, x_star, f = quad["H"], quad["x_star"], lambda x: 0.5 * (x - x_star) @ H @ (x - x_star)
    def step(c, _):
        g = H @ (c[0] - x_star)
        h = lopt_cell(p, c[1], g)
        x = c[0] + (h @ p["w"] + p["b"] if alpha is None else -alpha * g)
        return (x, h), (f(x), g, h)
    x0 = jnp.zeros(len(x_star))
    fs, gs, hs = lax.scan(step, (x0, jnp.zeros((len(x_star), len(p["w"])))), None, length=T)[1]
    return jnp.concatenate([f(x0)[None], fs]), gs, hs


def train_gru_lopt(keys, cfg: Config, t0: float):
    """One GRU optimizer per key (gate bias 0: no built-in momentum): (p, losses, compile s)."""
    adam_init, adam_update = utils.adam(cfg.re_lr)
    def L(p, k):
        quads = jax.vmap(random_quadratic, (0, None))(jax.random.split(k, cfg.re_batch), cfg.re_dim)
        fs = jax.vmap(lambda q: run_gru_lopt(p, q, cfg.re_T)[0])(quads)
        return jnp.mean(jnp.minimum(fs[:, 1:] / fs[:, :1], 1e3))
    def step(c, k):
        val, g = jax.value_and_grad(L)(c[0], k)
        norm = jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(g)))
        scale = jnp.where(jnp.isfinite(norm), jnp.minimum(1.0, 5.0 / norm), 0.0)  # clip at 5
        return adam_update(jax.tree_util.tree_map(lambda x: x * scale, g), c[1], c[0]), val
    p = jax.vmap(lambda k: dict(gru=init_gru(k, 1, cfg.re_hidden, 0.0), b=jnp.array(0.0),
                                w=jnp.zeros(cfg.re_hidden)))(keys)
    c, losses, n = (p, jax.vmap(adam_init)(p)), [], cfg.re_steps // cfg.chunks
    run, compile_s = compile_timed(
        jax.vmap(lambda c, k: lax.scan(step, c, jax.random.split(k, n))), c, keys)
    for i in range(cfg.chunks):
        c, val = run(c, jax.vmap(lambda k: jax.random.fold_in(k, i))(keys))
        losses.append(np.asarray(val))
        utils.progress(t0, "GRU optimizer", (i + 1) * n, n * cfg.chunks,
                       meta_loss=float(losses[-1][:, -n // 5:].mean()))
    return c[0], np.concatenate(losses, 1), compile_s


def fixed_points(cell, h_starts, iters: int = 30):
    """Newton on h = F(h, 0) from each start (S, H); returns (h*, q = ½|h - F(h, 0)|² (S,))."""
    def newton(h, _):
        J = jax.jacfwd(lambda z: z - cell(z, 0.0))(h)
        return h - jnp.clip(jnp.linalg.solve(J, h - cell(h, 0.0)), -1.0, 1.0), None
    hs = jax.vmap(lambda h: lax.scan(newton, h, None, length=iters)[0])(h_starts)
    return hs, jax.vmap(lambda h: 0.5 * jnp.sum((h - cell(h, 0.0)) ** 2))(hs)


def linearize(cell, readout, h_star) -> dict:
    """Modes of the linearization at (h*, g = 0), sorted by |λ|: λ_k (= β_k) and α_k."""
    J, J_in = jax.jacfwd(cell, (0, 1))(h_star, 0.0)  # (H, H), (H,)
    w = jax.grad(readout)(cell(h_star, 0.0))  # Δ_t = readout(h_{t+1})
    lam, R = np.linalg.eig(np.asarray(J, np.float64))
    alpha = -(np.asarray(w) @ R) * (np.linalg.inv(R) @ np.asarray(J_in))  # rows of R⁻¹: l_k
    order = np.argsort(-np.abs(lam))
    return dict(lam=lam[order], alpha=alpha[order].real)


def heavy_ball_optimum(lam_min: float, lam_max: float):
    a, b = np.sqrt(lam_min), np.sqrt(lam_max)
    return 4 / (a + b) ** 2, ((b - a) / (b + a)) ** 2  # (α*, β*)


def visit(p, key, cfg: Config) -> dict:
    """One jit for all seeds: 32 test rollouts, Newton from 64 visited h, schedule, GD reference."""
    cell = lambda h, g: lopt_cell(p, h, g)  # noqa: E731
    step = lambda h: -jax.grad(lambda g: cell(h, g) @ p["w"])(0.0)  # noqa: E731  effective lr
    k_q, k_s = jax.random.split(key)
    quads = jax.vmap(random_quadratic, (0, None))(jax.random.split(k_q, 32), cfg.re_dim)
    fs, gs, hs = jax.vmap(lambda q: run_gru_lopt(p, q, cfg.re_T))(quads)
    hs = hs.reshape(-1, cfg.re_hidden)
    h_fp, q = fixed_points(cell, hs[jax.random.choice(k_s, len(hs), (64,))])
    lrs = lax.scan(lambda h, _: (cell(h, 0.0), step(h)), jnp.zeros(cfg.re_hidden), None,
                   length=cfg.re_T)[1]
    gd = jax.vmap(lambda q: run_gru_lopt(p, q, cfg.re_T, alpha=2 / (1e-3 + 1))[0])(quads)
    return dict(fs=fs, g_p99=jnp.quantile(jnp.abs(gs), 0.99), h_fp=h_fp, q=q, lrs=lrs, gd=gd)


def analyse(p, v: dict) -> dict:
    """Fixed point, modes, clipping, schedule and test score of one trained GRU optimizer."""
    cell, readout = lambda h, g: lopt_cell(p, h, g), lambda h: h @ p["w"] + p["b"]
    q = np.where(np.isfinite(v["q"]), v["q"], np.inf)  # a Newton run may diverge: skip it
    h_star = v["h_fp"][int(np.argmin(q))]
    update = np.asarray(jax.vmap(lambda g: readout(cell(h_star, g)))(jnp.linspace(-10, 10, 201)))
    slope0 = float(jax.grad(lambda g: readout(cell(h_star, g)))(0.0))
    fs, gd, lrs = np.asarray(v["fs"]), np.asarray(v["gd"]), np.asarray(v["lrs"])
    modes = linearize(cell, readout, h_star)
    return dict(modes, lambda1=abs(modes["lam"][0]), alpha1=modes["alpha"][0], update=update,
                slope0=slope0, clip_ratio=(update[200] - update[100]) / (10 * slope0),
                g_p99=float(v["g_p99"]), converged=int((q < 1e-8).sum()), lrs=lrs,
                lr_first_over_last=lrs[0] / lrs[-1], objective=np.mean(fs[:, 1:] / fs[:, :1]),
                gd_objective=np.mean(gd[:, 1:] / gd[:, :1]))


if utils.in_notebook():  # the identity the analysis must pass: heavy ball as a 1-unit RNN
    hb = linearize(lambda h, g: 0.9 * h + g, lambda h: -0.5 * h[0], jnp.zeros(1))
    print(f"heavy ball α = 0.5, β = 0.9 -> α = {hb['alpha'][0]:.4f}, β = {hb['lam'][0].real:.4f};"
          f" optimum for λ in [1e-3, 1]: (α*, β*) = {np.round(heavy_ball_optimum(1e-3, 1), 3)}")


# %% [markdown]
# ## Figure and main


# %%
def make_figure(cfg, curves, scores, losses, re) -> plt.Figure:
    """Meta-training, held-out curves, Adam's grid; the GRU optimizer's modes and Δ(g)."""
    fig, ax = plt.subplots(2, 3, figsize=(16, 9))
    ax = ax.ravel()
    band = lambda a, x, y, c, lb: (a.plot(x, y.mean(0), color=c, label=lb), a.fill_between(
        x, y.mean(0) - y.std(0), y.mean(0) + y.std(0), color=c, alpha=0.2))  # mean ± std, seeds
    k = max(1, losses.shape[1] // 50)  # meta-losses averaged over windows of k steps
    band(ax[0], np.arange(losses.shape[1] // k) * k, losses[:, :losses.shape[1] // k * k].reshape(
        len(losses), -1, k).mean(2), "C0", "mean ± std over seeds")
    for a, (name, c) in zip(ax[1:3], curves.items()):
        t = np.arange(1, c["adam"].shape[1] + 1)
        band(a, t, c["learned"], "C0", "learned (meta-trained)")
        band(a, t, c["untrained"], "C7", "learned, untrained")
        a.plot(t, c["adam"][0], "C3", label="Adam lr 1e-3")
        a.plot(t, c["adam"][c["best"]], "C2", label=f"Adam, best lr ({cfg.adam_lrs[c['best']]:g})")
        a.axvline(cfg.horizon, color="k", ls=":", lw=1, label="trained horizon")
        a.set(xscale="log", xlabel="step", ylabel="mean log f_t/f_0", title=f"Held-out {name}")
    ax[3].plot(cfg.adam_lrs, scores.pop("adam"), "o-", color="C2", label="Adam")
    for (key, v), c in zip(scores.items(), ("C0", "C7", "C1")):
        ax[3].axhline(np.mean(v) if len(v) else np.nan, color=c, ls="--", label=key)
    for s, r in enumerate(re):
        ax[4].plot(np.abs(r["lam"]), r["alpha"], "o", ms=4, color=f"C{s}", label=f"seed {s}")
        ax[5].plot(np.linspace(-10, 10, 201), r["update"], color=f"C{s}", label=f"seed {s}")
        ax[5].plot([-10, 10], np.array([-10, 10]) * r["slope0"] + r["update"][100], ":",
                   color=f"C{s}", lw=1)
    ax[4].plot(*heavy_ball_optimum(1e-3, 1)[::-1], "k*", ms=14, label="optimal heavy ball (β*, α*)")
    ax[0].set(xlabel="meta-step", ylabel="meta-loss (log ratio)", title="Meta-training")
    ax[3].set(xscale="log", xlabel="Adam learning rate", ylabel="score over horizon",
              title="Training families: learned vs Adam's grid")
    ax[4].set(xlabel="|λ_k| (momentum β_k)", ylabel="α_k", title="GRU optimizer: modes at h*")
    ax[5].set(ylim=(-15, 15), xlabel="g", ylabel="Δ(g) at h*", title="Update (dotted: linear)")
    for a in ax:
        a.legend(fontsize=7)
    fig.tight_layout()
    return fig


PAPER = {"title": "Learned Optimizers that Scale and Generalize; Reverse engineering learned "
                  "optimizers reveals known and novel mechanisms",
         "url": "https://arxiv.org/abs/1703.04813", "url_2021": "https://arxiv.org/abs/2011.02159",
         "reproduced": "the 2017 claim that the learned optimizer beats Adam on problems like its "
                       "meta-training set (toy scale); the 2021 momentum, clipping, schedule"}


def main(argv=None) -> dict:
    """Meta-train, evaluate against Adam, train and reverse-engineer the GRU optimizer."""
    p = utils.make_parser(
        "03_hierarchical_rnn_opt",
        "Hierarchical RNN learned optimizer (Wichrowska et al. 2017) and "
        "reverse engineering (Maheswaranathan et al. 2021).",
    )
    p.add_argument("--meta-steps", type=utils.positive_int, help="meta-steps per seed")
    p.add_argument("--batch", type=utils.positive_int, help="problems per meta-step")
    p.add_argument("--re-steps", type=utils.positive_int, help="GRU optimizer training steps")
    p.add_argument("--attention", action="store_true", help="look-ahead gradient")
    args = utils.parse_args(p, argv)
    given = {k: getattr(args, k) for k in ("meta_steps", "batch", "re_steps") if getattr(args, k)}
    cfg = replace(Config(**(QUICK if args.quick else {})), **given, use_attention=args.attention)
    if min(cfg.meta_steps, cfg.re_steps) < cfg.chunks:
        p.error(f"--meta-steps and --re-steps must be >= {cfg.chunks} (one per progress line)")
    utils.enable_compilation_cache()
    t0, seeds = time.perf_counter(), list(range(args.seed, args.seed + args.seeds))
    S, n_lin = len(seeds), len(seeds) if cfg.ablation else 0
    keys = jax.vmap(jax.random.key)(jnp.asarray(seeds + [s + 5000 for s in seeds[:n_lin]]))
    meta0, meta, losses, compile_s = meta_train(
        cfg, keys, jnp.asarray([False] * S + [True] * n_lin), t0)
    kinds = jnp.repeat(jnp.arange(4), cfg.eval_per_family)  # held-out instances of every family
    probs = jax.jit(jax.vmap(make_problem, (0, 0, None)), static_argnums=2)(
        jax.random.split(jax.random.key(args.seed + 10_000), len(kinds)), kinds, cfg)
    f0 = np.asarray(jax.vmap(loss, (0, 0, None))(probs["theta0"], probs, cfg))
    steps, lrs = cfg.horizon * cfg.long_factor, jnp.asarray(cfg.adam_lrs, jnp.float32)
    metas = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b[:S]]), meta, meta0)
    run_l, c1 = compile_timed(jax.vmap(lambda mt: run_learned(
        mt, probs, jax.random.key(1), cfg, steps)), metas)
    run_a, c2 = compile_timed(jax.vmap(lambda lr: run_adam(lr, probs, cfg, steps)), lrs)
    fs_l, fs_a = np.asarray(run_l(metas)), np.asarray(run_a(lrs))
    utils.progress(t0, "evaluation", steps, steps)
    train, held = np.isin(kinds, cfg.train_families), np.asarray(kinds) == 3  # held: MLP family
    log_r = lambda fs, m: np.log(  # noqa: E731  the evaluation's log ratio per step, capped at 1e3
        np.minimum(np.nan_to_num(fs[:, m] / f0[m][:, None], nan=1e3), 1e3) + 1e-6)
    sc = lambda fs, H, m: log_r(fs, m)[:, :, :H].mean((1, 2))  # noqa: E731  score over H steps
    learned, lin, untrained = np.split(sc(fs_l, cfg.horizon, train), [S, S + n_lin])
    learned_mlp, _, untrained_mlp = np.split(sc(fs_l, cfg.horizon, held), [S, S + n_lin])
    adam, adam_long, adam_mlp = (sc(fs_a, H, m) for H, m in ((cfg.horizon, train), (steps, train),
                                                            (cfg.horizon, held)))
    final = log_r(fs_l, train)[:, :, cfg.horizon - 1].mean(1)
    curves = {name: dict(learned=log_r(fs_l[:S], m).mean(1), adam=log_r(fs_a, m).mean(1),
                         untrained=log_r(fs_l[S + n_lin:], m).mean(1), best=int(np.argmin(a)))
              for name, m, a in (("training-family instances", train, adam),
                                 ("MLP (family never trained on)", held, adam_mlp))}
    # the 2021 analysis
    re_keys = jax.vmap(jax.random.key)(jnp.asarray([s + 20_000 for s in seeds]))
    p_gru, re_losses, c3 = train_gru_lopt(re_keys, cfg, t0)
    found = jax.jit(jax.vmap(lambda p, k: visit(p, k, cfg)))(p_gru, re_keys)
    re = [analyse(*jax.tree_util.tree_map(lambda a: a[s], (p_gru, found))) for s in range(S)]
    compile_s += c1 + c2 + c3
    run_s = time.perf_counter() - t0 - compile_s
    (a_star, b_star), su = heavy_ball_optimum(1e-3, 1.0), utils.summarize
    per_seed = lambda *ks: {f"re_{k}": su([r[k] for r in re]) for k in ks}  # noqa: E731  2021
    metrics = {"improvement_over_init_nats": su(untrained - learned),  # the first five are printed
               "improvement_over_adam1e3_nats": su(adam[0] - learned),
               "frac_of_tuned_adam": su(learned / adam.min()), **per_seed("lambda1", "clip_ratio"),
               "score_learned": su(learned), "score_untrained": su(untrained),
               "score_adam_best": su(adam.min()), "final_log_ratio_learned": su(final[:S]),
               "frac_of_tuned_adam_5x_horizon": su(sc(fs_l[:S], steps, train) / adam_long.min()),
               "frac_of_tuned_adam_heldout_mlp": su(learned_mlp / adam_mlp.min()),
               "improvement_over_init_heldout_mlp_nats": su(untrained_mlp - learned_mlp),
               **per_seed("alpha1", "lr_first_over_last"),
               "re_meta_loss_last_100": su(re_losses[:, -100:].mean(1)),
               **per_seed("converged", "g_p99", "objective", "gd_objective"),
               **({"ablation_plain_ratio_score": su(lin), "ablation_plain_ratio_final_log_ratio":
                   su(final[S:S + n_lin])} if n_lin else {})}
    record = {"script": "03_hierarchical_rnn_opt", "paper": PAPER, "config": asdict(cfg),
              "quick": args.quick, "seeds": seeds, "metrics": metrics,
              **{f"adam_scores{k}": dict(zip(map(str, cfg.adam_lrs), map(float, v)))
                 for k, v in (("", adam), ("_5x", adam_long), ("_heldout_mlp", adam_mlp))},
              "paper_values": {"claim": "beats Adam/RMSProp on meta-training problems "
                               "(qualitative, so we test frac_of_tuned_adam >= 0.7)",
                               "heavy_ball_optimum_alpha_beta": [a_star, b_star],
                               "source": "abstracts of arXiv:1703.04813 and 2011.02159; (α*, β*) "
                               "computed for λ in [1e-3, 1]; no paper table is reproduced"},
              "compile_s": compile_s, "run_s": run_s}
    fig = make_figure(cfg, curves, {"adam": adam, "learned": learned, "untrained": untrained,
                                    "plain-ratio objective": lin}, losses[:S], re)
    utils.save_results(args.out, "03_hierarchical_rnn_opt", record, fig)
    mm = [metrics[k][s] for k in list(metrics)[:5] for s in ("mean", "std")]
    print(f"03_hierarchical_rnn_opt{' (quick)' if args.quick else ''}, {S} seeds: improvement "
          "over untrained %.2f ± %.2f nats (target >= 1), over Adam 1e-3 %.2f ± %.2f (> 0); "
          "fraction of tuned Adam %.2f ± %.2f (target >= 0.7; paper: beats Adam); |λ1| %.3f ± "
          f"%.3f (β* = {b_star:.3f}); update at g = 10 / linear %.2f ± %.2f (< 0.3); compile "
          f"{compile_s:.0f} s, run {run_s:.0f} s" % tuple(mm))
    return record


if __name__ == "__main__":
    main()
