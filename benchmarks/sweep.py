"""A grid of training runs over config fields, one `launch.py` workdir per cell, and one report.

    python benchmarks/sweep.py --config=configs/generic.py --workdir=W \
        --grid train.model_type=standard,task_prefix --grid seed=0,1 \
        [--grid data.subsample=0.25,0.5,1.0] [--config.<field>=<value> ...] \
        [--cell=i/n] [--report_only] [--preset=paper_cqa]

Every cell is `python launch.py --config=... --workdir=W/<cell> --config.<f>=<v> ...` in a
subprocess, so a cell resumes from its checkpoints when the sweep is rerun, and a finished cell
(its summary.json says preempted false) is skipped. `--cell=i/n` runs cells i, i+n, i+2n, ...
(a job array over machines sharing W); a later `--report_only` with the same grid gathers them.

A `--grid` axis is `field=v1,v2,...`, values parsed with the field's type. Fields joined by '+'
vary together: `--grid train.model_type+train.max_steps=task_prefix+1200,standard+9600` is two
cells, not four. Axes multiply. Cells are named by their settings in grid order, e.g.
`train.model_type=standard,seed=0`, with characters other than `[A-Za-z0-9._=,+-]` made '_'.

The report (W/report.{json,md,png}) reads finished cells only. `seed` is aggregated over (mean
and sample standard deviation of the seeds present); every other grid field keys a row. The
figure is test accuracy against `data.subsample`, one line per setting of the other row fields.
`--preset` names one of the paper's grids (benchmarks/paper.py), whose published numbers the
report prints beside ours where the paper gives them exactly.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import importlib.util
import itertools
import json
import pathlib
import re
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import paper  # noqa: E402 (benchmarks/paper.py, beside this file)

from distill_jax.errors import UserError  # noqa: E402

SEED = "seed"
METRICS = ("test_accuracy", "best_valid_accuracy", "steps", "wall_time_s", "examples_per_s")
Runner = Callable[[list[str], pathlib.Path], int]  # (command, log file) -> exit status


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of the grid: its (field, value) settings in grid order."""

    settings: tuple[tuple[str, Any], ...]

    @property
    def name(self) -> str:
        """The workdir name: readable, deterministic, filesystem-safe."""
        text = ",".join(f"{k}={format_value(v)}" for k, v in self.settings)
        return re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)

    def flags(self) -> list[str]:
        """The `--config.<field>=<value>` overrides that make this cell."""
        return [f"--config.{k}={format_value(v)}" for k, v in self.settings]


