"""Running launch.py as a real subprocess in tests: CPU, N fake devices, a timeout, output kept.

`run_launch(args)` runs the command to completion; `start_launch(args)` returns the Popen for
tests that kill it or start several processes of one job. `tiny_flags(data_dir, workdir)` are
the command-line overrides of tests/test_train.py's `tiny_config()` (configs/generic.py:runlocal
on the fixture data, dropout off so losses are exact) with 6 steps, so runs in different
processes compile the same train step and hit the persistent compilation cache.
`reference_run(tmp_path_factory)` is the uninterrupted 1-process run of those flags, made once
per test session and shared by the multi-host and preemption tests (copy it before changing it).

Run as a script (`python tests/launch_util.py <launch.py flags>`) it is launch.py, except that
with DISTILL_TEST_STEP_DELAY=<seconds> in the environment each training batch waits that long
first: a test that kills a run part-way then knows the run is still training when it kills.
DISTILL_TEST_DECODE_DELAY=<seconds> does the same for every decode call of a server.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch.py"
STEP_DELAY_ENV = "DISTILL_TEST_STEP_DELAY"
DECODE_DELAY_ENV = "DISTILL_TEST_DECODE_DELAY"
REFERENCE_STEPS = 6
# One compilation cache for every subprocess of a test session: the second run of the same
# train step on the same device layout loads the executable instead of compiling it.
CACHE_DIR = pathlib.Path(
    os.environ.get("DISTILL_TEST_CACHE_DIR", f"/tmp/distill_jax_test_cache_{os.getuid()}")
)


@dataclasses.dataclass
class Result:
    """What a finished launch.py process left: its exit code and output."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def describe(self) -> str:
        """The tail of the output, for assertion messages."""
        return (
            f"exit {self.returncode} after {self.seconds:.1f}s\n--- stdout\n{self.stdout[-3000:]}"
            f"\n--- stderr\n{self.stderr[-6000:]}"
        )


def launch_env(devices: int = 4, step_delay: float = 0.0, **extra: str) -> dict[str, str]:
    """Environment for a CPU launch.py process with `devices` fake devices."""
    env = dict(os.environ)
    # Drop the parent's fake-device flag (tests/conftest.py sets 4); ours decides.
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    flags.append(f"--xla_force_host_platform_device_count={devices}")
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=" ".join(flags),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        JAX_COMPILATION_CACHE_DIR=str(CACHE_DIR),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
        PYTHONUNBUFFERED="1",
    )
    env.pop(STEP_DELAY_ENV, None)
    if step_delay:
        env[STEP_DELAY_ENV] = str(step_delay)
    env.update(extra)
    return env


def launch_cmd(args: Sequence[str], step_delay: float = 0.0) -> list[str]:
    """The command line: launch.py itself, or this file wrapping it when steps are slowed."""
    script = pathlib.Path(__file__) if step_delay else LAUNCH
    return [sys.executable, str(script), *map(str, args)]


def start_launch(
    args: Sequence[str],
    *,
    devices: int = 4,
    step_delay: float = 0.0,
    log_path: pathlib.Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """Starts launch.py; stdout and stderr go to `log_path` (or pipes when None)."""
    env = env or launch_env(devices, step_delay)
    out = open(log_path, "w") if log_path else subprocess.PIPE  # noqa: SIM115 (Popen owns it)
    try:
        return subprocess.Popen(
            launch_cmd(args, step_delay),
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT if log_path else subprocess.PIPE,
            text=True,
        )
    finally:
        if log_path:
            out.close()  # the child keeps its own descriptor


def run_launch(
    args: Sequence[str], *, devices: int = 4, timeout: float = 300, step_delay: float = 0.0
) -> Result:
    """Runs launch.py to completion (killed after `timeout` seconds)."""
    start = time.time()
    proc = subprocess.run(
        launch_cmd(args, step_delay),
        cwd=ROOT,
        env=launch_env(devices, step_delay),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr, time.time() - start)


def wait_for(
    condition: Callable[[], bool],
    *,
    timeout: float,
    procs: Sequence[subprocess.Popen] = (),
    what: str = "condition",
    poll: float = 0.02,
) -> None:
    """Polls `condition` until true; fails early if one of `procs` exits first."""
    deadline = time.time() + timeout
    while not condition():
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"process exited ({p.returncode}) before {what}")
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


def tiny_fields(data_dir: pathlib.Path, **overrides) -> dict[str, Any]:
    """Config fields (over configs/generic.py:runlocal) of a 6-step tiny run: tests/test_train.py's
    `tiny_config`, checkpoints at steps 2, 4 and 6 (the last two kept). `overrides` are dotted
    field names given with '__' for '.', e.g. `checkpoint__async_save=True`."""
    fields: dict[str, Any] = {
        "data.dir": str(data_dir),
        "data.max_input_length": 48,
        "data.max_target_length": 24,
        "data.pack_input_length": 96,
        "data.pack_target_length": 64,
        "model.dropout_rate": 0.0,
        "train.max_steps": REFERENCE_STEPS,
        "train.eval_steps": 100,  # only the final validation
        "checkpoint.every_steps": 2,
        "eval.max_examples": 4,
        "eval.gen_max_len": 6,
        "logging.tensorboard": False,
    }
    fields.update({k.replace("__", "."): v for k, v in overrides.items()})
    return fields


