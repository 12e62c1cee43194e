"""Start-up steps of a 2-process job that touch the shared workdir take the same path on
every process (tests/multihost_worker.py runs each step as a real 2-process CPU job)."""

from __future__ import annotations

import json
import subprocess
import sys

import portpicker
import pytest

from distill_jax.tokenizer import Tokenizer
from tests import fixtures
from tests import launch_util as lu

pytestmark = pytest.mark.slow  # 3 two-process jobs, ~12 s each

WORKER = lu.ROOT / "tests" / "multihost_worker.py"


def run_job(scenario: str, tmp_path) -> list[str]:
    """Both processes' outputs; each must exit 0 within the timeout."""
    port = portpicker.pick_unused_port()
    env = lu.launch_env(devices=1)
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), scenario, str(port), str(i), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=120)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{out[-3000:]}"
    return [out.strip().splitlines()[-1] for out in outputs]


def test_tokenizer_trained_by_process_0_while_process_1_arrives_late(tmp_path):
    fixtures.write_generic_fixture(tmp_path / "data")
    outs = run_job("tokenizer-late", tmp_path)
    assert outs[0] == outs[1] and outs[0].startswith("ok ")


def test_records_are_prepared_and_tokenized_once_by_process_0(tmp_path):
    fixtures.write_generic_fixture(tmp_path / "data")
    records = fixtures.generic_records(24)
    Tokenizer.train([r[k] for r in records for k in ("input", "rationale")], 200, tmp_path / "tok")
    outs = run_job("prepare", tmp_path)
    assert outs[0] == outs[1] and outs[0].startswith("ok 24 ")
    calls = sorted(p.name.split("-")[0] for p in (tmp_path / "calls").iterdir())
    assert calls == ["0", "tokenize0"]  # process 1 read what process 0 wrote


def test_bad_records_fail_on_both_processes_without_hanging(tmp_path):
    data_dir = fixtures.write_generic_fixture(tmp_path / "data")
    (data_dir / "generic" / "generic_train.json").write_text(json.dumps({"input": 1}) + "\n")
    outs = run_job("bad-records", tmp_path)
    assert "generic_train.json" in outs[0], outs
    assert "failed on process 0" in outs[1], outs
