"""The non-training modes of launch.py: data, eval, predict and export."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import ml_collections

from distill_jax import config_check, sharding
from distill_jax.errors import UserError
from distill_jax.model import hf_io
from distill_jax.train import checkpoint, evaluate, logger, model_setup, setup
from distill_jax.train.state import make_optimizer


def run_data(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict[str, int]:
    """Writes the final records of every split to <workdir>/data/<split>.jsonl; returns counts."""
    config_check.validate(config)
    splits = setup.load_records(config, workdir)
    counts = {}
    out_dir = workdir / "data"
    for split, records in splits.items():
        rows = [dict(r) for r in records]
        evaluate.write_predictions(out_dir / f"{split}.jsonl", rows)
        counts[split] = len(rows)
    return counts


def load_params(config: ml_collections.ConfigDict, workdir: pathlib.Path):
    """(ModelSetup, params): the workdir's latest checkpoint, else `model.from_pretrained`."""
    config_check.validate(config)
    tx = make_optimizer(config.train)
    ms = model_setup.build(config, workdir, None, tx)
    ckpts = checkpoint.Checkpoints(workdir, keep=config.checkpoint.keep, async_save=False)
    try:
        with sharding.activate(ms.mesh):
            restored = ckpts.restore_latest(ms.abstract_state)
        if restored is not None:
            step, state, _ = restored
            return ms, state.params, step
    finally:
        ckpts.close()
    if ms.pretrained_params is None:
        raise UserError(
            f"no checkpoint in {workdir / 'checkpoints'} and config field model.from_pretrained "
            "is empty: train first, or point model.from_pretrained at a HF T5 model."
        )
    params = jax.device_put(ms.pretrained_params, ms.state_shardings.params)
    return ms, params, 0


def run_eval(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict[str, float]:
    """Accuracy on the valid and test splits with the latest (or pretrained) weights."""
    splits = setup.load_records(config, workdir)
    ms, params, step = load_params(config, workdir)
    writer = logger.MetricsWriter(workdir, tensorboard=False)
    results = {}
    for split in ("valid", "test"):
        acc, rows = evaluate.evaluate_split(
            params,
            ms.model_cfg,
            ms.tokenizer,
            splits[split],
            dataset=config.data.name,
            model_type=config.train.model_type,
            eval_cfg=config.eval,
            max_input_length=config.data.max_input_length,
            mesh=ms.mesh,
        )
        evaluate.write_predictions(workdir / "predictions" / f"{split}_{step}.jsonl", rows)
        writer.write({"step": step, "split": split, "accuracy": acc, "examples": len(rows)})
        results[split] = acc
    writer.close()
    return results


def read_inputs(path: str) -> list[str]:
    """Inputs from a JSON array or JSON Lines of {"input": ...} objects."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise UserError(f"--input={path}: no such file.")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"--input={path}: not UTF-8 text ({e}).") from None
    stripped = text.lstrip()
    items: list[tuple[int, Any]] = []
    if stripped.startswith("["):
        try:
            items = [(0, obj) for obj in json.loads(text)]
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: line {e.lineno}: invalid JSON ({e.msg}).") from None
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append((lineno, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}: line {lineno}: invalid JSON ({e.msg}).") from None
    inputs = []
    for i, (lineno, obj) in enumerate(items):
        where = f"line {lineno}" if lineno else f"record {i}"
        if not isinstance(obj, dict) or not isinstance(obj.get("input"), str):
            raise UserError(f"{path}: {where}: expected an object with a string field 'input'.")
        inputs.append(obj["input"])
    return inputs


def run_predict(config, workdir: pathlib.Path, input_path: str, output_path: str) -> int:
    """Writes JSON Lines {input, label[, rationale]} for every input; returns the count."""
    if not output_path:
        raise UserError("--mode=predict needs --output=FILE.")
    inputs = read_inputs(input_path)
    ms, params, _ = load_params(config, workdir)
    task = "predict" if config.train.model_type == "task_prefix" else "standard"
    common = dict(
        mesh=ms.mesh,
        batch_size=config.eval.batch_size,
        max_input_length=config.data.max_input_length,
    )
    labels = evaluate.generate(
        params,
        ms.model_cfg,
        ms.tokenizer,
        inputs,
        task=task,
        max_len=config.eval.gen_max_len,
        **common,
    )
    rows = [{"input": x, "label": y} for x, y in zip(inputs, labels, strict=True)]
    if config.eval.output_rationale and task == "predict":
        rationales = evaluate.generate(
            params,
            ms.model_cfg,
            ms.tokenizer,
            inputs,
            task="explain",
            max_len=config.eval.rationale_max_len,
            **common,
        )
        for row, r in zip(rows, rationales, strict=True):
            row["rationale"] = r
    evaluate.write_predictions(pathlib.Path(output_path), rows)
    return len(rows)


def run_export(config, workdir: pathlib.Path, export_dir: str) -> pathlib.Path:
    """Writes a Hugging Face T5 directory from the latest (or pretrained) weights."""
    if not export_dir:
        raise UserError("--mode=export needs --export_dir=DIR.")
    ms, params, _ = load_params(config, workdir)
    # Every process takes part (params may be sharded across hosts); process 0 writes.
    hf_io.export_pretrained(export_dir, ms.model_cfg, params, ms.tokenizer)
    return pathlib.Path(export_dir)
