"""The command lines: launch.py --mode=data and distillm's reference flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs import cqa, generic
from distill_jax import distillm, modes
from tests import fixtures

ROOT = Path(__file__).resolve().parents[1]


def test_distillm_maps_the_reference_flags():
    args = distillm.build_parser().parse_args(
        "--dataset svamp --from_pretrained google/flan-t5-small --model_type standard "
        "--label_type llm --llm gpt --alpha 0.3 --batch_size 8 --grad_steps 4 --max_steps 77 "
        "--eval_steps 11 --max_input_length 512 --gen_max_len 32 --lr 1e-4 --run 3 "
        "--subsample 0.5 --optimizer_name Adafactor --parallelize --bf16 --no_log "
        "--output_rationale".split()
    )
    c = distillm.config_from_args(args)
    assert (c.data.name, c.data.llm, c.data.label_type) == ("svamp", "gpt", "llm")
    assert (c.data.subsample, c.data.max_input_length, c.seed) == (0.5, 512, 3)
    assert (c.model.from_pretrained, c.model.preset) == ("google/flan-t5-small", "flan-t5-small")
    assert c.train.model_type == "standard" and c.train.alpha == 0.3
    # The reference's --batch_size is per forward pass; a step sees batch_size * grad_steps.
    assert (c.train.batch_size, c.train.grad_steps) == (32, 4)
    assert (c.train.max_steps, c.train.eval_steps, c.train.lr) == (77, 11, 1e-4)
    assert c.train.optimizer == "adafactor" and c.dtype == "bfloat16"
    assert (c.mesh.data, c.mesh.fsdp, c.mesh.tensor) == (1, -1, 1)  # --parallelize: FSDP
    assert c.logging.tensorboard is False and c.eval.output_rationale is True
    assert c.eval.gen_max_len == 32
    defaults = distillm.config_from_args(distillm.build_parser().parse_args(["--dataset", "cqa"]))
    assert defaults.train.batch_size == 64 and defaults.dtype == "float32"
    assert defaults.model.from_pretrained == "google/t5-v1_1-base"
    assert str(distillm.default_output_dir(args)).startswith("ckpts/svamp/flan-t5-small/standard")


def test_package_needs_no_top_level_configs_module(tmp_path):
    """The wheel holds only distill_jax (a top-level `configs` would shadow a user's own), and
    `distillm` builds its configs without the repository's configs/ directory."""
    import tomllib

    import setuptools

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    packages = setuptools.find_packages(str(ROOT), include=find["find"]["include"])
    assert "distill_jax" in packages and not [p for p in packages if p.startswith("configs")]
    code = (  # importing `configs` fails in this process, as on a user's machine
        "import sys; sys.modules['configs'] = None\n"
        "from distill_jax import distillm\n"
        "args = distillm.build_parser().parse_args(['--dataset', 'generic'])\n"
        "c = distillm.config_from_args(args)\n"
        "print(c.data.name, c.model.preset)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["generic", "t5-v1_1-base"]


def test_config_arg_picks_a_preset():
    c = cqa.get_config("t5-v1_1-small")
    assert c.model.preset == "t5-v1_1-small"
    assert c.model.from_pretrained == "google/t5-v1_1-small"
    assert cqa.get_config("t5-v1_1-large,scratch").model.from_pretrained == ""
    assert generic.get_config().model.from_pretrained == ""  # the demo runs offline


def test_mode_data_on_reference_fixtures(tmp_path):
    data_dir = fixtures.write_reference_fixtures(tmp_path / "datasets")
    for name in ("cqa", "esnli", "anli1", "svamp", "asdiv"):
        config = cqa.get_config()
        config.data.name = name
        config.data.dir = str(data_dir)
        workdir = tmp_path / name
        counts = modes.run_data(config, workdir)
        assert set(counts) == {"train", "valid", "test"} and counts["train"] > 0
        rows = [
            json.loads(line) for line in (workdir / "data" / "train.jsonl").read_text().splitlines()
        ]
        assert len(rows) == counts["train"]
        assert all({"input", "label", "rationale", "llm_label"} <= set(r) for r in rows)


def test_launch_mode_data_command_line(tmp_path):
    """The real command on the generic fixtures: counts printed, files written, exit 0; run
    from another directory, with no PYTHONPATH, the config file given by its path."""
    data_dir = fixtures.write_generic_fixture(tmp_path / "datasets", fmt="concat")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), f"--config={ROOT}/configs/generic.py",
         "--mode=data", f"--config.data.dir={data_dir}", f"--workdir={tmp_path / 'wd'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "train: 24 records" in proc.stdout
    lines = (tmp_path / "wd" / "data" / "test.jsonl").read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[0])["input"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.train.alpha=1.5", "train.alpha=1.5"),
        ("--config.data.name=imagenet", "data.name='imagenet'"),
    ],
)
def test_launch_rejects_impossible_configs_cleanly(tmp_path, override, message):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "--config=configs/generic.py", override,
         f"--workdir={tmp_path / 'wd'}"],
        cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr
