"""Infrastructure shared by the seven scripts, and nothing else: no algorithm lives here.

- the command line: `make_parser`, `parse_args` (checks `--out` before any work), `in_notebook`;
- compiling and running: `enable_compilation_cache` (with `unroll_threefry_on_cpu`),
  `compile_timed`, `run_chunked` (a scanned step run in a few chunks with a progress line
  each), `shard_seeds`;
- optimisation: `adam` (constant or scheduled learning rate), `clip_by_global_norm`;
- random numbers: `normal` (jax.random.normal, bit for bit, in one pass on a CPU);
- failure: `Diverged` and `check_finite` (one line on stderr, exit 1, no traceback);
- results: `summarize`, `summary_line`, `env_info`, `save_results` (JSON and PNG together).
"""

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Union

import jax
import jax.numpy as jnp
import numpy as np

MAX_SEED = 2**31 - 1  # jax.random.key takes a signed 32-bit seed


# ---------------------------------------------------------------------------------------------
# The command line


def in_notebook() -> bool:
    """True inside a Jupyter kernel: demo cells run there, and sys.argv is the kernel's own.

    Decided on sys.argv alone: `%run 02_guided_es.py --seeds 5` in a kernel sets sys.argv to
    the script's, and then its flags count."""
    return sys.argv[0].endswith("ipykernel_launcher.py")


def check(kind: type, ok: Callable, allowed: str) -> Callable:
    """An argparse `type=` that converts with `kind` and refuses values for which `ok` is false.

    The error names what is allowed, e.g. "expected an integer > 0, got 'two'"."""

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is not None and ok(value):
            return value
        raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}")

    return convert


def _is_positive(v) -> bool:
    return bool(np.isfinite(v) and v > 0)


def _is_seed(v: int) -> bool:
    return 0 <= v <= MAX_SEED


positive_int = check(int, _is_positive, "an integer > 0")
positive_float = check(float, _is_positive, "a finite number > 0")
unit_float = check(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
seed_int = check(int, _is_seed, f"an integer in [0, {MAX_SEED}]")


def make_parser(stem: str, description: str) -> argparse.ArgumentParser:
    """The flags every script shares; a script adds its own with `parser.add_argument`.

    `stem` ("02_guided_es") names the result files, so `parse_args` can check them up front."""
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False)
    parser.set_defaults(stem=stem)
    parser.add_argument("--quick", action="store_true", help="a small run, under a minute")
    parser.add_argument("--seed", type=seed_int, default=0, help="first seed (default 0)")
    parser.add_argument(
        "--seeds", type=positive_int, default=3, help="number of seeds, vmapped (default 3)"
    )
    parser.add_argument(
        "--out", default="results", help="folder for <script>.json and .png (default results/)"
    )
    return parser


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse argv (in a notebook kernel: none, and QUICK=1 selects quick mode), then check that
    the seeds fit in 32 bits and that `--out` can take the results, all before any work.

    A bad value exits with status 2 and one line on stderr."""
    if argv is None and in_notebook():
        argv = ["--quick"] if os.environ.get("QUICK", "0") not in ("", "0") else []
    args = parser.parse_args(argv)
    last_seed = args.seed + args.seeds - 1
    if last_seed > MAX_SEED:
        parser.error(f"--seed + --seeds - 1 must be at most {MAX_SEED}, got {last_seed}")
    problem = _out_problem(args.out, args.stem)
    if problem:
        parser.exit(2, f"{parser.prog}: error: --out {args.out}: {problem}\n")
    return args


def _out_problem(out: str, stem: str) -> str:
    """Why results cannot be written to `out` ("" if they can). Creates `out` if missing."""
    if os.path.exists(out) and not os.path.isdir(out):
        return "exists and is not a folder"
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):  # the only honest test of writability, root too
            pass
    except OSError as error:
        return error.strerror or str(error)
    for suffix in (".json", ".png"):
        path = os.path.join(out, stem + suffix)
        if os.path.lexists(path) and not os.path.isfile(path):
            return f"{path} exists and is not a regular file"
    return ""


# ---------------------------------------------------------------------------------------------
# Compiling and running


def enable_compilation_cache() -> None:
    """Keep compiled XLA programs on disk so that a second run skips compilation, and compile
    JAX's random numbers quickly on a CPU (`unroll_threefry_on_cpu`).

    Called from each script's main and from tests/conftest.py, never at import time."""
    default = os.path.join(os.path.expanduser("~"), ".cache", "jax_compilation_cache")
    jax.config.update(
        "jax_compilation_cache_dir", os.environ.get("JAX_COMPILATION_CACHE_DIR", default)
    )
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    unroll_threefry_on_cpu()


