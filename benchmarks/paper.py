"""The paper's grids as sweep presets, and the paper's reported accuracies beside them.

Hsieh et al. 2023, *Distilling Step-by-Step!* (arXiv 2305.02301), Section 4:

- 4.1 "Reducing training data" (Figures 4 and 5): T5-Base (220M), 12.5/25/50/100% of the
  training set; Distilling step-by-step (our `task_prefix`) against standard finetuning
  (`standard`, `gt` labels, Figure 4) and standard task distillation (`standard`, `llm` labels,
  Figure 5), on e-SNLI, ANLI, CQA and SVAMP, PaLM 540B rationales.
- 4.2 "Reducing model sizes" (Figures 6 and 7): T5-{Small, Base, Large} (60M/220M/770M; the
  reference code uses the v1.1 checkpoints) on 100% of the data, same four methods.

`PAPER_ACCURACY` holds the paper's numbers for those cells. **It is empty on purpose**: the
paper reports both grids only as plots (Figures 4-7, points with no printed values), and the
numbers quoted in its text are claims about LLM baselines (e.g. "our 770M T5 model outperforms
the few-shot prompted 540B PaLM model using only 80% of available data" on ANLI), not values
for these cells. We store no number read off a plot or recalled from memory. If you have an
exact published value (e.g. from the authors), add it as
`("cqa", "t5-v1_1-base", "task_prefix", "gt", 1.0): 0.xx,  # Table N of ...` and the report
prints it beside ours.

Estimated time per cell on one GPU (an estimate, not a measurement): BENCHMARKS.md measures
9.49e11 XLA FLOPs per t5-v1_1-small train step at batch 16 on CQA-like lengths, i.e. ~3.8e12 at
the reference's batch 64; scaled by parameter count (small 77M, base 248M, large 783M) that is
~1.2e13 (base) and ~3.9e13 (large) per step. On an H100/H200 (989 TFLOP/s bf16 dense) at an
assumed 20-40% utilisation, 10,000 steps take about 1.5-3 min (small), 5-10 min (base) and
16-33 min (large), plus validation decoding every `train.eval_steps` (250 by default; on
e-SNLI's ~10k validation records this can exceed the training time: raise eval_steps there).
"""

from __future__ import annotations

# Shared by every paper preset: seed 0 only (the paper plots single runs); add
# `--grid seed=0,1,2` on the command line for error bars.
_METHODS = [("train.model_type", "standard,task_prefix"), ("data.label_type", "gt,llm")]
_FRACTIONS = ("data.subsample", "0.125,0.25,0.5,1.0")
_SIZES = (
    "model.preset+model.from_pretrained",
    "t5-v1_1-small+google/t5-v1_1-small,t5-v1_1-base+google/t5-v1_1-base,"
    "t5-v1_1-large+google/t5-v1_1-large",
)

DATASETS = ("cqa", "esnli", "anli1", "svamp")

# preset name -> (config, [(grid field(s), comma-separated values), ...])
PRESETS: dict[str, tuple[str, list[tuple[str, str]]]] = {}
for _ds in DATASETS:
    # Section 4.1: T5-Base, four training fractions (Figures 4 and 5).
    PRESETS[f"paper_{_ds}"] = (f"configs/{_ds}.py:t5-v1_1-base", [*_METHODS, _FRACTIONS])
    # Section 4.2: three model sizes on all of the data (Figures 6 and 7).
    PRESETS[f"paper_{_ds}_sizes"] = (f"configs/{_ds}.py", [*_METHODS, _SIZES])

# (data.name, model.preset, train.model_type, data.label_type, data.subsample) -> test accuracy
# in [0, 1]. Empty: see the module docstring (the paper gives these cells only as plots).
PAPER_ACCURACY: dict[tuple[str, str, str, str, float], float] = {}


def paper_accuracy(
    dataset: str, preset: str, model_type: str, label_type: str, subsample: float
) -> float | None:
    """The paper's reported test accuracy for one cell, or None when it gives none exactly."""
    return PAPER_ACCURACY.get((dataset, preset, model_type, label_type, float(subsample)))