def format_value(value: Any) -> str:
    """A value as a flag spells it (`true`/`false` for booleans)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def load_config(spec: str):
    """`configs/<x>.py[:arg]` -> its ConfigDict (the file's `get_config(arg)`)."""
    path, _, arg = spec.partition(":")
    file = pathlib.Path(path) if pathlib.Path(path).is_absolute() else ROOT / path
    if not file.is_file():
        raise UserError(f"--config: no config file {file}")
    module_spec = importlib.util.spec_from_file_location(f"_sweep_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def parse_value(config, field: str, text: str, where: str) -> Any:
    """`text` parsed with the type of `config`'s dotted `field`; UserError naming both."""
    *parents, leaf = field.split(".")
    node = config
    try:
        for parent in parents:
            node = node[parent]
        kind = node.get_type(leaf)
    except (KeyError, AttributeError, TypeError):
        raise UserError(f"{where}: no such config field '{field}'") from None
    if hasattr(node[leaf], "keys"):
        raise UserError(f"{where}: '{field}' is a group of fields, not a field")
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if kind in (int, float):
            return kind(text)
    except ValueError:
        raise UserError(f"{where}: {field}={text!r} is not a valid {kind.__name__}") from None
    return text  # str fields, and None-valued fields of no declared type


def parse_grid(config, axes: Sequence[str]) -> list[list[tuple[tuple[str, Any], ...]]]:
    """Each `--grid` axis -> its list of settings (one tuple of (field, value) per point)."""
    out = []
    for axis in axes:
        where = f"--grid {axis}"
        fields_text, eq, values_text = axis.partition("=")
        if not eq or not fields_text or not values_text:
            raise UserError(f"{where}: expected field=v1,v2,... (or f1+f2=a1+a2,b1+b2,...)")
        fields = fields_text.split("+")
        points = []
        for point in values_text.split(","):
            parts = point.split("+") if len(fields) > 1 else [point]
            if len(parts) != len(fields):
                raise UserError(f"{where}: '{point}' gives {len(parts)} values for {fields}")
            values = [parse_value(config, f, v, where) for f, v in zip(fields, parts, strict=True)]
            points.append(tuple(zip(fields, values, strict=True)))
        out.append(points)
    seen = [f for axis in out for f, _ in axis[0]]
    if len(seen) != len(set(seen)):
        raise UserError(f"--grid: a field appears in two axes: {seen}")
    return out


def expand(axes: list[list[tuple[tuple[str, Any], ...]]]) -> list[Cell]:
    """The product of the axes, first axis slowest; one Cell per combination."""
    return [Cell(tuple(s for point in combo for s in point)) for combo in itertools.product(*axes)]


def select(cells: list[Cell], spec: str | None) -> list[Cell]:
    """`--cell=i/n`: cells i, i+n, i+2n, ... (all cells when absent)."""
    if not spec:
        return cells
    m = re.fullmatch(r"(\d+)/(\d+)", spec)
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise UserError(f"--cell={spec}: expected i/n with 0 <= i < n, e.g. --cell=0/4")
    return cells[int(m.group(1)) :: int(m.group(2))]


def resolved(config, overrides: dict[str, Any], cell: Cell):
    """The config a cell trains with: the file's, then the overrides, then the cell's fields."""
    c = config.copy_and_resolve_references()
    for field, value in [*overrides.items(), *cell.settings]:
        *parents, leaf = field.split(".")
        node = c
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return c


def summary_of(cell_dir: pathlib.Path) -> dict | None:
    """The cell's summary.json when it finished (not preempted), else None."""
    try:
        summary = json.loads((cell_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return None if summary.get("preempted", True) else summary


def subprocess_runner(cmd: list[str], log: pathlib.Path) -> int:
    """Runs one cell's launch.py, its output appended to `log`."""
    with open(log, "a") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        # A SIGTERM to the sweep alone (a scheduler's preemption) reaches the cell, which
        # checkpoints and exits with the preempted status; the sweep then stops.
        previous = signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
        try:
            return proc.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)


def run_cells(
    spec: str, workdir: pathlib.Path, cells: list[Cell], extra: list[str], runner: Runner
) -> tuple[list[str], bool]:
    """Trains every unfinished cell in turn; returns the names of the cells that failed, and
    whether a cell was preempted (then the remaining cells are left for the rerun)."""
    from distill_jax.train.loop import PREEMPTED_EXIT_CODE

    failed = []
    for i, cell in enumerate(cells):
        cell_dir = workdir / cell.name
        if summary_of(cell_dir) is not None:
            print(f"[{i + 1}/{len(cells)}] {cell.name}: finished, skipped", flush=True)
            continue
        cell_dir.mkdir(parents=True, exist_ok=True)
        with open(cell_dir / "sweep.lock", "w") as lock:
            try:  # held while the cell trains; the OS drops it if this process dies
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"[{i + 1}/{len(cells)}] {cell.name}: running in another sweep", flush=True)
                continue
            if summary_of(cell_dir) is not None:  # another sweep finished it just now
                continue
            cmd = [sys.executable, str(ROOT / "launch.py"), f"--config={spec}"]
            cmd += [f"--workdir={cell_dir}", *extra, *cell.flags()]
            print(f"[{i + 1}/{len(cells)}] {cell.name}: training", flush=True)
            code = runner(cmd, cell_dir / "sweep.log")
        if code == PREEMPTED_EXIT_CODE:
            print("  preempted: rerun the same command to resume", flush=True)
            return failed, True
        if code != 0:
            print(f"  exit {code}; see {cell_dir / 'sweep.log'}", flush=True)
            failed.append(cell.name)
    return failed, False


def _stat(values: list[float]) -> dict[str, float | None]:
    """Mean and sample std (None for one value; both None for none)."""
    if not values:
        return {"mean": None, "std": None}
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "std": std}


def aggregate(config, overrides: dict, cells: list[Cell], workdir: pathlib.Path) -> dict:
    """Finished cells grouped by every grid field but `seed`: mean/std per metric."""
    groups: dict[tuple, list[tuple[Cell, dict]]] = {}
    for cell in cells:
        key = tuple((k, v) for k, v in cell.settings if k != SEED)
        groups.setdefault(key, [])
        summary = summary_of(workdir / cell.name)
        if summary is not None:
            groups[key].append((cell, summary))
    rows = []
    for key, done in groups.items():
        if not done:
            continue
        c = resolved(config, overrides, done[0][0])
        row: dict[str, Any] = {"settings": dict(key), "n": len(done)}
        row["cells"] = [cell.name for cell, _ in done]
        row["seeds"] = [dict(cell.settings).get(SEED, c.seed) for cell, _ in done]
        for metric in METRICS:
            row[metric] = _stat([float(s[metric]) for _, s in done if s.get(metric) is not None])
        row["subsample"] = float(c.data.subsample)
        row["paper_test_accuracy"] = paper.paper_accuracy(
            c.data.name, c.model.preset, c.train.model_type, c.data.label_type, c.data.subsample
        )
        rows.append(row)
    finished = sum(row["n"] for row in rows)
    return {"cells": len(cells), "finished": finished, "rows": rows, "figure": figure_data(rows)}


def figure_data(rows: list[dict]) -> dict:
    """Accuracy vs training fraction: one line per setting of the non-fraction row fields."""
    # Label a line by the fields that tell lines apart (a field fixed over the rows says nothing).
    keys = [k for k in (rows[0]["settings"] if rows else {}) if k != "data.subsample"]
    keys = [k for k in keys if len({format_value(r["settings"][k]) for r in rows}) > 1] or keys
    lines: dict[str, dict] = {}
    for row in sorted(rows, key=lambda r: r["subsample"]):
        label = ", ".join(
            f"{k.rsplit('.', 1)[-1]}={format_value(row['settings'][k])}" for k in keys
        )
        line = lines.setdefault(label or "run", {k: [] for k in ("x", "mean", "std", "n", "paper")})
        line["paper"].append(row["paper_test_accuracy"])
        line["x"].append(row["subsample"])
        line["mean"].append(row["test_accuracy"]["mean"])
        line["std"].append(row["test_accuracy"]["std"] or 0.0)
        line["n"].append(row["n"])
    return {"x": "data.subsample", "y": "test_accuracy", "lines": lines}


def _pm(stat: dict, scale: float = 100.0, digits: int = 1) -> str:
    if stat.get("mean") is None:
        return "-"
    text = f"{stat['mean'] * scale:.{digits}f}"
    return text + (f" ± {stat['std'] * scale:.{digits}f}" if stat["std"] is not None else "")


def markdown(report: dict) -> str:
    """The report's table: one row per setting, mean ± std over the seeds that finished."""
    rows = report["rows"]
    fields = list(rows[0]["settings"]) if rows else []
    head = [*fields, "seeds", "test acc %", "best valid %", "steps", "wall min", "train ex/s"]
    head.append("paper test %")
    lines = [
        f"{report['finished']} of {report['cells']} cells finished; mean ± sample std over seeds.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in rows:
        cols = [format_value(row["settings"][f]) for f in fields]
        cols.append(str(row["n"]))
        cols += [_pm(row["test_accuracy"]), _pm(row["best_valid_accuracy"])]
        cols += [_pm(row["steps"], 1.0, 0), _pm(row["wall_time_s"], 1 / 60, 1)]
        cols.append(_pm(row["examples_per_s"], 1.0, 1))
        p = row["paper_test_accuracy"]
        cols.append("-" if p is None else f"{p * 100:.1f}")
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: pathlib.Path) -> None:
    """The paper-style figure: test accuracy vs training fraction, error bars = std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for label, line in report["figure"]["lines"].items():
        x, y, err = ([v * 100 for v in line[k]] for k in ("x", "mean", "std"))
        drawn = ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
        pairs = zip(line["x"], line["paper"], strict=True)
        paper_xy = [(f * 100, p * 100) for f, p in pairs if p is not None]
        if paper_xy:  # the paper's numbers for the same cells, dashed in the same colour
            px, py = zip(*paper_xy, strict=True)
            color = drawn.lines[0].get_color()
            ax.plot(px, py, "s--", mfc="none", color=color, label=f"{label} (paper)")
    xs = sorted({x * 100 for line in report["figure"]["lines"].values() for x in line["x"]})
    ax.set_xticks(xs or [100])
    ax.set_xlim(0, 105)
    ax.set_ylim(0, 100)
    ax.set_xlabel("training data (% of the training split)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    if report["figure"]["lines"]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def write_report(report: dict, workdir: pathlib.Path) -> None:
    """W/report.json, W/report.md and W/report.png, each written whole (tmp + rename)."""
    for name, text in (
        ("report.json", json.dumps(report, indent=2) + "\n"),
        ("report.md", markdown(report)),
    ):
        tmp = workdir / (name + ".tmp")
        tmp.write_text(text)
        tmp.replace(workdir / name)
    plot(report, workdir / "report.png")


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """The sweep's own flags, and the `--config.<field>=<value>` overrides passed through."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="configs/<x>.py[:arg] (default: the preset's)")
    p.add_argument("--workdir", required=True, help="one subdirectory per cell + the report")
    p.add_argument("--grid", action="append", default=[], help="field=v1,v2 (repeatable)")
    p.add_argument("--preset", choices=sorted(paper.PRESETS), help="a paper grid")
    p.add_argument("--cell", help="i/n: run cells i, i+n, ... only")
    p.add_argument("--report_only", action="store_true", help="write the report, train nothing")
    args, rest = p.parse_known_args(argv)
    bad = [a for a in rest if not re.fullmatch(r"--config\.[^=]+=.*", a)]
    if bad:
        p.error(f"unrecognised arguments: {' '.join(bad)} (overrides are --config.<field>=<v>)")
    return args, rest


