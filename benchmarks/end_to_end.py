"""Times what a user runs, `train_and_evaluate`, against the reference's train loop, in one run.

Writes CQA-like generic records (inputs ~60-150 tokens, labels 2-6, rationales 20-120) and a
random-weight Hugging Face T5 checkpoint (`--preset`'s architecture, a SentencePiece vocabulary
trained on the records, the preset's embedding size) to a temporary directory: nothing is
downloaded. Then, one after the other in this process:

- ours: `distill_jax.train.loop.train_and_evaluate` on a `configs/generic.py` config pointing
  at that checkpoint (`model.from_pretrained`), logging every step, so each row of
  metrics.jsonl times one step (data wait and host sync included). Everything before step 1
  (records, tokenizing, packing plan, init, compilation) and after (final checkpoint, eval) is
  reported separately.
- the reference: the same checkpoint in `transformers`, the same examples per step (our
  shuffle order), each step tokenizing its 16 records with the HF tokenizer, padding each of
  its two batches to its longest sequence and doing `benchmarks/reference_step.py`'s step,
  with torch at its default thread count.

Prints steps `--time_from`..`--steps` (mean and median s/step) of both, their ratio, and how
many train shapes ours compiled.

    python benchmarks/end_to_end.py --preset t5-v1_1-small --batch_size 16 --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="t5-v1_1-small")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--steps", type=int, default=10, help="train steps of each run")
    p.add_argument("--time_from", type=int, default=3, help="first timed step (1-based)")
    p.add_argument("--records", type=int, default=400, help="training records")
    p.add_argument("--vocab", type=int, default=4000, help="SentencePiece pieces trained")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_reference", action="store_true", help="time ours only")
    p.add_argument(
        "--compile_steps",
        type=float,
        default=None,
        help="override the cost model's price of a compilation, in steps (default: perf.py's)",
    )
    p.add_argument("--json", default="", help="append the results as one JSON line here")
    return p.parse_args(argv)


WORDS_PER_TOKEN = 0.45  # pseudo-words of 3-8 letters are ~2.2 pieces each (measured)


def cqa_like_records(n: int, seed: int) -> list[dict[str, str]]:
    """Records whose token lengths follow CQA's profile (inputs ~60-150, labels 2-6, ...)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lexicon = ["".join(rng.choice(letters, rng.integers(3, 9))) for _ in range(3000)]
    text = lambda k: " ".join(rng.choice(lexicon, max(1, round(k * WORDS_PER_TOKEN))))
    return [
        {
            "input": text(rng.integers(56, 147)),
            "label": text(rng.integers(1, 6)),
            "rationale": text(rng.integers(19, 120)),
        }
        for _ in range(n)
    ]


def write_data(root: Path, args) -> tuple[Path, Path]:
    """(records dir, HF checkpoint dir) with random weights and a trained vocabulary."""
    import torch
    import transformers

    from distill_jax.model.config import config_to_hf, get_preset
    from distill_jax.tokenizer import Tokenizer

    data = root / "data"
    data.mkdir()
    splits = {"train": args.records, "valid": 32, "test": 32}
    records = {}
    for i, (split, n) in enumerate(splits.items()):
        records[split] = cqa_like_records(n, args.seed + i)
        with open(data / f"{split}.json", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in records[split])
    hf_dir = root / "hf"
    texts = [r[k] for r in records["train"] for k in ("input", "label", "rationale")]
    Tokenizer.train(texts, args.vocab, hf_dir)
    torch.manual_seed(args.seed)
    hf_cfg = transformers.T5Config(**config_to_hf(get_preset(args.preset)))
    transformers.T5ForConditionalGeneration(hf_cfg).save_pretrained(hf_dir)
    return data, hf_dir


def our_config(args, data: Path, hf_dir: Path):
    from configs import generic

    c = generic.get_config()
    c.data.train_file, c.data.valid_file = str(data / "train.json"), str(data / "valid.json")
    c.data.test_file = str(data / "test.json")
    c.data.max_input_length, c.data.max_target_length = 1024, 256  # the reference's
    c.model.from_pretrained = str(hf_dir)
    c.model.dropout_rate = None  # the checkpoint's 0.1, as the reference trains
    c.train.batch_size, c.train.max_steps = args.batch_size, args.steps
    c.train.lr, c.train.warmup_steps = 5e-5, 0
    c.train.log_every = 1  # one metrics row per step: the step times
    c.train.eval_steps = args.steps
    c.eval.max_examples, c.eval.gen_max_len, c.eval.batch_size = 16, 8, 16
    c.checkpoint.every_steps = 10 * args.steps
    c.logging.tensorboard = False
    c.logging.progress_bar = False
    return c


