"""The trainer's cost model (`train/perf.py`) and the row-count choice it drives."""

from __future__ import annotations

import itertools

import numpy as np

from distill_jax.data import packing
from distill_jax.model.config import get_preset
from distill_jax.train import perf
from tests.test_pipeline import make_iter, make_records


def test_cost_model_prices_attention_higher_on_cpu():
    small = get_preset("t5-v1_1-small")  # dense 4*512*384 + 3*512*1024 per token, width 384
    gpu, cpu = perf.cost_model(small, "gpu"), perf.cost_model(small, "cpu")
    assert gpu.attention_length == 3072
    assert cpu.attention_length == 3072 / perf.CPU_ATTENTION_COST
    assert cpu.compile_steps < gpu.compile_steps  # a step is slow on CPU, a compile is not
    # CQA-like lengths: inputs 60-150, labels 2-6, rationales 20-120 (pairs of each example
    # adjacent). Pricing attention higher must pick shorter rows (measured faster on CPU).
    rng = np.random.default_rng(0)
    inputs = rng.integers(60, 151, 512)
    enc = np.repeat(inputs, 2)
    dec = np.stack([rng.integers(2, 7, 512), rng.integers(20, 121, 512)], axis=1).reshape(-1)
    kw = dict(pairs_per_example=2, examples_per_micro_batch=16, grad_steps=1)
    on_gpu = packing.choose_pack_spec(enc, dec, **kw, attention_length=gpu.attention_length)
    on_cpu = packing.choose_pack_spec(enc, dec, **kw, attention_length=cpu.attention_length)
    assert on_cpu.input_length < on_gpu.input_length, (on_cpu, on_gpu)


def _cost(needed: dict[int, int], shapes, compile_steps: float) -> float:
    padded = sum(n * min(s for s in shapes if s >= r) for r, n in needed.items())
    return padded + len(shapes) * compile_steps * max(needed)


def test_choose_row_counts_is_optimal_and_keeps_the_largest():
    rng = np.random.default_rng(0)
    for _ in range(40):
        counts = sorted(rng.choice(np.arange(8, 20), rng.integers(1, 6), replace=False))
        needed = {int(c): int(rng.integers(1, 300)) for c in counts}
        price = float(rng.choice([0.5, 2.0, 30.0]))
        chosen = packing.choose_row_counts(needed, price)
        assert chosen[-1] == max(needed) and set(chosen) <= set(needed)
        brute = min(
            _cost(needed, (*subset, max(needed)), price)
            for k in range(len(counts))
            for subset in itertools.combinations(counts[:-1], k)
        )
        assert _cost(needed, chosen, price) == brute
    # A short run pads to one shape; a long one keeps the count most steps need.
    assert packing.choose_row_counts({12: 7, 13: 3}, 2.0) == (13,)
    assert packing.choose_row_counts({12: 7000, 13: 3000}, 2.0) == (12, 13)


def test_fixed_row_counts_pad_the_same_plan_with_empty_rows():
    it = make_iter(make_records(200), batch_size=32, row_bucket=1)
    needed = it.needed_row_counts(8)
    plain = [it.batch_at(s) for s in range(8)]
    assert sum(needed.values()) == 8 and len(needed) > 1
    assert sorted(needed) == sorted({b["encoder_input_tokens"].shape[1] for b in plain})
    top = max(needed)
    it.fix_row_counts([top])
    for step, before in enumerate(plain):
        after = it.batch_at(step)
        rows = before["encoder_input_tokens"].shape[1]
        for k, v in after.items():
            assert v.shape[1] == top
            np.testing.assert_array_equal(v[:, :rows], before[k])
            assert not v[:, rows:].any()  # the extra rows are empty
