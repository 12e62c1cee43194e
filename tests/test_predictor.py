"""The one prediction path: prefixes, bucketing and batching leave greedy outputs unchanged;
eval splits are tokenized once per run."""

from __future__ import annotations

import numpy as np
import pytest

from distill_jax import decode, predictor, sharding
from distill_jax.data import eval_data
from distill_jax.model import hf_io
from distill_jax.tokenizer import Tokenizer
from distill_jax.train import evaluate
from tests import fixtures

MAX_LEN = 6


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    model_dir = fixtures.write_random_t5(tmp_path_factory.mktemp("model"), "v1.1")
    cfg, params = hf_io.load_pretrained(str(model_dir))
    return cfg, params, Tokenizer.from_dir(model_dir)


def make_predictor(model, model_type="task_prefix", batch_size=4) -> predictor.Predictor:
    cfg, params, tokenizer = model
    settings = predictor.Settings(
        model_type=model_type, max_input_length=40, batch_size=batch_size,
        gen_max_len=MAX_LEN, rationale_max_len=MAX_LEN, output_rationale=False,
    )  # fmt: skip
    return predictor.Predictor(params, cfg, tokenizer, sharding.create_mesh(), settings)


def one_by_one(model, texts: list[str], max_len: int) -> list[str]:
    """Greedy decoding of each text alone (one row of 40 tokens, so one compilation): what
    batching and length buckets must not change."""
    cfg, params, tokenizer = model
    out = []
    for text in texts:
        seq = tokenizer.encode(text)[:39] + [tokenizer.eos_id]
        ids = np.zeros((1, 40), np.int32)  # [1, max_input_length]
        ids[0, : len(seq)] = seq
        out.append(tokenizer.decode(np.asarray(decode.greedy_decode(params, cfg, ids, max_len))[0]))
    return out


INPUTS = [r["input"] for r in fixtures.generic_records(5)] + ["short", "word " * 30]


def test_predict_adds_the_task_prefixes_and_batches_without_changing_outputs(model):
    p = make_predictor(model)
    rows = p.predict(INPUTS, rationale=True)
    labels = [r["label"] for r in rows]
    assert labels == one_by_one(model, ["predict: " + x for x in INPUTS], MAX_LEN)
    rationales = [r["rationale"] for r in rows]
    assert rationales == one_by_one(model, ["explain: " + x for x in INPUTS], MAX_LEN)
    assert all(labels) and len(set(labels)) > 3 and labels != rationales
    # `standard` models take the input as is and have no rationale.
    rows = make_predictor(model, "standard").predict(INPUTS, rationale=True)
    assert [r["label"] for r in rows] == one_by_one(model, INPUTS, MAX_LEN)
    assert all("rationale" not in r for r in rows)


def test_eval_tokenizes_each_split_once(model, monkeypatch):
    made = []

    class CountingEvalSet(eval_data.EvalSet):
        def __init__(self, *args, **kwargs):
            made.append(kwargs.get("task"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(predictor, "EvalSet", CountingEvalSet)
    p = make_predictor(model)
    records = fixtures.generic_records(6)
    results = [
        evaluate.evaluate_split(p, None, "valid", records, dataset="generic") for _ in range(2)
    ]
    assert results[0] == results[1]
    assert made == ["predict"]  # the second eval reused the first one's tokens
    evaluate.evaluate_split(p, None, "test", records[:3], dataset="generic")
    assert made == ["predict", "predict"]


def test_server_shapes(model):
    p = make_predictor(model, batch_size=8)  # 4 fake devices: rows are multiples of 4
    assert p.length_buckets() == [32, 64]  # max_input_length 40
    assert p.row_buckets((1, 8, 100)) == [4, 8]