def unroll_threefry_on_cpu() -> bool:
    """Have JAX emit its threefry hash with the 20 rounds written out on a CPU, as it does on a
    GPU, instead of as a rolled loop of 5 × 4 rounds. True if done.

    Every `jax.random` function draws through this hash. Its bits are the same (the same rounds
    in the same order); floats computed from them can differ in the last bits where XLA now
    fuses the transform into what reads it (02's quick metrics moved in the sixth significant
    digit; those of 01, 03, 05, 06 and 07 did not move). What changes is the compile time: XLA's
    CPU backend compiles the rolled loop slowly, e.g. `jax.random.uniform` of 2400 numbers in
    1.22 s rolled against 0.16 s written out, `jax.random.poisson` 0.74 against 0.40 s. This reaches
    into JAX's internals (`jax._src`, as pinned in requirements.txt); where they have moved,
    JAX is left as it is and the answer is False (tests/test_utils.py checks it is True)."""
    try:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32
    except ImportError:
        return False
    primitive = getattr(threefry2x32, "threefry2x32_p", None)
    written_out = getattr(threefry2x32, "_threefry2x32_lowering_rule", None)
    if primitive is None or written_out is None:
        return False
    mlir.register_lowering(primitive, written_out, platform="cpu")
    return True


def compile_timed(fn: Callable, *args) -> tuple:
    """Compile `fn` for `args` ahead of time: returns (compiled, seconds spent compiling).

    `fn` may be a plain function or one already wrapped in `jax.jit` (with its static
    arguments); the compiled function then takes the non-static arguments only."""
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - start


def _take_step(tree, index: int, axis: int):
    """The slice of every leaf at one step."""
    return jax.tree_util.tree_map(lambda a: np.take(a, index, axis=axis), tree)


def run_chunked(
    fn: Callable,
    carry: Any,
    operands: tuple,
    steps: int,
    chunks: int,
    label: str,
    t0: float,
    report: Callable,
    hint: str = "a smaller learning rate",
    step_axis: int = 0,
) -> tuple:
    """Run a scanned step function for `steps` steps in `chunks` calls, one progress line each.

    `fn(carry, *operands, num_steps) -> (carry, out)` is jitted with `num_steps` static; the
    leaves of `out` hold one entry per step along `step_axis`. After each chunk,
    `report(out at the chunk's last step) -> {name: float}` gives the numbers to print. If one
    of them is not finite the run stops (`Diverged`) naming the first step where it went bad.
    The chunks are equal, so one compile serves them all: their number is the largest divisor
    of `steps` that is at most `chunks` (10,000 steps in 5 chunks of 2,000; 7 steps in 1).

    Returns (carry, out of all steps as numpy arrays, seconds spent compiling)."""
    if steps < 1 or chunks < 1:
        raise ValueError(f"run_chunked needs steps >= 1 and chunks >= 1, got {steps}, {chunks}")
    chunks = max(d for d in range(1, min(chunks, steps) + 1) if steps % d == 0)
    n = steps // chunks
    jitted = jax.jit(fn, static_argnums=len(operands) + 1)
    compiled, compile_s = compile_timed(jitted, carry, *operands, n)
    outs = []
    done = 0
    for _ in range(chunks):
        carry, out = compiled(carry, *operands)
        out = jax.tree_util.tree_map(np.asarray, out)
        outs.append(out)
        done += n
        shown = report(_take_step(out, -1, step_axis))
        bad = [name for name, value in shown.items() if not np.isfinite(value)]
        if bad:
            first = next(
                i
                for i in range(n)
                if not all(np.isfinite(list(report(_take_step(out, i, step_axis)).values())))
            )
            raise Diverged(
                f"{label}: {bad[0]} became NaN/inf at step {done - n + first}; try {hint}"
            )
        progress(t0, label, done, steps, **shown)
    joined = jax.tree_util.tree_map(lambda *parts: np.concatenate(parts, axis=step_axis), *outs)
    return carry, joined, compile_s


