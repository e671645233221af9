"""Tests for the shared infrastructure: CLI, results saving, divergence messages, Adam."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import utils


def test_cli_defaults_and_refusals(capsys):
    p = utils.make_parser("test")
    args = utils.parse_args(p, [])
    assert (args.quick, args.seed, args.seeds, args.out) == (False, 0, 3, "results")
    for bad, allowed in [
        (["--seeds", "0"], "integer > 0"),
        (["--seed", "-1"], "integer >= 0"),
        (["--seeds", "two"], "integer > 0"),
        (["--nope"], "unrecognized"),
    ]:
        with pytest.raises(SystemExit) as e:
            utils.parse_args(p, bad)
        assert e.value.code == 2 and allowed in capsys.readouterr().err


def test_notebook_kernel_ignores_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["ipykernel_launcher.py", "-f", "kernel.json"])
    monkeypatch.setenv("QUICK", "1")
    assert utils.parse_args(utils.make_parser("t")).quick
    monkeypatch.setenv("QUICK", "0")
    assert not utils.parse_args(utils.make_parser("t")).quick


def test_save_results_is_strict_and_atomic(tmp_path):
    utils.save_results(str(tmp_path), "x", {"metrics": {"a": utils.summarize([1.0, 3.0])}})
    saved = json.loads((tmp_path / "x.json").read_text())
    assert saved["metrics"]["a"] == {"mean": 2.0, "std": 1.0, "per_seed": [1.0, 3.0]}
    assert "jax" in saved["env"] and "created_utc" in saved
    with pytest.raises(ValueError):  # NaN is refused, and the earlier file is left intact
        utils.save_results(str(tmp_path), "x", {"metrics": {"a": float("nan")}})
    assert json.loads((tmp_path / "x.json").read_text()) == saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]  # no temporary left behind


def test_check_finite_names_the_step():
    utils.check_finite(np.ones((2, 5)), "loss", "a smaller lr")
    with pytest.raises(FloatingPointError, match="step 30; try a smaller lr"):
        utils.check_finite(
            np.array([[1.0, 2.0, np.nan, np.inf]]),
            "loss",
            "a smaller lr",
            steps=np.array([10, 20, 30, 40]),
        )


def test_adam_matches_closed_form_first_step_and_converges():
    init, update = utils.adam(0.1)
    params = {"w": jnp.array([3.0, -2.0])}
    state = init(params)
    new, state = update({"w": jnp.array([0.5, -4.0])}, state, params)
    # bias-corrected first step is lr * sign(g) (up to eps)
    np.testing.assert_allclose(new["w"], [2.9, -1.9], rtol=1e-6)
    step = jax.jit(lambda p, s: update(jax.grad(lambda q: jnp.sum(q["w"] ** 2))(p), s, p))
    for _ in range(300):
        params, state = step(params, state)
    assert float(jnp.max(jnp.abs(params["w"]))) < 0.05
