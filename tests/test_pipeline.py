"""Tests of the input pipeline: tokenization, packing invariants, determinism, state, eval."""

import collections
import json

import numpy as np
import pytest

from distill_jax.data import packing, pipeline
from distill_jax.errors import UserError

PREDICT, EXPLAIN = 200, 201


class WordTokenizer:
    """Reversible stub: 'w<k>' -> 3 + k, the two task prefixes -> 200 / 201; pad 0, eos 1."""

    pad_id, eos_id = 0, 1

    def encode(self, text):
        special = {"predict:": PREDICT, "explain:": EXPLAIN}
        return [special.get(w, 3 + int(w[1:]) if w[1:].isdigit() else 2) for w in text.split()]

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]


def words(rng, lo, hi):
    return " ".join(f"w{k}" for k in rng.integers(0, 150, rng.integers(lo, hi + 1)))


def make_records(n, inputs=(3, 12), labels=(1, 3), rationales=(4, 15), seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "input": words(rng, *inputs),
            "label": words(rng, *labels),
            "rationale": words(rng, *rationales),
        }
        for _ in range(n)
    ]


def make_iter(records, **kw):
    args = dict(
        model_type="task_prefix",
        batch_size=8,
        grad_steps=1,
        max_input_length=64,
        max_target_length=32,
        seed=0,
        prefetch=0,
    )
    args.update(kw)
    return pipeline.TrainIterator(records, WordTokenizer(), **args)


def unpack(batch):
    """Decode packed rows into (micro_batch, encoder tuple, target tuple, kind) per segment,
    checking the per-row invariants on the way."""
    out = []
    for m in range(batch["encoder_input_tokens"].shape[0]):
        for r in range(batch["encoder_input_tokens"].shape[1]):
            es, ds = batch["encoder_segment_ids"][m, r], batch["decoder_segment_ids"][m, r]
            segs = sorted(set(es[es > 0]))
            assert segs == list(range(1, len(segs) + 1))  # 1, 2, ... from the row start
            assert sorted(set(ds[ds > 0])) == segs
            for seg_ids in (es, ds):  # segments are contiguous and in order; padding at the end
                nz = seg_ids[seg_ids > 0]
                assert np.all(np.diff(nz) >= 0) and np.all(seg_ids[len(nz) :] == 0)
            assert np.all(batch["encoder_input_tokens"][m, r][es == 0] == 0)
            for s in segs:
                enc = batch["encoder_input_tokens"][m, r][es == s]
                tgt = batch["decoder_target_tokens"][m, r][ds == s]
                dec_in = batch["decoder_input_tokens"][m, r][ds == s]
                np.testing.assert_array_equal(dec_in, np.concatenate([[0], tgt[:-1]]))
                lw = batch["label_weights"][m, r][ds == s]
                rw = batch["rationale_weights"][m, r][ds == s]
                assert set(lw + rw) == {1.0} and len(set(lw)) == 1  # one kind per segment
                out.append((m, tuple(enc), tuple(tgt), "rationale" if rw[0] else "label"))
            pad = ds == 0
            assert not batch["label_weights"][m, r][pad].any()
            assert not batch["rationale_weights"][m, r][pad].any()
            assert np.all(batch["decoder_target_tokens"][m, r][pad] == 0)
    return out


def expected_pairs(it, step):
    pairs = it.pairs
    out = []
    for i in it.examples_at(step):
        for k in range(pairs.pairs_per_example):
            p = i * pairs.pairs_per_example + k
            kind = "rationale" if pairs.is_rationale[p] else "label"
            out.append((tuple(pairs.encoder[p]), tuple(pairs.decoder[p]), kind))
    return out


def test_tokenize_pairs_prefix_truncation_and_eos():
    records = [{"input": "w1 w2 w3 w4 w5 w6", "label": "w7", "rationale": "w8 w9 w10 w11 w12"}]
    tp = pipeline.tokenize_pairs(
        records, WordTokenizer(), model_type="task_prefix", max_input_length=4, max_target_length=3
    )
    assert tp.pairs_per_example == 2 and list(tp.is_rationale) == [False, True]
    assert list(tp.encoder[0]) == [PREDICT, 4, 5, 1]  # prefix, truncated, EOS last
    assert list(tp.encoder[1]) == [EXPLAIN, 4, 5, 1]
    assert list(tp.decoder[0]) == [10, 1]  # short target: untouched + EOS
    assert list(tp.decoder[1]) == [11, 12, 1]  # truncated to 3 including EOS
    std = pipeline.tokenize_pairs(
        records, WordTokenizer(), model_type="standard", max_input_length=100, max_target_length=8
    )
    assert std.pairs_per_example == 1 and not std.is_rationale.any()
    assert list(std.encoder[0]) == [4, 5, 6, 7, 8, 9, 1]  # no prefix
    assert list(std.decoder[0]) == [10, 1]
    with pytest.raises(UserError, match="record 0: field 'rationale'"):
        pipeline.tokenize_pairs(
            [{"input": "w1", "label": "w2"}],
            WordTokenizer(),
            model_type="task_prefix",
            max_input_length=8,
            max_target_length=8,
        )


