"""Tests of the prepared-records builder (TFDS, ArrayRecord, no TensorFlow)."""

import os

import pytest

from distill_jax.data import builder
from distill_jax.errors import UserError


def splits(tag="a", n=5):
    return {
        "train": [
            {"input": f"q{i} {tag} é", "label": f"l{i}", "rationale": f"r{i}", "llm_label": "x"}
            for i in range(n)
        ],
        "valid": [],
        "test": [{"input": "t", "label": "y", "rationale": "z"}],
    }


class Counting:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self):
        self.calls += 1
        return self.fn()


def leftovers(root):
    return [p for p, _, _ in os.walk(root) if "incomplete" in os.path.basename(p)]


def test_prepare_once_then_reuse(tmp_path):
    fn = Counting(lambda: splits("a"))
    out = builder.prepare(fn, {"files": {"x": 1}}, tmp_path, name="cqa_palm_gt")
    assert fn.calls == 1
    assert {k: len(v) for k, v in out.items()} == {"train": 5, "valid": 0, "test": 1}
    assert list(out["train"]) == splits("a")["train"]  # order and optional fields kept
    assert out["train"][-1]["input"] == "q4 a é" and out["train"][1:3] == splits("a")["train"][1:3]
    assert out["test"][0] == {"input": "t", "label": "y", "rationale": "z"}
    with pytest.raises(IndexError):
        out["train"][5]
    again = builder.prepare(fn, {"files": {"x": 1}}, tmp_path, name="cqa_palm_gt")
    assert fn.calls == 1  # reused, records_fn not called
    assert list(again["train"]) == list(out["train"]) and len(again["valid"]) == 0
    path = builder.prepared_path(tmp_path, "cqa_palm_gt", {"files": {"x": 1}})
    assert path.is_dir() and any(p.name.endswith("-00001") for p in path.iterdir())


def test_changed_fingerprint_rebuilds(tmp_path):
    fn_a, fn_b = Counting(lambda: splits("a")), Counting(lambda: splits("b", n=3))
    builder.prepare(fn_a, {"sha": "1"}, tmp_path, name="d")
    out = builder.prepare(fn_b, {"sha": "2"}, tmp_path, name="d")
    assert fn_b.calls == 1 and len(out["train"]) == 3 and "b" in out["train"][0]["input"]
    old = builder.prepare(fn_a, {"sha": "1"}, tmp_path, name="d")  # old version still there
    assert fn_a.calls == 1 and len(old["train"]) == 5
    assert builder.fingerprint_hash({"sha": "1"}) != builder.fingerprint_hash({"sha": "2"})


def test_file_fingerprint_tracks_content(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.json").write_text("[1]")
    before = builder.file_fingerprint([raw, tmp_path / "missing.json"])
    assert before[str(tmp_path / "missing.json")] == "missing"
    assert before == builder.file_fingerprint([raw, tmp_path / "missing.json"])
    (raw / "a.json").write_text("[2]")  # same size, new content
    assert builder.file_fingerprint([raw]) != {k: v for k, v in before.items() if "raw" in k}


def test_failure_leaves_nothing_half_written(tmp_path):
    def broken():
        raise RuntimeError("parse error")

    with pytest.raises(RuntimeError, match="parse error"):
        builder.prepare(broken, {"v": 1}, tmp_path, name="d")
    assert not builder.prepared_path(tmp_path, "d", {"v": 1}).exists()
    assert leftovers(tmp_path) == []

    def half():  # fails while the split is being written
        def gen():
            yield {"input": "a", "label": "b", "rationale": "c"}
            raise KeyError("boom")

        return {"train": gen()}

    with pytest.raises(KeyError):
        builder.prepare(half, {"v": 1}, tmp_path, name="d")
    assert not builder.prepared_path(tmp_path, "d", {"v": 1}).exists()
    assert leftovers(tmp_path) == []
    out = builder.prepare(lambda: splits(), {"v": 1}, tmp_path, name="d")  # retry works
    assert len(out["train"]) == 5


def test_bad_records_and_names_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="split 'train' record 1"):
        builder.prepare(lambda: {"train": [{"a": "x"}, {"a": object()}]}, {}, tmp_path, name="d")
    with pytest.raises(UserError, match="dataset name"):
        builder.prepare(lambda: splits(), {}, tmp_path, name="bad/name")
    assert leftovers(tmp_path) == []


def test_trainer_keys_prepared_data_on_content_not_mtime(tmp_path):
    """An edit that keeps a raw file's size and mtime still gives a new prepared dir."""
    from distill_jax.train import setup
    from tests import fixtures
    from tests import launch_util as lu

    data_dir = fixtures.write_generic_fixture(tmp_path / "data")
    config = lu.tiny_config(data_dir)
    first = setup.load_records(config, tmp_path / "work")["test"][0]["input"]
    path = data_dir / "generic" / "generic_test.json"
    st = path.stat()
    text = path.read_text()
    path.write_text(text.replace(first, first[::-1], 1))  # same length, other content
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    second = setup.load_records(config, tmp_path / "work")["test"][0]["input"]
    assert second == first[::-1] != first
    assert len(list((tmp_path / "work" / "prepared").iterdir())) == 2
