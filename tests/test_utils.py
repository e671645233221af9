"""Tests for the shared infrastructure: the command line and its refusals, saving results,
divergence, the chunked scan runner, Adam, clipping and sharding.

The failure rows of issue 11 are tested here, each as a user meets it: a script run as a
process where the row is about what a process prints and returns."""

import importlib.machinery
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
import types

import jax
import jax.extend
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pytest
import utils
from conftest import ROOT, load


def run_script(*argv, env=None, cwd=None):
    """Run `python 02_guided_es.py ARGV` as a user would; returns the CompletedProcess."""
    command = [sys.executable, os.path.join(ROOT, "02_guided_es.py"), *argv]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


# ---------------------------------------------------------------------------------------------
# The command line


def test_cli_defaults_and_refusals(capsys, tmp_path):
    parser = utils.make_parser("x", "test")
    args = utils.parse_args(parser, ["--out", str(tmp_path)])
    assert (args.quick, args.seed, args.seeds, args.stem) == (False, 0, 3, "x")
    for bad, allowed in [
        (["--seeds", "0"], "integer > 0"),
        (["--seed", "-1"], "[0, 2147483647]"),
        (["--seed", "2147483648"], "[0, 2147483647]"),  # jax.random.key takes int32
        (["--seed", "2147483647", "--seeds", "2"], "at most 2147483647"),
        (["--seeds", "two"], "integer > 0"),
        (["--nope"], "unrecognized"),
    ]:
        with pytest.raises(SystemExit) as e:
            utils.parse_args(parser, bad + ["--out", str(tmp_path)])
        assert e.value.code == 2 and allowed in capsys.readouterr().err
    # the largest seeds allowed are accepted
    args = utils.parse_args(
        parser, ["--seed", "2147483645", "--seeds", "3", "--out", str(tmp_path)]
    )
    assert args.seed + args.seeds - 1 == utils.MAX_SEED


