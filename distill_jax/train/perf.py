"""Throughput, FLOPs and MFU accounting, and the platform's cost model."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
from absl import logging

# Dense bf16 peak FLOP/s per device (vendor figures).
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


def peak_flops_per_device() -> float | None:
    """The device's bf16 peak, or None (CPU and unknown devices: no MFU is reported)."""
    kind = jax.devices()[0].device_kind
    longest_first = sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0]))
    return next((peak for prefix, peak in longest_first if kind.startswith(prefix)), None)


def compiled_flops(compiled) -> float | None:
    """FLOPs of one call of a compiled function, from XLA's cost analysis (all devices)."""
    cost = compiled.cost_analysis()  # None where the backend has none
    return float(cost["flops"]) if cost and "flops" in cost else None


def log_memory(compiled) -> None:
    """Prints the compiled step's memory analysis (per device), where the backend has one."""
    mem = compiled.memory_analysis()  # None where the backend has none
    if mem is not None:
        gib = 1 / 2**30
        logging.info(
            "train step memory per device: args %.3f GiB, outputs %.3f GiB, temps %.3f GiB, "
            "code %.3f GiB",
            mem.argument_size_in_bytes * gib,
            mem.output_size_in_bytes * gib,
            mem.temp_size_in_bytes * gib,
            mem.generated_code_size_in_bytes * gib,
        )


class Throughput:
    """Examples/s (and MFU where the peak is known) between two log points: wall clock between
    host syncs (`device_get`), so an interval covers real device work, not just dispatch."""

    def __init__(self, examples_per_step: int):
        self.examples_per_step = examples_per_step
        self.flops: dict[Any, float | None] = {}  # FLOPs of one step, per batch shape
        self._peak = peak_flops_per_device()
        self._total_steps = 0
        self._total_time = 0.0
        self.reset()

    def reset(self) -> None:
        """Starts a new interval (after compilation or evaluation, which are not training)."""
        self._t0 = time.perf_counter()
        self._steps = 0
        self._flop_count = 0.0
        self._host_s = self._waited_s = 0.0

    def count(self, shapes, host_s: float, waited: float) -> None:
        """One step: batch shape, host seconds to build and send its batch, seconds waited."""
        self._steps += 1
        self._flop_count += self.flops.get(shapes) or 0.0
        self._host_s += host_s
        self._waited_s += waited

    def report(self) -> dict[str, float]:
        """Rates over the interval since the last report; starts the next interval."""
        dt = max(time.perf_counter() - self._t0, 1e-9)
        out = {"examples_per_s": self._steps * self.examples_per_step / dt}
        if self._steps:  # host work per step, and how much of it the loop waited for
            out["host_s_per_step"] = self._host_s / self._steps
            out["data_wait_s_per_step"] = self._waited_s / self._steps
        if self._peak and self._flop_count:
            out["mfu"] = self._flop_count / dt / (self._peak * jax.device_count())
        self._total_steps += self._steps
        self._total_time += dt
        self.reset()
        return out

    def overall_examples_per_s(self) -> float | None:
        if not self._total_time:
            return None
        return round(self._total_steps * self.examples_per_step / self._total_time, 2)


# How much more a token's attention costs on CPU than its FLOPs say, relative to the dense layers:
# the [rows, heads, L, L] float32 passes (bias, mask, softmax, dropout, the bias gradient) are
# memory-bound there. Calibrated on t5-v1_1-small, batch 16, CQA-like lengths (BENCHMARKS.md).
CPU_ATTENTION_COST = 6.0
# One compilation of the train step, in steps of its largest shape. CPU: t5-v1_1-small batch 16
# compiles in 9-10 s and steps in ~5 s (BENCHMARKS.md). GPU/TPU: not measured here; a compile
# takes tens of seconds there against steps of well under a second, so hundreds of steps.
COMPILE_COST_STEPS = {"cpu": 2.0}
ACCELERATOR_COMPILE_COST_STEPS = 300.0


@dataclasses.dataclass(frozen=True)
class CostModel:
    """The platform's prices, as the plain numbers the data layer needs (`TrainIterator`
    arguments): it never asks which platform it runs on."""

    attention_length: float  # row length at which attention costs as much as the dense layers
    compile_steps: float  # one train-step compilation, in steps of the largest shape


def cost_model(model_config: Any, platform: str) -> CostModel:
    """The cost model of `model_config` (T5Config dims) on `platform` ('cpu', 'gpu', 'tpu')."""
    # The row length at which a token's attention FLOPs equal its dense layers': per token and
    # layer the dense layers do 4 * d_model * width (q, k, v, out; width = heads * d_kv) plus
    # (3 if gated else 2) * d_model * d_ff multiply-adds, attention over L tokens 2 * L * width.
    # 3072 for t5-v1_1-small, 640 for the demo's tiny model.
    c = model_config
    width = c.num_heads * c.d_kv
    gated = c.feed_forward_proj.startswith("gated")
    dense = 4 * c.d_model * width + (3 if gated else 2) * c.d_model * c.d_ff
    balance = dense / (2 * width)
    return CostModel(
        attention_length=balance / CPU_ATTENTION_COST if platform == "cpu" else balance,
        compile_steps=COMPILE_COST_STEPS.get(platform, ACCELERATOR_COMPILE_COST_STEPS),
    )
