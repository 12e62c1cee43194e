"""Evaluation: a split's predictions (through the one `Predictor`), accuracy, predictions files."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax

from distill_jax import metrics
from distill_jax.predictor import Predictor


def evaluate_split(
    predictor: Predictor,
    params,
    split: str,
    records: list[dict[str, Any]],
    *,
    dataset: str,
    max_examples: int = 0,
) -> tuple[float, list[dict[str, Any]]]:
    """(accuracy, prediction rows) of the label task on `records` with `params`.

    The split's inputs are tokenized on the first call and kept by the predictor (under
    `split`), so evaluating it again in the same run does not re-tokenize.
    """
    if max_examples:
        records = records[:max_examples]
    inputs = [r["input"] for r in records]
    outputs = predictor.predict(inputs, params=params, cache_key=split)
    rows = [
        {"input": r["input"], **out, "reference": r["label"]}
        for r, out in zip(records, outputs, strict=True)
    ]
    labels = [out["label"] for out in outputs]
    accuracy = metrics.accuracy(labels, [r["label"] for r in records], dataset)
    return accuracy, rows


def write_predictions(path: pathlib.Path, rows: list[dict[str, Any]]) -> None:
    """JSON Lines, written atomically by process 0."""
    if jax.process_index() != 0:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