def test_notebook_kernel_ignores_argv(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert not utils.in_notebook()
    monkeypatch.setattr(sys, "argv", ["ipykernel_launcher.py", "-f", "kernel.json"])
    assert utils.in_notebook()
    monkeypatch.setenv("QUICK", "1")
    assert utils.parse_args(utils.make_parser("x", "t")).quick
    monkeypatch.setenv("QUICK", "0")
    assert not utils.parse_args(utils.make_parser("x", "t")).quick


STEMS = sorted(name[:-3] for name in os.listdir(ROOT) if name[0] == "0" and name.endswith(".py"))


@pytest.mark.parametrize("stem", STEMS)
def test_every_flag_has_help_and_seeds_fit_32_bits(stem, monkeypatch, capsys, tmp_path):
    """Issue 11: --help text for every flag; --seed 2147483648 refused by the parser."""
    script = load(stem)
    seen = []
    real_parse_args = utils.parse_args

    def record_parser(parser, argv=None):
        seen.append(parser)
        return real_parse_args(parser, argv)

    monkeypatch.setattr(script.utils, "parse_args", record_parser)
    with pytest.raises(SystemExit) as e:
        script.main(["--seed", "2147483648", "--out", str(tmp_path)])
    assert e.value.code == 2 and "[0, 2147483647]" in capsys.readouterr().err
    undocumented = [a.dest for a in seen[0]._actions if not a.help]
    assert not undocumented, f"{stem}: flags without help text: {undocumented}"


def test_help_prints_argparse_output_only():
    done = run_script("--help")
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("usage: 02_guided_es.py")  # no demo line before it


# ---------------------------------------------------------------------------------------------
# --out is checked before any work


def assert_refused_at_once(done, path):
    """Exit 2, one line on stderr naming the path, and no work done (nothing on stdout)."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and path in lines[0], done.stderr
    assert done.stdout == ""


def test_out_below_a_file_is_refused_before_any_work(tmp_path):
    (tmp_path / "f").write_text("a file")
    path = str(tmp_path / "f" / "sub")
    assert_refused_at_once(run_script("--quick", "--out", path), path)


def test_out_under_proc_is_refused_before_any_work():
    assert_refused_at_once(run_script("--quick", "--out", "/proc/no/such"), "/proc/no/such")


def test_out_that_is_not_writable_is_refused(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway: make the probe meet what a user would meet

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(utils.tempfile, "TemporaryFile", refuse)
    with pytest.raises(SystemExit) as e:
        utils.parse_args(utils.make_parser("x", "t"), ["--out", str(folder)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert str(folder) in err[0] and "Permission denied" in err[0]


def test_result_path_that_is_a_folder_is_refused_before_any_work(tmp_path):
    (tmp_path / "02_guided_es.json").mkdir()
    done = run_script("--quick", "--out", str(tmp_path))
    assert_refused_at_once(done, str(tmp_path / "02_guided_es.json"))


# ---------------------------------------------------------------------------------------------
# Divergence: one line, exit 1


def test_divergence_is_one_line_and_exit_1(tmp_path):
    done = run_script("--quick", "--steps", "40", "--sigma", "1e30", "--out", str(tmp_path))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1
    assert len(lines) == 1 and "NaN/inf at step" in lines[0] and "; try " in lines[0], done.stderr
    assert not (tmp_path / "02_guided_es.json").exists()


def test_check_finite_names_the_step():
    utils.check_finite(np.ones((2, 5)), "loss", "a smaller lr")
    with pytest.raises(utils.Diverged, match="loss became NaN/inf at step 30; try a smaller lr"):
        utils.check_finite(
            np.array([[1.0, 2.0, np.nan, np.inf]]),
            "loss",
            "a smaller lr",
            np.array([10, 20, 30, 40]),
        )
    assert issubclass(utils.Diverged, SystemExit)  # so Python prints the message alone, exit 1


# ---------------------------------------------------------------------------------------------
# Saving results


def small_figure():
    fig, ax = plt.subplots()
    ax.plot(np.arange(10) ** 2)
    return fig


def test_save_results_is_strict_0644_and_leaves_no_temporary(tmp_path):
    old = os.umask(0o022)
    try:
        utils.save_results(
            str(tmp_path), "x", {"metrics": {"a": utils.summarize([1.0, 3.0])}}, small_figure()
        )
    finally:
        os.umask(old)
    saved = json.loads((tmp_path / "x.json").read_text())
    assert saved["metrics"]["a"] == {"mean": 2.0, "std": 1.0, "per_seed": [1.0, 3.0]}
    assert "jax" in saved["env"] and "created_utc" in saved
    for name in ("x.json", "x.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
    with pytest.raises(ValueError):  # NaN is refused, and the earlier files are left intact
        utils.save_results(str(tmp_path), "x", {"metrics": {"a": float("nan")}}, small_figure())
    assert json.loads((tmp_path / "x.json").read_text()) == saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.png"]


def test_json_and_png_land_together_or_not_at_all(tmp_path, capsys):
    """Issue 11: `<out>/02_guided_es.json` a directory replaced the PNG, then crashed."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.png").write_bytes(b"old png")
    (out / "x.json").mkdir()  # appeared after the --out check
    with pytest.raises(SystemExit) as e:
        utils.save_results(str(out), "x", {"metrics": {}}, small_figure())
    assert (out / "x.png").read_bytes() == b"old png"  # the old PNG is untouched
    assert sorted(p.name for p in out.iterdir()) == ["x.json", "x.png"]  # no temporary left
    elsewhere = str(e.value.code).split("results saved in ")[-1]  # nothing is lost
    assert sorted(os.listdir(elsewhere)) == ["x.json", "x.png"]


def test_a_failed_rename_puts_the_first_file_back(tmp_path, monkeypatch):
    (tmp_path / "a").write_bytes(b"old a")
    real_replace = os.replace
    calls = []

    def fail_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(utils.os, "replace", fail_second)
    with pytest.raises(OSError):
        utils._write_together({str(tmp_path / "a"): b"new a", str(tmp_path / "b"): b"new b"})
    monkeypatch.setattr(utils.os, "replace", real_replace)
    assert (tmp_path / "a").read_bytes() == b"old a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_missing_git_gives_null_commit(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on PATH
    assert utils.env_info()["git_commit"] is None
    utils.save_results(str(tmp_path), "x", {"metrics": {}})
    assert json.loads((tmp_path / "x.json").read_text())["env"]["git_commit"] is None


def test_summary_line():
    line = utils.summary_line(
        "02 (quick), 3 seeds", [("ratio", utils.summarize([0.1, 0.14]), "paper 0.13")], 12.4, 30.6
    )
    assert line == "02 (quick), 3 seeds: ratio 0.12 ± 0.02 (paper 0.13); compile 12 s, run 31 s"