def shard_seeds(tree: Any) -> Any:
    """Spread the leading (seed or population) axis of every leaf over the local devices.

    On one device this returns `tree` unchanged; with several GPUs (or CPU devices forced with
    XLA_FLAGS=--xla_force_host_platform_device_count=N) each gets an equal share of seeds,
    using as many devices as divide the axis evenly. Computations on the result run sharded."""
    devices = jax.local_devices()
    size = jax.tree_util.tree_leaves(tree)[0].shape[0]
    count = max(d for d in range(1, len(devices) + 1) if size % d == 0)
    if count == 1:
        return tree
    mesh = jax.sharding.Mesh(np.array(devices[:count]), ("seeds",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("seeds"))
    return jax.tree_util.tree_map(lambda a: jax.device_put(a, sharding), tree)


# ---------------------------------------------------------------------------------------------
# Optimisation


def adam(
    lr: Union[float, Callable], b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> tuple:
    """Adam (Kingma & Ba 2015) on a pytree: returns (init(params), update(grads, state, params)).

    `lr` is a number or a schedule `t -> lr` of the step count t = 0, 1, 2, ..."""
    tree_map = jax.tree_util.tree_map

    def init(params):
        zeros = tree_map(jnp.zeros_like, params)
        return {"m": zeros, "v": zeros, "t": jnp.zeros([], jnp.int32)}

    def update(grads, state, params):
        rate = lr(state["t"]) if callable(lr) else lr
        t = state["t"] + 1
        m = tree_map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)
        v = tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, state["v"], grads)

        def step(p, m, v):
            # p - lr m̂ / (√v̂ + eps), with the bias corrections m̂ = m / (1 - b1^t) and
            # v̂ = v / (1 - b2^t) (m and v start at zero); written in the first edition's order
            # of operations, so that the scripts' float32 results stay bit for bit the same
            return p - rate * m / (1 - b1**t) / (jnp.sqrt(v / (1 - b2**t)) + eps)

        return tree_map(step, params, m, v), {"m": m, "v": v, "t": t}

    return init, update


def clip_by_global_norm(grads, max_norm: float) -> tuple:
    """Scale the whole pytree down so its global L2 norm is at most `max_norm`.

    Returns (clipped grads, the norm before clipping)."""
    leaves = jax.tree_util.tree_leaves(grads)
    norm = jnp.sqrt(sum(jnp.sum(g**2) for g in leaves))
    scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12))
    return jax.tree_util.tree_map(lambda g: g * scale.astype(g.dtype), grads), norm


# Random numbers


def _rotate_left(v: jax.Array, r: int) -> jax.Array:
    return (v << np.uint32(r)) | (v >> np.uint32(32 - r))


def normal(key: jax.Array, shape: tuple) -> jax.Array:
    """jax.random.normal(key, shape) in float32, bit for bit, with threefry's rounds written out.

    On a CPU, JAX runs the 20 rounds of threefry-2x32 (Salmon et al. 2011) as a rolled loop: five
    passes over memory, each reading and writing two words per number. Written out, XLA fuses the
    rounds and the inverse-erf transform into one pass. Needs a threefry key (the default), fewer
    than 2³² numbers, and `jax_threefry_partitionable` on (the default): counters are then the
    flat index i, as the pair (0, i)."""
    n = int(np.prod(shape))
    if n >= 2**32:
        raise ValueError(f"utils.normal: at most 2**32 - 1 numbers per key, got shape {shape}")
    k0, k1 = jax.random.key_data(key)
    keys = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
    x0 = jnp.zeros(n, jnp.uint32) + keys[0]
    x1 = jax.lax.iota(jnp.uint32, n) + keys[1]
    rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
    for i in range(5):  # 5 times 4 rounds, a key injection after each 4
        for r in rotations[i % 2]:
            x0 = x0 + x1
            x1 = _rotate_left(x1, r) ^ x0
        x0 = x0 + keys[(i + 1) % 3]
        x1 = x1 + keys[(i + 2) % 3] + np.uint32(i + 1)
    bits = x0 ^ x1
    # as jax.random.uniform on (-1, 1): 23 random mantissa bits under the exponent of 1.0 give a
    # float in [1, 2); minus 1, scaled to (-1, 1), then the inverse error function
    one_two = jax.lax.bitcast_convert_type((bits >> 9) | np.uint32(0x3F800000), jnp.float32)
    lo = np.nextafter(np.float32(-1.0), np.float32(0.0))
    u = jnp.maximum(lo, (one_two - 1.0) * (np.float32(1.0) - lo) + lo)
    return (np.float32(np.sqrt(2)) * jax.lax.erf_inv(u)).reshape(shape)


# ---------------------------------------------------------------------------------------------
# Failure


class Diverged(SystemExit):
    """A run went non-finite. As a SystemExit with a message, Python prints the message alone
    on stderr and exits with status 1, without a traceback; tests catch it like any exception."""