def main(argv: Sequence[str], runner: Runner = subprocess_runner) -> int:
    """Runs the sweep; returns the exit status (1 when a cell failed)."""
    args, extra = parse_args(argv)
    spec, axes = args.config, list(args.grid)
    if args.preset:
        preset_spec, preset_axes = paper.PRESETS[args.preset]
        spec = spec or preset_spec
        axes = [f"{f}={v}" for f, v in preset_axes] + axes
    if not spec or not axes:
        raise UserError("--config and at least one --grid (or a --preset) are required")
    config = load_config(spec)
    overrides = {}
    for flag in extra:
        field, _, value = flag[len("--config.") :].partition("=")
        overrides[field] = parse_value(config, field, value, flag)
    cells = expand(parse_grid(config, axes))
    both = sorted(set(overrides) & {f for f, _ in cells[0].settings})
    if both:
        raise UserError(f"--config.{both[0]} is also a --grid field; give it in one place")
    # jax: only once the command line is known to be good
    from distill_jax import config_check
    from distill_jax.train.loop import PREEMPTED_EXIT_CODE

    for cell in cells:  # every cell's config checked before any trains
        try:
            config_check.validate(resolved(config, overrides, cell))
        except UserError as e:
            raise UserError(f"cell {cell.name}: {e}") from None
    workdir = pathlib.Path(args.workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    failed, preempted = [], False
    if not args.report_only:
        failed, preempted = run_cells(spec, workdir, select(cells, args.cell), extra, runner)
    report = aggregate(config, overrides, cells, workdir)
    report.update(config=spec, overrides=extra, grid=axes)
    write_report(report, workdir)
    print(markdown(report), end="")
    print(f"report: {workdir / 'report.md'}, .json, .png", flush=True)
    if failed:
        print(f"{len(failed)} cell(s) failed: {', '.join(failed)}", file=sys.stderr)
    return PREEMPTED_EXIT_CODE if preempted else 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
