"""`distillm`: the reference's command line (run.py and its healthcare fork) on this trainer.

    distillm --from_pretrained google/t5-v1_1-base --dataset cqa --model_type task_prefix \
        --label_type gt --llm palm --alpha 0.5 --batch_size 64

Flags keep the reference's names, defaults and meaning. As in the reference, `--batch_size`
is the batch of one forward pass and `--grad_steps` the accumulation count, so an optimizer
step sees batch_size * grad_steps examples (`train.batch_size` in our config).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import ml_collections

from distill_jax.config_defaults import DATASETS, HUB_IDS, dataset_config
from distill_jax.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    """The reference's flags (plus the fork's --output_dir)."""
    p = argparse.ArgumentParser(prog="distillm", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--subsample", type=float, default=1.0)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--max_steps", type=int, default=10000)
    p.add_argument("--eval_steps", type=int, default=250)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--optimizer_name", default="AdamW")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--run", type=int, default=0)
    p.add_argument("--from_pretrained", default="google/t5-v1_1-base")
    p.add_argument("--label_type", default="gt", choices=("gt", "llm"))
    p.add_argument("--llm", help="default: 'generic' for --dataset generic, else 'palm'")
    p.add_argument("--max_input_length", type=int, default=1024)
    p.add_argument("--grad_steps", type=int, default=1)
    p.add_argument("--local_rank", type=int, default=-1, help="accepted and ignored")
    p.add_argument("--gen_max_len", type=int, default=64)
    p.add_argument("--parallelize", action="store_true", help="shard the model over all devices")
    p.add_argument("--model_type", default="task_prefix", choices=("task_prefix", "standard"))
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--no_log", action="store_true", help="no TensorBoard")
    p.add_argument("--output_rationale", action="store_true")
    p.add_argument("--output_dir", help="workdir (default: ckpts/...)")
    return p


def llm_of(args: argparse.Namespace) -> str:
    """--llm, defaulting to the teacher whose outputs the dataset has ('palm' as in the
    reference; generic data is the fork's, whose labels are the LLM's: 'generic')."""
    if args.llm is not None:
        return args.llm
    return "generic" if args.dataset == "generic" else "palm"


def config_from_args(args: argparse.Namespace) -> ml_collections.ConfigDict:
    """Maps the reference's flags onto our config."""
    c = dataset_config(args.dataset)
    c.seed = args.run
    c.dtype = "bfloat16" if args.bf16 else "float32"  # the reference trains in fp32 by default
    c.data.subsample = args.subsample
    c.data.label_type = args.label_type
    c.data.llm = llm_of(args)
    c.data.max_input_length = args.max_input_length
    c.model.from_pretrained = args.from_pretrained
    name = pathlib.Path(args.from_pretrained).name
    if name in HUB_IDS:
        c.model.preset = name
    c.train.model_type = args.model_type
    c.train.alpha = args.alpha
    c.train.batch_size = args.batch_size * args.grad_steps
    c.train.grad_steps = args.grad_steps
    c.train.max_steps = args.max_steps
    c.train.eval_steps = args.eval_steps
    c.train.lr = args.lr
    c.train.optimizer = args.optimizer_name.lower()
    c.eval.gen_max_len = args.gen_max_len
    c.eval.output_rationale = args.output_rationale
    c.logging.tensorboard = not args.no_log
    if args.parallelize:
        c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    return c


def default_output_dir(a: argparse.Namespace) -> pathlib.Path:
    """The reference's ckpts/<config_dir>/<run> layout."""
    model = pathlib.Path(a.from_pretrained).name
    config_dir = (
        f"{a.dataset}/{model}/{a.model_type}/{llm_of(a)}/{a.subsample}/{a.label_type}/{a.alpha}/"
        f"{a.max_input_length}/{a.grad_steps * a.batch_size}/{a.optimizer_name}/{a.lr}"
    )
    return pathlib.Path("ckpts", config_dir, str(a.run))


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    from distill_jax.train import loop

    args = build_parser().parse_args(argv)
    workdir = pathlib.Path(args.output_dir) if args.output_dir else default_output_dir(args)
    try:
        summary = loop.train_and_evaluate(config_from_args(args), workdir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    if summary.get("preempted"):
        return loop.PREEMPTED_EXIT_CODE
    print(f"test accuracy {summary['test_accuracy']:.4f}; workdir {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