# ---------------------------------------------------------------------------------------------
# Compiling and running


def cumulative(carry, scale, num_steps):
    """A scanned toy: carry <- carry * scale each step; logs the carry."""

    def step(c, _):
        c = c * scale
        return c, {"value": c}

    return jax.lax.scan(step, carry, None, length=num_steps)


def report_value(out: dict) -> dict:
    return {"value": float(out["value"])}


def test_compile_timed_matches_jit():
    compiled, seconds = utils.compile_timed(jnp.sin, jnp.arange(3.0))
    assert seconds > 0
    np.testing.assert_array_equal(compiled(jnp.arange(3.0)), jnp.sin(jnp.arange(3.0)))


def steps_shown(printed: str) -> list:
    """The "step/total" field of each progress line "[  elapsed s] label  step/total  ...".
    Read after the bracket: the elapsed time's width varies (t0 = 0 would print the clock's own
    reading, a single token once it passes 10,000 s)."""
    return [line.split("]", 1)[1].split()[1] for line in printed.strip().splitlines()]


def test_run_chunked_equals_one_scan(capsys):
    carry, out, compile_s = utils.run_chunked(
        cumulative,
        jnp.float32(1.0),
        (jnp.float32(1.01),),
        steps=10,
        chunks=3,
        label="toy",
        t0=time.perf_counter(),
        report=report_value,
    )
    assert steps_shown(capsys.readouterr().out) == ["5/10", "10/10"]  # 2 equal chunks: 1 compile
    expected = 1.01 ** np.arange(1, 11)
    np.testing.assert_allclose(out["value"], expected, rtol=1e-5)
    assert float(carry) == pytest.approx(expected[-1], rel=1e-5) and compile_s > 0


def test_run_chunked_with_fewer_steps_than_chunks(capsys):
    _, out, _ = utils.run_chunked(
        cumulative,
        jnp.float32(1.0),
        (jnp.float32(2.0),),
        steps=3,
        chunks=5,
        label="toy",
        t0=time.perf_counter(),
        report=report_value,
    )
    assert steps_shown(capsys.readouterr().out) == ["1/3", "2/3", "3/3"]
    np.testing.assert_array_equal(out["value"], [2.0, 4.0, 8.0])
    with pytest.raises(ValueError, match="chunks >= 1"):
        utils.run_chunked(cumulative, 1.0, (2.0,), 3, 0, "toy", 0.0, report_value)


def test_run_chunked_stops_at_the_first_bad_step():
    # 1e5 ** 8 overflows float32 (max 3.4e38): the 8th step, numbered 7 from 0, in chunk 2
    with pytest.raises(utils.Diverged, match="toy: value became NaN/inf at step 7; try less"):
        utils.run_chunked(
            cumulative,
            jnp.float32(1.0),
            (jnp.float32(1e5),),
            steps=12,
            chunks=2,
            label="toy",
            t0=0.0,
            report=report_value,
            hint="less",
        )


