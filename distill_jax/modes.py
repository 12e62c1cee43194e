"""The non-training modes of launch.py: data, eval, predict and export."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import ml_collections

from distill_jax import config_check, predictor, sharding
from distill_jax.errors import UserError
from distill_jax.model import ct2_export, hf_io
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
    """(ModelSetup, params, step): the workdir's best-validation checkpoint, else its latest
    train state (a run stopped before its first validation), else `model.from_pretrained`."""
    config_check.validate(config)
    tx = make_optimizer(config.train)
    ms = model_setup.build(config, workdir, None, tx)
    ckpts = checkpoint.Checkpoints(workdir, keep=config.checkpoint.keep, async_save=False)
    try:
        with sharding.activate(ms.mesh):
            best = ckpts.restore_best(ms.abstract_state.params)
            if best is not None:
                step, params = best
                return ms, params, step
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


def load_predictor(config: ml_collections.ConfigDict, workdir: pathlib.Path):
    """(Predictor, step) of the model `load_params` picks, with the config's settings."""
    ms, params, step = load_params(config, workdir)
    return predictor.from_config(config, params, ms.model_cfg, ms.tokenizer, ms.mesh), step


def run_eval(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict[str, float]:
    """Accuracy on the valid and test splits with the model `load_params` picks."""
    splits = setup.load_records(config, workdir)
    pred, step = load_predictor(config, workdir)
    writer = logger.MetricsWriter(workdir, tensorboard=False)
    results = {}
    for split in ("valid", "test"):
        acc, rows = evaluate.evaluate_split(
            pred,
            None,
            split,
            splits[split],
            dataset=config.data.name,
            max_examples=config.eval.max_examples,
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
    pred, _ = load_predictor(config, workdir)
    rows = predictor.prediction_rows(inputs, pred.predict(inputs))
    evaluate.write_predictions(pathlib.Path(output_path), rows)
    return len(rows)


def run_export(
    config, workdir: pathlib.Path, export_dir: str, export_format: str = "hf"
) -> pathlib.Path:
    """Writes a Hugging Face T5 directory ('hf') or a CTranslate2 model ('ctranslate2') of the
    model `load_params` picks."""
    if not export_dir:
        raise UserError("--mode=export needs --export_dir=DIR.")
    if export_format not in ("hf", "ctranslate2"):
        raise UserError(f"--export_format={export_format}: expected hf or ctranslate2.")
    if export_format == "ctranslate2":
        ct2_export._converter()  # fail on a missing package before loading the model
    ms, params, _ = load_params(config, workdir)
    # Every process takes part (params may be sharded across hosts); process 0 writes.
    if export_format == "ctranslate2":
        return ct2_export.export_ctranslate2(export_dir, ms.model_cfg, params, ms.tokenizer)
    hf_io.export_pretrained(export_dir, ms.model_cfg, params, ms.tokenizer)
    return pathlib.Path(export_dir)
