"""The non-training modes of launch.py: data, eval, predict and export."""

from __future__ import annotations

import contextlib
import pathlib
from typing import Any

import jax
import ml_collections

from distill_jax import config_check, predictor, sharding
from distill_jax.data.json_records import iter_records
from distill_jax.errors import UserError
from distill_jax.model import ct2_export, hf_io
from distill_jax.train import checkpoint, evaluate, logger, setup


def run_data(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict[str, int]:
    """Writes the final records of every split to <workdir>/data/<split>.jsonl; returns counts."""
    config_check.validate(config)
    splits = setup.load_records(config, workdir)
    for split, records in splits.items():
        evaluate.write_predictions(workdir / "data" / f"{split}.jsonl", [dict(r) for r in records])
    return {split: len(records) for split, records in splits.items()}


def load_params(config: ml_collections.ConfigDict, workdir: pathlib.Path):
    """(ModelSetup, params, step): the workdir's best-validation checkpoint, else its latest
    train state (a run stopped before its first validation), else `model.from_pretrained`."""
    config_check.validate(config)
    ms = setup.ModelSetup(config, workdir, None)
    ckpts = checkpoint.Checkpoints(workdir, config.checkpoint)  # restores only
    with contextlib.closing(ckpts), sharding.activate(ms.mesh):
        best = ckpts.restore_best(ms.abstract_state.params)
        if best is not None:
            step, params = best
            return ms, params, step
        restored = ckpts.restore_latest(ms.abstract_state)
    if restored is not None:
        step, state, _ = restored
        return ms, state.params, step
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
    settings = predictor.Settings.from_config(config)
    return predictor.Predictor(params, ms.model_cfg, ms.tokenizer, ms.mesh, settings), step


def run_eval(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict[str, float]:
    """Accuracy on the valid and test splits with the model `load_params` picks."""
    splits = setup.load_records(config, workdir)
    pred, step = load_predictor(config, workdir)
    writer = logger.MetricsWriter(workdir, tensorboard=False)
    return {
        split: evaluate.score_split(pred, None, split, splits[split], step, config, workdir, writer)
        for split in ("valid", "test")
    }


def read_inputs(path: str) -> list[str]:
    """Inputs from a JSON array, JSON Lines or concatenated {"input": ...} objects (errors name
    the line)."""
    if not pathlib.Path(path).is_file():
        raise UserError(f"--input={path}: no such file.")

    def check(value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("input"), str):
            return value
        return "expected an object with a string field 'input'"

    return [record["input"] for _, _, record in iter_records(pathlib.Path(path), check)]


def run_predict(config, workdir: pathlib.Path, input_path: str, output_path: str) -> int:
    """Writes JSON Lines {input, label[, rationale]} for every input; returns the count."""
    if not output_path:
        raise UserError("--mode=predict needs --output=FILE.")
    inputs = read_inputs(input_path)
    pred, _ = load_predictor(config, workdir)
    rows = [{"input": x, **r} for x, r in zip(inputs, pred.predict(inputs), strict=True)]
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