def test_shard_seeds_splits_over_two_devices():
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np, utils
        assert jax.device_count() == 2
        tree = {"x": jnp.arange(8.0).reshape(4, 2), "k": jnp.ones((4,))}
        sharded = utils.shard_seeds(tree)
        assert len(sharded["x"].sharding.device_set) == 2
        f = jax.jit(jax.vmap(lambda t: jnp.sum(t["x"] ** 2) + t["k"]))
        np.testing.assert_array_equal(f(sharded), f(tree))
        odd = utils.shard_seeds(jnp.ones((3, 2)))  # 3 seeds do not split in 2: one device
        assert len(odd.sharding.device_set) == 1
        print("ok")
        """)
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


# ---------------------------------------------------------------------------------------------
# Optimisation


def test_adam_first_step_and_convergence():
    init, update = utils.adam(0.1)
    params = {"w": jnp.array([3.0, -2.0])}
    state = init(params)
    new, state = update({"w": jnp.array([0.5, -4.0])}, state, params)
    # the bias-corrected first step is lr * sign(g) (up to eps)
    np.testing.assert_allclose(new["w"], [2.9, -1.9], rtol=1e-6)

    def step(p, s):
        return update(jax.grad(lambda q: jnp.sum(q["w"] ** 2))(p), s, p)

    step = jax.jit(step)
    for _ in range(300):
        params, state = step(params, state)
    assert float(jnp.max(jnp.abs(params["w"]))) < 0.05


def test_adam_schedule_is_read_at_each_step():
    """With a schedule, step t moves by lr(t) * sign(g) while the sign of g does not change
    (m̂ = v̂^½ · sign(g) exactly when every gradient so far is the same)."""
    init, update = utils.adam(lambda t: 0.1 / (1.0 + t))
    params = jnp.array([5.0])
    state = init(params)
    for t in range(3):
        new, state = update(jnp.array([2.0]), state, params)
        np.testing.assert_allclose(params - new, [0.1 / (1 + t)], atol=2e-6)  # 4 ulp at 5.0
        params = new


def test_normal_is_jax_random_normal_bit_for_bit():
    """utils.normal writes threefry's rounds out: the same numbers as jax.random.normal, for
    several keys (split keys too) and shapes, odd sizes and one number included."""
    keys = [jax.random.key(0), jax.random.key(12345), *jax.random.split(jax.random.key(7), 2)]
    for key in keys:
        for shape in ((1,), (7,), (3, 5, 2), (10_001,)):
            ours = jax.jit(utils.normal, static_argnums=1)(key, shape)
            np.testing.assert_array_equal(ours, jax.random.normal(key, shape))


# Random123's known answers for threefry2x32 with 20 rounds (Salmon et al. 2011, kat_vectors):
# (key, counter, output), each a pair of 32-bit words
THREEFRY_KAT = (
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
)


def test_threefry_written_out_on_cpu_gives_the_known_answers():
    """unroll_threefry_on_cpu takes under the pinned JAX (no while loop left in the lowered
    program), and the hash it emits gives Random123's known answers."""
    assert utils.unroll_threefry_on_cpu()
    lowered = jax.jit(lambda k: jax.random.bits(k, (4,))).lower(jax.random.key(0)).as_text()
    if jax.default_backend() == "cpu":
        assert "while" not in lowered
    hash_pair = jax.jit(jax.extend.random.threefry_2x32)
    for key, counter, expected in THREEFRY_KAT:
        out = hash_pair(np.asarray(key, np.uint32), np.asarray(counter, np.uint32))
        np.testing.assert_array_equal(out, np.asarray(expected, np.uint32))


def test_clip_by_global_norm():
    grads = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([[4.0]])}  # global norm 5
    clipped, norm = utils.clip_by_global_norm(grads, 1.0)
    assert float(norm) == pytest.approx(5.0)
    np.testing.assert_allclose(clipped["a"], [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(clipped["b"], [[0.8]], rtol=1e-6)
    same, _ = utils.clip_by_global_norm(grads, 10.0)  # under the limit: unchanged
    np.testing.assert_array_equal(same["a"], grads["a"])


# ---------------------------------------------------------------------------------------------
# The GPU check (.ci/gpu): its table, from README's CPU headlines and a run's results


def load_gpu_check():
    loader = importlib.machinery.SourceFileLoader("ci_gpu", os.path.join(ROOT, ".ci", "gpu"))
    module = types.ModuleType(loader.name)
    module.__file__ = loader.path
    loader.exec_module(module)
    return module


def test_gpu_check_table():
    gpu = load_gpu_check()
    cpu = gpu.cpu_headlines(os.path.join(ROOT, "README.md"))
    assert sorted(cpu) == [f"0{i}" for i in range(1, 8)]  # one headline per script
    runs = [
        {"name": "pytest", "wall_s": 100.0, "code": 0, "output": "...\n170 passed in 99.0s\n"},
        {"name": "02_guided_es", "wall_s": 61.2, "code": 0, "output": ""},
        {"name": "07_retina_cnn", "wall_s": 9.0, "code": 1, "output": "Traceback"},
    ]
    metric = utils.summarize([0.1, 0.14])
    record = {"metrics": {"gap_ratio_ges_to_es": metric}, "compile_s": 20.4, "run_s": 39.6}
    rows = gpu.table_rows(runs, {"02_guided_es": record}, cpu)
    assert rows[2] == "| tests | 100 s | | | 170 passed in 99.0s (exit 0) | |"
    assert rows[3].startswith(
        "| 02_guided_es | 61 s | 20 s | 40 s | gap_ratio_ges_to_es 0.12 ± 0.02 |"
    )
    assert rows[3].endswith(f"| {cpu['02']} |")
    assert rows[4] == "| 07_retina_cnn | 9 s | | | failed (exit 1) | |"
