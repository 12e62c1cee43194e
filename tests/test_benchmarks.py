"""benchmarks/accelerator.py --smoke runs on CPU without grain, TFDS or tensorboard and writes
the JSON fields the full GPU run reports (so the prepared command cannot rot)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BANNED = ("grain", "tensorflow", "tensorflow_datasets", "tensorboard", "tensorboardX")
# Runs the script, then writes which banned packages it imported (a bare GPU machine has none;
# probing for them, as transformers does, is fine).
RUNNER = f"""
import json, runpy, sys
sys.argv = ["benchmarks/accelerator.py", *sys.argv[1:]]
try:
    runpy.run_path("benchmarks/accelerator.py", run_name="__main__")
finally:
    banned = sorted({{m for m in sys.modules if m.split(".")[0] in {BANNED!r}}})
    open(__import__("os").environ["BANNED_OUT"], "w").write(json.dumps(banned))
"""


@pytest.mark.slow
def test_accelerator_smoke_writes_every_field(tmp_path):
    out = tmp_path / "acc.json"
    banned_out = tmp_path / "banned.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    env["BANNED_OUT"] = str(banned_out)
    env.pop("XLA_FLAGS", None)  # one CPU device, as on a one-GPU machine
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, "--smoke", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads(banned_out.read_text()) == []  # no grain, TFDS or tensorboard
    res = json.loads(out.read_text())
    assert res["smoke"] and res["backend"] == "cpu"
    errors = [r for r in [*res["train"], res["decode"]] if "error" in r]
    assert not errors, errors
    runs = {r["section"]: r for r in res["train"]}
    first = runs["train t5-v1_1-tiny batch 4 xla"]
    ours, ref = first["ours"], first["reference"]
    for key in ("step_s_median", "tokens_per_s", "model_flops", "attention_flops"):
        assert ours[key] > 0, key
    assert ours["memory"]["planned_peak_bytes"] > 0
    assert "xla_flops" in ours and "device_peak_bytes" in ours
    assert ref["step_s_median"] > 0
    # Same weights and data: the losses at init agree (dropout off).
    assert abs(ours["eval_loss"][0] - ref["eval_loss"][0]) < 1e-3 * abs(ref["eval_loss"][0])
    assert runs["train t5-v1_1-tiny batch 4 dot_product"]["attention"] == "dot_product"
    assert "skipped" in runs["train t5-v1_1-tiny largest batch"]  # CPU: no memory limit
    dec = res["decode"]
    assert dec["ours"]["tokens_per_s"] > 0 and dec["reference"]["tokens_per_s"] > 0
    assert dec["reference"]["same_tokens_fraction"] == 1.0
    assert "ours vs reference" in res["table"]
