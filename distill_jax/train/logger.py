"""Where metrics and result files go: metrics.jsonl, TensorBoard, a PNG of the curves and
files written atomically (process 0 only)."""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any

import jax

from distill_jax import files


class MetricsWriter:
    """Appends rows to <workdir>/metrics.jsonl and mirrors scalars to TensorBoard."""

    def __init__(self, workdir: pathlib.Path, *, tensorboard: bool):
        self.enabled = jax.process_index() == 0
        self.path = workdir / "metrics.jsonl"
        self._tb = None
        if self.enabled and tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(workdir / "tensorboard"))

    def drop_after(self, step: int) -> None:
        """Forgets rows logged after `step`: a resumed run logs those steps again."""
        if not self.enabled or not self.path.exists():
            return
        rows = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in rows))

    def write(self, row: dict[str, Any]) -> None:
        """One JSON object per line; scalars also to TensorBoard under '<split>/<name>'."""
        if not self.enabled:
            return
        row = {k: _plain(v) for k, v in row.items()}
        line = json.dumps(row) + "\n"
        with open(self.path, "a+b") as f:  # appends always go to the end, whatever we read
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a run killed mid-write left a torn last line
                    line = "\n" + line
            f.write(line.encode())
        if self._tb is not None:
            prefix = row.get("split", "train")
            for key, value in row.items():
                if key not in ("step", "split") and isinstance(value, int | float):
                    self._tb.add_scalar(f"{prefix}/{key}", value, row["step"])
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def write_atomic(path: pathlib.Path, text: str) -> None:
    """`files.atomic_write` on process 0 only (every process computes the same text)."""
    if jax.process_index() == 0:
        files.atomic_write(path, text)


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep the row parseable
    return v


def read_metrics(path: pathlib.Path) -> list[dict[str, Any]]:
    """All rows of a metrics.jsonl (none if it does not exist), skipping a line torn by a crash."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # blank, or cut short by a crash mid-write
    return rows


def plot_curves(workdir: pathlib.Path) -> None:
    """Writes <workdir>/curves.png: train losses and eval accuracy against steps."""
    rows = read_metrics(workdir / "metrics.jsonl") if jax.process_index() == 0 else []
    train = [r for r in rows if "loss" in r and "split" not in r]
    evals = [r for r in rows if r.get("split") == "valid" and "accuracy" in r]
    if not train:  # or not process 0
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("loss", "label_loss", "rationale_loss"):
        points = [(r["step"], r[key]) for r in train if isinstance(r.get(key), int | float)]
        if points:
            ax_loss.plot(*zip(*points, strict=True), label=key)
    ax_loss.set(xlabel="step", ylabel="cross entropy", title="training loss", yscale="log")
    ax_loss.legend()
    if evals:
        ax_acc.plot([r["step"] for r in evals], [r["accuracy"] for r in evals], marker="o")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="validation accuracy", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(workdir / "curves.png", dpi=90)
    plt.close(fig)