@pytest.mark.parametrize("model_type,grad_steps", [("task_prefix", 2), ("standard", 1)])
def test_packed_batch_has_every_pair_once(model_type, grad_steps):
    it = make_iter(make_records(50), model_type=model_type, batch_size=12, grad_steps=grad_steps)
    for step in range(3):
        batch = next(it)
        shapes = {k: v.shape for k, v in batch.items()}
        assert len(set(shapes.values())) == 2  # encoder-length and decoder-length arrays
        assert batch["encoder_input_tokens"].shape[:2] == batch["label_weights"].shape[:2]
        assert batch["encoder_input_tokens"].shape[0] == grad_steps
        assert batch["encoder_input_tokens"].shape[-1] == it.pack_input_length
        assert batch["decoder_target_tokens"].shape[-1] == it.pack_target_length
        assert batch["encoder_input_tokens"].dtype == np.int32
        assert batch["label_weights"].dtype == np.float32
        got = collections.Counter((e, t, k) for _, e, t, k in unpack(batch))
        assert got == collections.Counter(expected_pairs(it, step))
        if model_type == "standard":
            assert not batch["rationale_weights"].any()
        else:  # labels and rationales both weighted, on their own segments
            assert batch["label_weights"].any() and batch["rationale_weights"].any()
            assert not (batch["label_weights"] * batch["rationale_weights"]).any()


def test_micro_batches_split_the_step():
    it = make_iter(make_records(64), batch_size=16, grad_steps=4)
    batch = next(it)
    micro = collections.Counter(m for m, *_ in unpack(batch))
    assert set(micro) <= set(range(4)) and sum(micro.values()) == 32
    assert batch["encoder_segment_ids"].shape[:2] == (4, batch["encoder_segment_ids"].shape[1])
    with pytest.raises(ValueError, match="multiple of grad_steps"):  # config_check's job
        make_iter(make_records(10), batch_size=6, grad_steps=4)


def test_epoch_covers_every_example_once_and_reshuffles():
    it = make_iter(make_records(40), batch_size=8)
    first = np.concatenate([it.examples_at(s) for s in range(5)])
    second = np.concatenate([it.examples_at(s) for s in range(5, 10)])
    assert sorted(first) == list(range(40)) and sorted(second) == list(range(40))
    assert list(first) != list(second)


def test_deterministic_and_seeded():
    recs = make_records(60)
    it_a, it_b = make_iter(recs, seed=3, prefetch=2), make_iter(recs, seed=3, prefetch=0)
    other = make_iter(recs, seed=4)
    for step in range(4):
        ba, bb, at = next(it_a), next(it_b), it_b.batch_at(step)
        for k in ba:
            np.testing.assert_array_equal(ba[k], bb[k])
            np.testing.assert_array_equal(ba[k], at[k])
    assert not np.array_equal(it_a.examples_at(0), other.examples_at(0))
    assert not np.array_equal(
        it_a.batch_at(0)["encoder_input_tokens"], other.batch_at(0)["encoder_input_tokens"]
    )


def test_state_restore_gives_the_same_next_batches():
    recs = make_records(30)
    it = make_iter(recs, prefetch=2)
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # survives a JSON checkpoint
    assert state["step"] == 5
    expected = [next(it) for _ in range(3)]
    restored = make_iter(recs, prefetch=2)
    next(restored)  # position elsewhere first: set_state must reposition
    restored.set_state(state)
    for want in expected:
        got = next(restored)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    assert restored.step == 8
    with pytest.raises(UserError, match="batch_size"):
        make_iter(recs, batch_size=4).set_state(state)


def test_processes_get_disjoint_blocks_of_the_same_plan():
    recs = make_records(80)
    full = make_iter(recs, batch_size=16, grad_steps=2, row_multiple=2)
    parts = [
        make_iter(
            recs, batch_size=16, grad_steps=2, row_multiple=2, process_index=p, process_count=2
        )
        for p in range(2)
    ]
    for step in range(3):
        whole = full.batch_at(step)
        local = [p.batch_at(step) for p in parts]
        for k in whole:
            assert local[0][k].shape == local[1][k].shape
            assert whole[k].shape[1] % 2 == 0
            np.testing.assert_array_equal(np.concatenate([x[k] for x in local], axis=1), whole[k])
    with pytest.raises(ValueError, match="multiple of process_count"):
        make_iter(recs, row_multiple=3, process_count=2)


