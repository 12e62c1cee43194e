"""Token ids cached next to the prepared records: a hit equals fresh tokenization, and any
change of the tokenizer or of a tokenisation setting misses."""

from __future__ import annotations

import numpy as np
import pytest

from distill_jax.data import builder, features, pipeline, token_cache
from distill_jax.tokenizer import Tokenizer
from tests import fixtures

SETTINGS = dict(model_type="task_prefix", max_input_length=32, max_target_length=16)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(train RecordSource, tokenizer, second tokenizer) over 30 generic records."""
    tmp = tmp_path_factory.mktemp("cache")
    records = fixtures.generic_records(30)
    splits = builder.prepare(lambda: {"train": records}, {"n": 30}, tmp / "prepared")
    texts = [r[k] for r in records for k in ("input", "label", "rationale")]
    return (
        splits["train"],
        Tokenizer.train(texts, 200, tmp / "tok_a"),
        Tokenizer.train(texts[::2], 120, tmp / "tok_b"),  # another vocabulary
    )


def assert_same(a: features.TokenizedPairs, b: features.TokenizedPairs) -> None:
    for side in ("encoder", "decoder"):
        for field in ("tokens", "offsets"):
            np.testing.assert_array_equal(
                getattr(getattr(a, side), field), getattr(getattr(b, side), field)
            )
    np.testing.assert_array_equal(a.is_rationale, b.is_rationale)
    assert a.pairs_per_example == b.pairs_per_example


def cached_dirs(source) -> list[str]:
    return sorted(p.name for p in source.cache_dir.iterdir() if not p.name.startswith("."))


def test_hit_equals_fresh_tokenization_and_does_not_tokenize(prepared, monkeypatch):
    source, tok, _ = prepared
    fresh = features.tokenize_pairs(list(source), tok, **SETTINGS)
    first = token_cache.tokenize_pairs_cached(source, tok, **SETTINGS)  # miss: writes
    assert len(cached_dirs(source)) >= 1
    monkeypatch.setattr(features, "tokenize_pairs", lambda *a, **k: pytest.fail("re-tokenized"))
    again = token_cache.tokenize_pairs_cached(source, tok, **SETTINGS)  # hit
    assert isinstance(again.encoder.tokens, np.memmap)
    assert_same(first, fresh)
    assert_same(again, fresh)


@pytest.mark.parametrize(
    "change",
    [
        {"max_input_length": 31},
        {"max_target_length": 8},
        {"model_type": "standard"},
        {"label_key": "rationale"},
        {"tokenizer": "b"},
    ],
)
def test_changed_tokenizer_or_settings_miss(prepared, change):
    source, tok_a, tok_b = prepared
    token_cache.tokenize_pairs_cached(source, tok_a, **SETTINGS)
    before = cached_dirs(source)
    change = dict(change)
    tok = tok_b if change.pop("tokenizer", None) else tok_a
    assert tok_a.encode_batch([source[0]["input"]]) != tok_b.encode_batch([source[0]["input"]])
    settings = {**SETTINGS, **change}
    got = token_cache.tokenize_pairs_cached(source, tok, **settings)
    assert len(cached_dirs(source)) == len(before) + 1  # a new entry, the old one kept
    assert_same(got, features.tokenize_pairs(list(source), tok, **settings))


def test_train_iterator_batches_are_the_same_with_the_cache(prepared):
    source, tok, _ = prepared
    kwargs = dict(**SETTINGS, batch_size=8, grad_steps=1, seed=0, prefetch=0)
    a = pipeline.TrainIterator(source, tok, **kwargs)  # cached (RecordSource)
    b = pipeline.TrainIterator(list(source), tok, **kwargs)  # in memory: no cache
    for step in range(3):
        for key, value in b.batch_at(step).items():
            np.testing.assert_array_equal(a.batch_at(step)[key], value, err_msg=key)