def run_ours(args, config, workdir: Path) -> dict:
    from distill_jax.train import loop, perf
    from distill_jax.train.logger import read_metrics

    if args.compile_steps is not None:
        perf.COMPILE_COST_STEPS["cpu"] = args.compile_steps
        perf.ACCELERATOR_COMPILE_COST_STEPS = args.compile_steps
    t0, c0 = time.perf_counter(), time.process_time()
    summary = loop.train_and_evaluate(config, workdir)
    total = time.perf_counter() - t0
    rows = [r for r in read_metrics(workdir / "metrics.jsonl") if "loss" in r]
    step_s = [args.batch_size / r["examples_per_s"] for r in rows]
    timed = step_s[args.time_from - 1 :]
    return {
        "total_s": total,
        "cpu_s": time.process_time() - c0,
        "step_s": step_s,
        "timed_mean": statistics.mean(timed),
        "timed_median": statistics.median(timed),
        "steps_s": sum(step_s),
        # .get: the loop before host timing and compile-ahead (for before/after runs)
        "host_s_per_step": statistics.mean(r.get("host_s_per_step", 0.0) for r in rows),
        "data_wait_s_per_step": [round(r.get("data_wait_s_per_step", 0.0), 4) for r in rows],
        "compiled_train_shapes": summary.get("compiled_train_shapes", "-"),
        "padding_fraction": summary["padding_fraction"],
    }


def run_reference(args, config, hf_dir: Path, records: list[dict]) -> dict:
    """The reference's loop: per step, tokenize its records, pad per task, one train step."""
    import torch
    import transformers

    from benchmarks.reference_step import ReferenceStep
    from distill_jax.data import pipeline
    from distill_jax.tokenizer import Tokenizer

    order = pipeline.TrainIterator(  # the examples of each of our steps
        records,
        Tokenizer.from_dir(hf_dir),
        model_type="task_prefix",
        batch_size=args.batch_size,
        grad_steps=1,
        max_input_length=1024,
        max_target_length=256,
        seed=config.seed,
        prefetch=0,
    )
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    model = transformers.T5ForConditionalGeneration.from_pretrained(hf_dir)
    ref = ReferenceStep(model, lr=5e-5, max_steps=args.steps)

    def batch(inputs: list[str], targets: list[str]) -> dict:
        enc = tok(inputs, max_length=1024, truncation=True, padding=True, return_tensors="pt")
        labels = tok(targets, max_length=256, truncation=True, padding=True, return_tensors="pt")
        ids = labels.input_ids.masked_fill(labels.attention_mask == 0, -100)
        return {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask, "labels": ids}

    step_s = []
    time.sleep(1.0)  # let XLA's worker threads go idle
    c0 = time.process_time()
    for step in range(args.steps):
        t0 = time.perf_counter()
        recs = [records[int(i)] for i in order.examples_at(step)]
        inputs = [r["input"] for r in recs]
        pred = batch(["predict: " + x for x in inputs], [r["label"] for r in recs])
        expl = batch(["explain: " + x for x in inputs], [r["rationale"] for r in recs])
        ref(pred, expl)
        step_s.append(time.perf_counter() - t0)
    timed = step_s[args.time_from - 1 :]
    return {
        "step_s": step_s,
        "cpu_s": time.process_time() - c0,
        "timed_mean": statistics.mean(timed),
        "timed_median": statistics.median(timed),
        "torch_threads": torch.get_num_threads(),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    load = lambda: " ".join(f"{x:.2f}" for x in os.getloadavg())
    res = {"argv": sys.argv[1:], "machine": common.machine(), "load_start": load()}
    print(f"machine: {res['machine']}; load average {res['load_start']}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, hf_dir = write_data(root, args)
        config = our_config(args, data, hf_dir)
        from distill_jax.train import setup

        records = setup.load_records(config, root / "ours")["train"]
        res["ours"] = run_ours(args, config, root / "ours")
        res["load_after_ours"] = load()
        if not args.no_reference:
            res["reference"] = run_reference(args, config, hf_dir, records)
    res["load_end"] = load()
    report(res, args)
    if args.json:
        with open(args.json, "a", encoding="utf-8") as f:
            f.write(json.dumps(res) + "\n")
    return res


def report(res: dict, args) -> None:
    ours, ref = res["ours"], res.get("reference")
    span = f"steps {args.time_from}-{args.steps}"
    f = lambda x: f"{x:.2f}"
    rows = [
        (f"{span} mean s/step", f(ours["timed_mean"]), f(ref["timed_mean"]) if ref else "-"),
        (f"{span} median s/step", f(ours["timed_median"]), f(ref["timed_median"]) if ref else "-"),
        (
            "every step (s)",
            " ".join(map(f, ours["step_s"])),
            " ".join(map(f, ref["step_s"])) if ref else "-",
        ),
        ("compiled train shapes", ours["compiled_train_shapes"], "-"),
        ("host s/step (build + transfer, off the loop)", f"{ours['host_s_per_step']:.4f}", "-"),
        ("data wait s/step", " ".join(f"{x:.3f}" for x in ours["data_wait_s_per_step"]), "-"),
        ("train_and_evaluate wall (s), all of it", f(ours["total_s"]), "-"),
        ("torch threads", "-", ref["torch_threads"] if ref else "-"),
    ]
    print(common.table(rows, ["", "ours (train_and_evaluate)", "reference loop"]))
    print(f"load average: start {res['load_start']}, after ours {res['load_after_ours']}, "
          f"end {res['load_end']}")  # fmt: skip
    if ref:
        print(
            f"end to end, {span}: ours {ref['timed_mean'] / ours['timed_mean']:.2f}x the "
            f"reference (mean), {ref['timed_median'] / ours['timed_median']:.2f}x (median)"
        )


if __name__ == "__main__":
    main()