def test_pack_lengths_fit_every_pair_and_user_lengths_are_checked():
    recs = make_records(40, inputs=(3, 40), rationales=(1, 30))
    it = make_iter(recs)
    assert it.pack_input_length >= it.pairs.encoder.lengths.max()
    assert it.pack_target_length >= it.pairs.decoder.lengths.max()
    assert it.pack_input_length % 64 == 0 and it.pack_target_length % 16 == 0
    fixed = make_iter(recs, pack_input_length=128, pack_target_length=64)
    assert (fixed.pack_input_length, fixed.pack_target_length) == (128, 64)
    assert next(fixed)["encoder_input_tokens"].shape[-1] == 128
    with pytest.raises(UserError, match="pack_input_length=8 is shorter"):
        make_iter(recs, pack_input_length=8)


def test_row_counts_are_bucketed():
    it = make_iter(make_records(200), batch_size=32, row_multiple=4)
    for _ in range(10):
        rows = next(it)["encoder_input_tokens"].shape[1]
        assert rows % it.row_bucket == 0 and it.row_bucket % 4 == 0
    assert len(it.row_counts) <= 3


@pytest.mark.parametrize(
    "lengths",
    [
        dict(inputs=(60, 150), labels=(1, 5), rationales=(19, 119)),  # CQA-like
        dict(inputs=(15, 30), labels=(14, 29), rationales=(59, 149)),  # bundled demo-like
    ],
)
def test_padding_waste_is_small_on_realistic_lengths(lengths):
    recs = make_records(400, **lengths)
    it = make_iter(recs, batch_size=64, max_input_length=1024, max_target_length=256)
    for _ in range(6):
        next(it)
    assert it.padding_fraction <= 0.15, it.padding_fraction
    assert abs(it.estimate_padding(6) - it.padding_fraction) < 1e-9


def test_pack_rows_respects_capacity_and_packs_tightly():
    rng = np.random.default_rng(1)
    # Alternating shapes like predict/explain pairs: long inputs, short or long targets.
    enc = rng.integers(10, 20, 300)
    dec = np.where(np.arange(300) % 2, rng.integers(5, 12, 300), 1)
    rows, n = packing.pack_rows(enc, dec, 64, 12, granularity=4)
    assert n % 4 == 0 and rows.max() < n
    assert np.bincount(rows, enc, n).max() <= 64 and np.bincount(rows, dec, n).max() <= 12
    lower_bound = max(enc.sum() / 64, dec.sum() / 12)
    assert n <= 1.06 * lower_bound + 4, (n, lower_bound)


def test_bucket_length():
    assert [pipeline.bucket_length(n) for n in (1, 32, 33, 64, 65, 97, 129, 200, 1000)] == [
        32,
        32,
        64,
        64,
        96,
        128,
        192,
        256,
        1024,
    ]


def test_eval_batches_cover_all_examples_once_across_processes():
    recs = make_records(37, inputs=(1, 80))
    tok = WordTokenizer()
    evs = pipeline.EvalSet(recs, tok, task="predict", max_input_length=64)
    seen, lengths = [], []
    per_process = [
        list(evs.batches(8, row_multiple=4, process_index=p, process_count=2)) for p in range(2)
    ]
    assert len(per_process[0]) == len(per_process[1]) == 5
    for b0, b1 in zip(*per_process, strict=True):
        assert b0["encoder_input_tokens"].shape == b1["encoder_input_tokens"].shape
        for b in (b0, b1):
            tokens, idx, mask = b["encoder_input_tokens"], b["indices"], b["mask"]
            assert tokens.shape[0] == 4 and tokens.shape[1] in (32, 64, 96)
            np.testing.assert_array_equal(mask, idx >= 0)
            for row, i in zip(tokens, idx, strict=True):
                if i < 0:
                    assert list(row[row > 0]) == [1]  # filler: a lone EOS
                    continue
                want = [PREDICT, *tok.encode(recs[i]["input"])][:63] + [1]
                assert list(row[: len(want)]) == want and not row[len(want) :].any()
                lengths.append(len(want))
            seen.extend(idx[idx >= 0])
        np.testing.assert_array_equal(b0["global_indices"], b1["global_indices"])
        np.testing.assert_array_equal(
            np.concatenate([b0["indices"], b1["indices"]]), b0["global_indices"]
        )
    assert sorted(seen) == list(range(37))
    assert lengths == sorted(lengths, reverse=True)  # longest first
    one_shot = list(
        pipeline.eval_batches(recs, tok, task="standard", batch_size=16, max_input_length=64)
    )
    assert sum(b["mask"].sum() for b in one_shot) == 37
    assert one_shot[0]["encoder_input_tokens"][0, 0] != PREDICT
    # Plain strings work too (already prefixed here): same tokens as the records + task.
    texts = ["predict: " + r["input"] for r in recs]
    from_texts = list(pipeline.eval_batches(texts, tok, batch_size=8, max_input_length=64))
    from_records = list(evs.batches(8))
    for a, b in zip(from_texts, from_records, strict=True):
        np.testing.assert_array_equal(a["encoder_input_tokens"], b["encoder_input_tokens"])