def check_finite(values, what: str, hint: str, steps=None) -> None:
    """Stop (`Diverged`) if `values` holds NaN/inf, naming the first bad step (last axis) and
    what to try; `steps` maps positions on the last axis to step numbers."""
    bad = ~np.isfinite(np.asarray(values))
    if not bad.any():
        return
    index = np.argwhere(bad)[0]
    where = (
        f"step {int(steps[index[-1]])}" if steps is not None else f"index {tuple(map(int, index))}"
    )
    raise Diverged(f"{what} became NaN/inf at {where}; try {hint}")


def progress(t0: float, label: str, step: int, total: int, **metrics) -> None:
    """One line per chunk of work: seconds since t0, step, metrics."""
    shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    print(f"[{time.perf_counter() - t0:6.1f}s] {label} {step:>6d}/{total}  {shown}", flush=True)


# ---------------------------------------------------------------------------------------------
# Results


def summarize(per_seed: Any) -> dict:
    """{mean, std, per_seed} of a metric measured once per seed."""
    values = np.asarray(per_seed, dtype=np.float64).reshape(-1)
    return {"mean": float(values.mean()), "std": float(values.std()), "per_seed": values.tolist()}


def summary_line(title: str, rows: list, compile_s: float, run_s: float) -> str:
    """The one line a run ends with: "title: name ours (paper ref); ...; compile s, run s".

    `rows` holds (name, metric from `summarize`, reference text); mean ± std get 3 digits."""
    parts = [
        f"{name} {metric['mean']:.3g} ± {metric['std']:.2g} ({reference})"
        for name, metric, reference in rows
    ]
    return f"{title}: " + "; ".join(parts) + f"; compile {compile_s:.0f} s, run {run_s:.0f} s"


def env_info() -> dict:
    """Versions, device and git commit (None where git or the repository is missing)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        done = subprocess.run(
            ["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        commit = done.stdout.strip() if done.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        commit = ""
    device = jax.devices()[0]
    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "device": f"{device.platform}:{device.device_kind}",
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "git_commit": commit or None,
    }


def _file_mode() -> int:
    """0666 less the umask: what `open` would give a new file (0644 under umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _write_together(files: dict) -> None:
    """Write {path: bytes} so that either every file is replaced or none is.

    Each file is written to a temporary beside it; the old files are kept as hard links until
    every rename has succeeded, and put back if one fails."""
    temporaries = {}
    backups = {}
    replaced = []
    try:
        for path, data in files.items():
            fd, temporaries[path] = tempfile.mkstemp(
                dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-"
            )
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.chmod(temporaries[path], _file_mode())
        for path in files:
            if os.path.lexists(path) and not os.path.isfile(path):
                raise IsADirectoryError(f"{path} exists and is not a regular file")
        for path in files:
            if os.path.exists(path):
                backups[path] = temporaries[path] + ".old"
                try:
                    os.link(path, backups[path])
                except OSError:  # a filesystem without hard links
                    shutil.copy2(path, backups[path])
        for path in files:
            os.replace(temporaries[path], path)
            replaced.append(path)
    except BaseException:
        for path in replaced:  # roll back: the old file, or no file where there was none
            with contextlib.suppress(OSError):  # one failed restore must not stop the others
                if path in backups:
                    os.replace(backups[path], path)
                else:
                    os.unlink(path)
        raise
    finally:
        for leftover in list(temporaries.values()) + list(backups.values()):
            if os.path.lexists(leftover):
                os.unlink(leftover)


def save_results(out: str, stem: str, record: dict, fig=None) -> str:
    """Write <out>/<stem>.json (strict JSON: NaN refused) and <out>/<stem>.png together.

    Both land or neither does, with mode 0644 under umask 022. If they cannot be written the
    results go to a new temporary folder instead, and the run stops saying where (exit 1)."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    full = {**record, "env": env_info(), "created_utc": now}
    files = {
        os.path.join(out, f"{stem}.json"): json.dumps(full, indent=2, allow_nan=False).encode()
    }
    if fig is not None:
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=150)
        files[os.path.join(out, f"{stem}.png")] = png.getvalue()
    try:
        _write_together(files)
    except OSError as error:
        elsewhere = tempfile.mkdtemp(prefix=f"{stem}-")
        _write_together({os.path.join(elsewhere, os.path.basename(p)): d for p, d in files.items()})
        raise SystemExit(f"could not write to {out} ({error}); results saved in {elsewhere}")
    return os.path.join(out, f"{stem}.json")
