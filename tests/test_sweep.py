"""benchmarks/sweep.py: grid expansion and cell names, --cell=i/n, skipping finished cells, the
report over seeds (from fabricated summaries), and one tiny real grid end to end."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import pathlib
import signal
import statistics
import subprocess
import sys

import pytest

from distill_jax.errors import UserError
from tests import fixtures, launch_util

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("sweep", ROOT / "benchmarks" / "sweep.py")
sweep = importlib.util.module_from_spec(_spec)
sys.modules["sweep"] = sweep  # dataclasses look their module up there
_spec.loader.exec_module(sweep)

CONFIG = "configs/generic.py:runlocal"


@pytest.fixture(scope="module")
def config():
    return sweep.load_config(CONFIG)


def names(config, *axes: str) -> list[str]:
    return [c.name for c in sweep.expand(sweep.parse_grid(config, axes))]


def test_grid_expands_in_order_with_typed_values_and_readable_names(config):
    cells = sweep.expand(
        sweep.parse_grid(config, ["train.model_type=standard,task_prefix", "seed=0,1"])
    )
    assert [c.name for c in cells] == [
        "train.model_type=standard,seed=0",
        "train.model_type=standard,seed=1",
        "train.model_type=task_prefix,seed=0",
        "train.model_type=task_prefix,seed=1",
    ]
    assert cells[1].settings == (("train.model_type", "standard"), ("seed", 1))
    assert cells[1].flags() == ["--config.train.model_type=standard", "--config.seed=1"]
    # Same command, same names: nothing depends on dict order or time.
    assert names(config, "train.model_type=standard,task_prefix", "seed=0,1") == [
        c.name for c in cells
    ]
    typed = sweep.expand(
        sweep.parse_grid(config, ["data.subsample=0.25,1", "logging.tensorboard=False,true"])
    )
    assert [dict(c.settings) for c in typed][:2] == [
        {"data.subsample": 0.25, "logging.tensorboard": False},
        {"data.subsample": 0.25, "logging.tensorboard": True},
    ]
    assert typed[1].name == "data.subsample=0.25,logging.tensorboard=true"
    assert typed[2].settings[0] == ("data.subsample", 1.0)  # float field: '1' -> 1.0


def test_zipped_axis_and_sanitised_names(config):
    got = names(
        config,
        "train.model_type+train.max_steps=task_prefix+10,standard+80",
        "model.from_pretrained=a/b c",
    )
    assert got == [
        "train.model_type=task_prefix,train.max_steps=10,model.from_pretrained=a_b_c",
        "train.model_type=standard,train.max_steps=80,model.from_pretrained=a_b_c",
    ]


@pytest.mark.parametrize(
    "axis, message",
    [
        ("train.model_typ=standard", "no such config field 'train.model_typ'"),
        ("nope.seed=1", "no such config field 'nope.seed'"),
        ("train=1", "'train' is a group of fields"),
        ("train.max_steps=10,ten", "train.max_steps='ten' is not a valid int"),
        ("data.subsample=half", "data.subsample='half' is not a valid float"),
        ("logging.tensorboard=maybe", "is not a valid bool"),
        ("seed", "expected field=v1,v2"),
        ("train.model_type+seed=standard", "gives 1 values"),
    ],
)
def test_bad_grid_names_the_field_and_value(config, axis, message):
    with pytest.raises(UserError, match="--grid .*" + message.replace("(", r"\(")):
        sweep.parse_grid(config, [axis])


def test_cell_selector_takes_every_nth():
    cells = [sweep.Cell((("seed", i),)) for i in range(7)]
    assert [dict(c.settings)["seed"] for c in sweep.select(cells, "1/3")] == [1, 4]
    assert sweep.select(cells, "0/1") == cells
    assert sweep.select(cells, None) == cells
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(UserError, match="--cell"):
            sweep.select(cells, bad)


def write_summary(cell_dir: pathlib.Path, test: float, valid: float, preempted=False, **kw):
    cell_dir.mkdir(parents=True, exist_ok=True)
    summary = {"test_accuracy": test, "best_valid_accuracy": valid, "steps": 100}
    summary.update(wall_time_s=60.0, examples_per_s=50.0, preempted=preempted, **kw)
    (cell_dir / "summary.json").write_text(json.dumps(summary))


def test_finished_cells_are_not_rerun_and_cell_selector_applies(tmp_path):
    work = tmp_path / "w"
    write_summary(work / "seed=0", 0.5, 0.5)  # finished
    write_summary(work / "seed=1", 0.5, 0.5, preempted=True)  # interrupted: resumes
    calls = []

    def runner(cmd, log):
        calls.append(cmd)
        workdir = pathlib.Path(next(a for a in cmd if a.startswith("--workdir="))[10:])
        write_summary(workdir, 0.25, 0.25)
        return 0

    argv = [f"--config={CONFIG}", f"--workdir={work}", "--grid=seed=0,1,2,3"]
    assert sweep.main([*argv, "--config.train.max_steps=5"], runner=runner) == 0
    ran = [pathlib.Path(next(a for a in c if a.startswith("--workdir="))).name for c in calls]
    assert ran == ["seed=1", "seed=2", "seed=3"]
    assert calls[0][1:4] == [
        str(ROOT / "launch.py"),
        f"--config={CONFIG}",
        f"--workdir={work}/seed=1",
    ]
    assert calls[0][4:] == ["--config.train.max_steps=5", "--config.seed=1"]
    assert sweep.main(argv, runner=runner) == 0  # all finished now
    assert len(calls) == 3
    write_summary(work / "seed=3", 0.5, 0.5, preempted=True)
    with open(work / "seed=3" / "sweep.lock", "w") as held:  # another sweep trains seed=3
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert sweep.main(argv, runner=runner) == 0
    assert len(calls) == 3
    calls.clear()
    write_summary(work / "seed=2", 0.5, 0.5, preempted=True)
    write_summary(work / "seed=3", 0.5, 0.5, preempted=True)
    assert sweep.main([*argv, "--cell=1/2"], runner=runner) == 0  # cells 1 and 3
    assert [c[3] for c in calls] == [f"--workdir={work}/seed=3"]


def test_failed_cell_exit_status_and_bad_override(tmp_path, capsys):
    argv = [f"--config={CONFIG}", f"--workdir={tmp_path}", "--grid=seed=0"]
    assert sweep.main(argv, runner=lambda cmd, log: 1) == 1
    assert "1 cell(s) failed: seed=0" in capsys.readouterr().err
    calls = []
    two = [f"--config={CONFIG}", f"--workdir={tmp_path}", "--grid=seed=4,5"]
    assert sweep.main(two, runner=lambda cmd, log: calls.append(cmd) or 143) == 143
    assert len(calls) == 1  # preempted: the next cell waits for the rerun
    with pytest.raises(UserError, match="--config.train.max_step=5: no such config field"):
        sweep.main([*argv, "--config.train.max_step=5"], runner=lambda cmd, log: 0)
    with pytest.raises(
        UserError, match="cell seed=0,train.model_type=bogus: config field train.model_type="
    ):
        sweep.main([*argv, "--grid=train.model_type=bogus"], runner=lambda cmd, log: 0)
    with pytest.raises(UserError, match="at least one --grid"):
        sweep.main([f"--config={CONFIG}", f"--workdir={tmp_path}"], runner=lambda cmd, log: 0)
    with pytest.raises(UserError, match="--config.seed is also a --grid field"):
        sweep.main([*argv, "--config.seed=3"], runner=lambda cmd, log: 0)


def test_report_aggregates_over_seeds_and_skips_unfinished(tmp_path, monkeypatch):
    # A published number for one cell (runlocal: generic data, t5-v1_1-tiny, gt labels).
    paper_key = ("generic", "t5-v1_1-tiny", "task_prefix", "gt", 0.5)
    monkeypatch.setitem(sweep.paper.PAPER_ACCURACY, paper_key, 0.625)
    work = tmp_path / "w"
    grid = ["--grid=train.model_type=standard,task_prefix", "--grid=data.subsample=0.5,1.0"]
    grid.append("--grid=seed=0,1,2")
    acc = {}  # (model_type, subsample, seed) -> test accuracy
    for i, mt in enumerate(("standard", "task_prefix")):
        for j, sub in enumerate((0.5, 1.0)):
            for seed in (0, 1, 2):
                acc[mt, sub, seed] = 0.1 + 0.3 * i + 0.2 * j + 0.05 * seed**2
                cell = work / f"train.model_type={mt},data.subsample={sub},seed={seed}"
                if (mt, sub, seed) == ("task_prefix", 1.0, 2):
                    cell.mkdir(parents=True)  # started, never finished: no summary
                elif (mt, sub, seed) == ("standard", 1.0, 2):
                    write_summary(cell, 0.99, 0.99, preempted=True)
                else:
                    write_summary(cell, acc[mt, sub, seed], acc[mt, sub, seed] + 0.01, steps=10)
    argv = [f"--config={CONFIG}", f"--workdir={work}", *grid, "--report_only"]
    assert sweep.main(argv, runner=lambda cmd, log: pytest.fail("report_only trained")) == 0
    report = json.loads((work / "report.json").read_text())
    assert report["cells"] == 12 and report["finished"] == 10
    rows = {
        (r["settings"]["train.model_type"], r["settings"]["data.subsample"]): r
        for r in report["rows"]
    }
    for (mt, sub), row in rows.items():
        seeds = (0, 1) if sub == 1.0 else (0, 1, 2)
        values = [acc[mt, sub, s] for s in seeds]
        assert row["seeds"] == list(seeds) and row["n"] == len(seeds)
        assert row["test_accuracy"]["mean"] == pytest.approx(statistics.mean(values))
        assert row["test_accuracy"]["std"] == pytest.approx(statistics.stdev(values))
        assert row["best_valid_accuracy"]["mean"] == pytest.approx(statistics.mean(values) + 0.01)
        assert row["steps"] == {"mean": 10.0, "std": 0.0}
        assert row["paper_test_accuracy"] == (0.625 if (mt, sub) == paper_key[2::2] else None)
    # standard at 0.5: seeds 0,1,2 -> 0.1, 0.15, 0.3: mean 0.18333, stdev 0.10408
    assert rows["standard", 0.5]["test_accuracy"]["mean"] == pytest.approx(0.183333, abs=1e-5)
    assert rows["standard", 0.5]["test_accuracy"]["std"] == pytest.approx(0.104083, abs=1e-5)
    lines = report["figure"]["lines"]
    assert set(lines) == {"model_type=standard", "model_type=task_prefix"}
    assert lines["model_type=task_prefix"]["x"] == [0.5, 1.0]
    assert lines["model_type=task_prefix"]["paper"] == [0.625, None]  # drawn beside ours
    assert lines["model_type=standard"]["mean"] == [
        pytest.approx(rows["standard", s]["test_accuracy"]["mean"]) for s in (0.5, 1.0)
    ]
    md = (work / "report.md").read_text()
    assert "10 of 12 cells finished" in md
    assert (
        "| standard | 0.5 | 3 | 18.3 ± 10.4 | 19.3 ± 10.4 | 10 ± 0 | 1.0 ± 0.0 | 50.0 ± 0.0 | - |"
        in md
    )
    assert "| task_prefix | 0.5 | 3 |" in md and md.count("| 62.5 |") == 1
    png = (work / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_presets_expand_to_valid_paper_grids(tmp_path):
    config, axes = sweep.paper.PRESETS["paper_cqa"]
    cfg = sweep.load_config(config)
    cells = sweep.expand(sweep.parse_grid(cfg, [f"{f}={v}" for f, v in axes]))
    assert len(cells) == 2 * 2 * 4
    assert cells[0].name == "train.model_type=standard,data.label_type=gt,data.subsample=0.125"
    _, axes = sweep.paper.PRESETS["paper_svamp_sizes"]
    sizes = sweep.expand(sweep.parse_grid(cfg, [f"{f}={v}" for f, v in axes]))
    assert dict(sizes[0].settings)["model.from_pretrained"] == "google/t5-v1_1-small"
    assert len(sizes) == 2 * 2 * 3


@pytest.mark.slow
def test_tiny_runlocal_grid_end_to_end(tmp_path):
    data = fixtures.write_generic_fixture(tmp_path / "data", n_train=40)
    fields = launch_util.tiny_fields(data, train__max_steps=4)
    work = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "sweep.py"), f"--config={CONFIG}"]
    cmd += [f"--workdir={work}", "--grid=train.model_type=standard,task_prefix"]
    cmd += [f"--config.{k}={v}" for k, v in fields.items()]
    env = launch_util.launch_env(devices=1)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((work / "report.json").read_text())
    assert report["finished"] == 2
    assert [r["steps"]["mean"] for r in report["rows"]] == [4, 4]
    assert (work / "report.png").stat().st_size > 1000
    for mt in ("standard", "task_prefix"):
        summary = json.loads((work / f"train.model_type={mt}" / "summary.json").read_text())
        assert summary["steps"] == 4 and not summary["preempted"]
    assert (
        json.loads((work / "train.model_type=standard" / "config.json").read_text())["train"][
            "model_type"
        ]
        == "standard"
    )
    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and rerun.stdout.count("finished, skipped") == 2


def test_sigterm_to_the_sweep_reaches_the_running_cell(tmp_path):
    log = tmp_path / "cell.log"
    child = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(143)); "
        "print('ready', flush=True); time.sleep(60)"
    )
    sweep_side = (
        f"import sys, pathlib; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import sweep; "
        f"sys.exit(sweep.subprocess_runner([sys.executable, '-c', {child!r}], "
        f"pathlib.Path({str(log)!r})))"
    )
    proc = subprocess.Popen([sys.executable, "-c", sweep_side], cwd=ROOT)
    launch_util.wait_for(
        lambda: log.exists() and "ready" in log.read_text(), timeout=60, procs=[proc], what="cell"
    )
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143  # the cell's own (preempted) status, passed up
