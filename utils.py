"""Infrastructure shared by the scripts: CLI, results, env info, Adam, progress (no algorithms)."""

import argparse, datetime, json, os, platform, subprocess, sys, tempfile, time  # noqa: E401
import jax, jax.numpy as jnp, numpy as np  # noqa: E401


def check(kind: type, ok, allowed: str):
    """An argparse `type=` that converts with `kind` and refuses values outside `allowed`."""
    def convert(text: str):
        try:
            if ok(value := kind(text)):
                return value
        except ValueError:
            pass
        raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}")
    return convert


positive_int = check(int, lambda v: v > 0, "an integer > 0")
nonneg_int = check(int, lambda v: v >= 0, "an integer >= 0")
positive_float = check(float, lambda v: np.isfinite(v) and v > 0, "a finite number > 0")
unit_float = check(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def make_parser(description: str) -> argparse.ArgumentParser:
    """The flags every script shares; scripts add their own with `parser.add_argument`."""
    p = argparse.ArgumentParser(description=description, allow_abbrev=False)
    p.add_argument("--quick", action="store_true", help="small fast run (< 60 s on 2 CPU cores)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="first seed (default 0)")
    p.add_argument("--seeds", type=positive_int, default=3, help="number of seeds (default 3)")
    p.add_argument("--out", default="results", help="output folder (default results/)")
    return p


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse argv; in a notebook kernel ignore sys.argv, and QUICK=1 selects quick mode."""
    in_kernel = "ipykernel" in sys.modules or sys.argv[0].endswith("ipykernel_launcher.py")
    if argv is None and in_kernel:
        argv = ["--quick"] if os.environ.get("QUICK", "0") not in ("", "0") else []
    return parser.parse_args(argv)


def enable_compilation_cache() -> None:
    """Persist XLA executables so that a second run skips compilation (called from main)."""
    default = os.path.join(os.path.expanduser("~"), ".cache", "jax_compilation_cache")
    folder = os.environ.get("JAX_COMPILATION_CACHE_DIR", default)
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def summarize(per_seed) -> dict:
    """{mean, std, per_seed} of a metric measured once per seed."""
    v = np.asarray(per_seed, dtype=np.float64).reshape(-1)
    return {"mean": float(v.mean()), "std": float(v.std()), "per_seed": [float(x) for x in v]}


def env_info() -> dict:
    """Versions, device and git commit, for the results JSON."""
    git = ["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse", "HEAD"]
    commit = subprocess.run(git, capture_output=True, text=True, timeout=10).stdout
    d = jax.devices()[0]
    return {"python": platform.python_version(), "jax": jax.__version__, "numpy": np.__version__,
            "device": f"{d.platform}:{d.device_kind}", "cpu_count": os.cpu_count(),
            "git_commit": commit.strip() or None}


def _atomic_write(path: str, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)  # atomic: a reader sees the old file or the new one, never half
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_results(out: str, stem: str, record: dict, fig=None) -> str:
    """Write <out>/<stem>.json (strict JSON, no NaN) and <out>/<stem>.png, each atomically."""
    os.makedirs(out, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    text = json.dumps({**record, "env": env_info(), "created_utc": now}, indent=2, allow_nan=False)
    if fig is not None:
        png = os.path.join(out, f"{stem}.png")
        _atomic_write(png, lambda f: fig.savefig(f, format="png", dpi=150))
    path = os.path.join(out, f"{stem}.json")
    _atomic_write(path, lambda f: f.write(text.encode()))
    return path


def check_finite(values, what: str, hint: str, steps=None) -> None:
    """Stop with a message naming the first non-finite step (last axis) and what to try."""
    if not (bad := ~np.isfinite(np.asarray(values))).any():
        return
    i = np.argwhere(bad)[0]
    at = f"step {int(steps[i[-1]])}" if steps is not None else f"index {tuple(map(int, i))}"
    raise FloatingPointError(f"{what} became NaN/inf at {at}; try {hint}")


def progress(t0: float, label: str, step: int, total: int, **metrics) -> None:
    """One line per chunk of work: seconds since t0, step, metrics."""
    shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    print(f"[{time.perf_counter() - t0:6.1f}s] {label} {step:>6d}/{total}  {shown}", flush=True)


def adam(lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """Adam (Kingma & Ba 2015) on a pytree: returns (init(params), update(grads, state, params))."""
    tmap = jax.tree_util.tree_map
    def init(params):
        zeros = tmap(jnp.zeros_like, params)
        return {"m": zeros, "v": zeros, "t": jnp.zeros([], jnp.int32)}
    def update(grads, state, params):
        t = state["t"] + 1
        m = tmap(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)
        v = tmap(lambda v, g: b2 * v + (1 - b2) * g * g, state["v"], grads)
        step = lambda p, m, v: p - lr * m / (1 - b1**t) / (jnp.sqrt(v / (1 - b2**t)) + eps)  # noqa
        return tmap(step, params, m, v), {"m": m, "v": v, "t": t}
    return init, update
