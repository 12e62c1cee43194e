"""The loop compiles every train shape the run uses before step 1 (none mid-run)."""

from __future__ import annotations

import numpy as np
import pytest

from distill_jax.train import loop
from tests import fixtures
from tests.test_train import tiny_config

pytestmark = pytest.mark.slow


class _Recorder:
    """Wraps the jitted train step: logs ('compile', rows) and ('step', rows) in call order."""

    def __init__(self, fn, events: list):
        self.fn, self.events = fn, events

    def __call__(self, state, batch, rng):  # a step through the jitted function itself
        self.events.append(("step", batch["encoder_input_tokens"].shape[1]))
        return self.fn(state, batch, rng)

    def lower(self, state, batch, rng):
        rows = batch["encoder_input_tokens"].shape[1]
        self.events.append(("compile", rows))
        lowered = self.fn.lower(state, batch, rng)
        events = self.events

        class Lowered:
            def compile(self):
                compiled = lowered.compile()
                return _Compiled(compiled, rows, events)

        return Lowered()


class _Compiled:
    def __init__(self, compiled, rows, events):
        self.compiled, self.rows, self.events = compiled, rows, events

    def __call__(self, state, batch, rng):
        self.events.append(("step", batch["encoder_input_tokens"].shape[1]))
        return self.compiled(state, batch, rng)

    def __getattr__(self, name):  # memory_analysis, cost_analysis
        return getattr(self.compiled, name)


def test_every_train_shape_is_compiled_before_step_1(tmp_path, monkeypatch):
    events: list = []
    jit = loop.jit_train_step
    monkeypatch.setattr(loop, "jit_train_step", lambda *a, **k: _Recorder(jit(*a, **k), events))
    # Inputs and rationales of 2-30 words: the rows a step needs vary from step to step.
    rng = np.random.default_rng(0)
    words = lambda: " ".join(rng.choice(["alpha", "beta", "gamma", "delta"], rng.integers(2, 31)))
    records = [{"input": words(), "label": "beta", "rationale": words()} for _ in range(60)]
    for split, part in (("train", records[:40]), ("valid", records[40:50]), ("test", records[50:])):
        fixtures.write_generic_file(tmp_path / "data" / "generic" / f"generic_{split}.json", part)
    config = tiny_config(tmp_path / "data", max_steps=8)
    config.data.row_bucket = 4
    config.checkpoint.every_steps = 100
    summary = loop.train_and_evaluate(config, tmp_path / "run")
    steps = [rows for kind, rows in events if kind == "step"]
    compiles = [rows for kind, rows in events if kind == "compile"]
    assert len(steps) == 8
    assert events[: len(compiles)] == [("compile", r) for r in compiles], events
    assert set(steps) <= set(compiles) and len(compiles) == len(set(compiles))
    assert summary["compiled_train_shapes"] == len(compiles)