def tiny_flags(data_dir: pathlib.Path, workdir: pathlib.Path, **overrides) -> list[str]:
    """launch.py flags of the `tiny_fields` run in `workdir`."""
    return [
        "--config=configs/generic.py:runlocal",
        f"--workdir={workdir}",
        *(f"--config.{k}={v}" for k, v in tiny_fields(data_dir, **overrides).items()),
    ]


def tiny_config(data_dir: pathlib.Path, **overrides):
    """The ConfigDict that `tiny_flags` describes, for calling the library in-process."""
    from configs import generic

    config = generic.get_config("runlocal")
    for key, value in tiny_fields(data_dir, **overrides).items():
        *parents, name = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[name] = value
    return config


def train_losses(workdir: pathlib.Path) -> dict[int, float]:
    """{step: loss} of the train rows in metrics.jsonl; a step logged twice (a resumed run
    repeats the steps after its checkpoint) keeps its last value."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    out: dict[int, float] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line being written right now
            continue
        if "loss" in row and "split" not in row:
            out[row["step"]] = row["loss"]
    return out


def rows_after(workdir: pathlib.Path, step: int) -> list[dict[str, Any]]:
    """Train rows of metrics.jsonl for the steps after `step` (what a resumed run trained).

    A resumed run drops the rows its interrupted predecessor logged past the checkpoint, so
    every step must appear exactly once.
    """
    rows = []
    for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    steps = [r["step"] for r in rows if "loss" in r and "split" not in r]
    assert len(steps) == len(set(steps)), f"a step was logged twice: {steps}"
    return [r for r in rows if "loss" in r and "split" not in r and r["step"] > step]


def final_params(workdir: pathlib.Path, step: int = REFERENCE_STEPS) -> dict:
    """The params of checkpoint `step` as host numpy arrays (whatever mesh or process count
    wrote it)."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    path = pathlib.Path(workdir).absolute() / "checkpoints" / "latest" / str(step) / "state"
    with ocp.PyTreeCheckpointer() as ckptr:
        tree = ckptr.metadata(path).item_metadata.tree
        args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        return ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))["params"]


def assert_params_close(actual: dict, expected: dict, atol: float = 0.0) -> None:
    """Every parameter equal (exactly, or within `atol`), named on failure."""
    import jax
    import numpy as np

    flat_a = dict(jax.tree_util.tree_flatten_with_path(actual)[0])
    flat_e = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
    assert flat_a.keys() == flat_e.keys()
    for key, value in flat_e.items():
        name = jax.tree_util.keystr(key)
        np.testing.assert_allclose(flat_a[key], value, rtol=0, atol=atol, err_msg=name)


_REFERENCE: dict[str, tuple[pathlib.Path, pathlib.Path]] = {}


def reference_run(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """(data dir, workdir) of the uninterrupted 1-process, 4-device run of `tiny_flags`;
    made once per session. Tests must copy the workdir (`copy_workdir`) before changing it."""
    if "run" not in _REFERENCE:
        from tests import fixtures

        root = tmp_path_factory.mktemp("reference")
        data_dir = fixtures.write_generic_fixture(root / "data", n_train=40)
        workdir = root / "run"
        result = run_launch(tiny_flags(data_dir, workdir))
        assert result.returncode == 0, result.describe()
        _REFERENCE["run"] = (data_dir, workdir)
    return _REFERENCE["run"]


def copy_workdir(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    """A copy of a finished run's workdir to resume or damage."""
    shutil.copytree(src, dst)
    return dst


def _slow_training_batches(delay: float) -> None:
    """Makes every training batch wait `delay` seconds (the loop fetches one per step)."""
    from distill_jax.data import pipeline

    original = pipeline.TrainIterator.__next__

    def slow_next(self):
        time.sleep(delay)
        return original(self)

    pipeline.TrainIterator.__next__ = slow_next


def _slow_decoding(delay: float) -> None:
    """Makes every greedy-decode call of the Predictor wait `delay` seconds first (a server
    test then knows its request is still in flight)."""
    from distill_jax import predictor

    original = predictor.Predictor._decode

    def slow_decode(self, *args, **kwargs):
        time.sleep(delay)
        return original(self, *args, **kwargs)

    predictor.Predictor._decode = slow_decode


if __name__ == "__main__":
    import runpy

    sys.path.insert(0, str(ROOT))
    if os.environ.get(STEP_DELAY_ENV):
        _slow_training_batches(float(os.environ[STEP_DELAY_ENV]))
    if os.environ.get(DECODE_DELAY_ENV):
        _slow_decoding(float(os.environ[DECODE_DELAY_ENV]))
    sys.argv = [str(LAUNCH), *sys.argv[1:]]
    runpy.run_path(str(LAUNCH), run_name="__main__")
