"""Evaluation: a split's predictions (through the one `Predictor`), accuracy, predictions files."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import ml_collections
from absl import logging

from distill_jax import metrics
from distill_jax.predictor import Predictor
from distill_jax.train import logger


def evaluate_split(
    predictor: Predictor,
    params,
    split: str,
    records: list[dict[str, Any]],
    *,
    dataset: str,
) -> tuple[float, list[dict[str, Any]]]:
    """(accuracy, prediction rows) of the label task on `records` with `params`; the inputs are
    tokenized once per run (the predictor keeps them under `split`)."""
    outputs = predictor.predict([r["input"] for r in records], params=params, cache_key=split)
    rows = [
        {"input": r["input"], **out, "reference": r["label"]}
        for r, out in zip(records, outputs, strict=True)
    ]
    labels = [out["label"] for out in outputs]
    return metrics.accuracy(labels, [r["label"] for r in records], dataset), rows


def score_split(
    predictor: Predictor,
    params,
    split: str,
    records: list[dict[str, Any]],
    step: int,
    config: ml_collections.ConfigDict,
    workdir: pathlib.Path,
    writer: logger.MetricsWriter,
) -> float:
    """`evaluate_split` of the first eval.max_examples records (0: all) at `step`, with
    predictions/<split>_<step>.jsonl and a metrics row."""
    records = records[: config.eval.max_examples or None]
    acc, rows = evaluate_split(predictor, params, split, records, dataset=config.data.name)
    write_predictions(workdir / "predictions" / f"{split}_{step}.jsonl", rows)
    writer.write({"step": step, "split": split, "accuracy": acc, "examples": len(rows)})
    logging.info("step %d: %s accuracy %.4f on %d examples", step, split, acc, len(rows))
    return acc


def write_predictions(path: pathlib.Path, rows: list[dict[str, Any]]) -> None:
    """JSON Lines, written atomically by process 0."""
    logger.write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
