"""Dataset sources: per-dataset formatting, LLM output parsing, splits, generic files, errors."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import ml_collections
import pytest

from distill_jax import config_check
from distill_jax.data import generic, parsers, sources
from distill_jax.errors import UserError
from tests import fixtures
from tests.fixtures import EXAMPLES

COMBOS = [(n, llm) for n in fixtures.REFERENCE_NAMES for llm in sources.SPECS[n].llms]


def cfg(root: Path, name: str, llm: str | None = "palm", **kw) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(
        dict(
            name=name,
            dir=str(root),
            llm=llm,
            label_type="gt",
            subsample=1.0,
            train_file="",
            valid_file="",
            test_file="",
            skip_bad_records=False,
            max_input_length=1024,
            max_target_length=256,
            pack_input_length=0,
            pack_target_length=0,
            row_bucket=0,
        )
    )
    c.update(kw)
    return c


@pytest.fixture(scope="module")
def ref_root(tmp_path_factory) -> Path:
    return fixtures.write_reference_fixtures(tmp_path_factory.mktemp("ref"))


def expected(ex: fixtures.Example, llm: str) -> dict:
    rationale, llm_label = ex.palm_parsed if llm == "palm" else ex.gpt_parsed
    return {"input": ex.input, "label": ex.label, "rationale": rationale, "llm_label": llm_label}


def expected_splits(name: str, llm: str) -> dict[str, list[dict]]:
    if name == "asdiv":
        parts = {
            "train": EXAMPLES["svamp"]["train"] + EXAMPLES["asdiv"]["train"],
            "test": EXAMPLES["svamp"]["test"],
        }
    else:
        parts = EXAMPLES[name]
    return {s: [expected(e, llm) for e in exs] for s, exs in parts.items()}


def key(r: dict) -> str:
    return json.dumps(r, sort_keys=True)


# ---- reference datasets ---------------------------------------------------------------------


def test_reference_constants():
    # The reference's DatasetLoader constants (data_utils.py).
    got = {n: (s.batch_size, s.num_batches, s.has_valid) for n, s in sources.SPECS.items()}
    assert got == {
        "cqa": (1000, {"train": 10, "test": 2}, False),
        "svamp": (500, {"train": 2, "test": 1}, False),
        "asdiv": (1000, {"train": 3, "test": 1}, False),
        "esnli": (5500, {"train": 100, "valid": 2, "test": 2}, True),
        "anli1": (5000, {"train": 4, "valid": 1, "test": 1}, True),
    }
    assert fixtures.REFERENCE_BATCH_SIZES == {n: s.batch_size for n, s in sources.SPECS.items()}
    assert sources.SUPPORTED == {"cqa", "esnli", "anli1", "svamp", "asdiv", "generic"}


@pytest.mark.parametrize("name,llm", COMBOS)
def test_reference_records(ref_root, name, llm):
    got = sources.load_splits(cfg(ref_root, name, llm), seed=0)
    want = expected_splits(name, llm)
    assert got["test"] == want["test"]
    if sources.SPECS[name].has_valid:
        assert got["train"] == want["train"] and got["valid"] == want["valid"]
    else:  # 10% of train split off: together they are the training examples
        n = len(want["train"])
        assert (len(got["train"]), len(got["valid"])) == (n - -(-n // 10), -(-n // 10))
        assert sorted(map(key, got["train"] + got["valid"])) == sorted(map(key, want["train"]))


def test_exact_input_strings(ref_root):
    cqa = sources.load_splits(cfg(ref_root, "cqa"), 0)["test"][0]
    assert cqa["input"] == (
        "Where would you keep book 0 of test?\nAnswer Choices:\n(a) bank\n"
        "(b) library\n(c) shelf\n(d) drawer\n(e) garden"
    )
    assert cqa["label"] == "bank"
    esnli = sources.load_splits(cfg(ref_root, "esnli"), 0)["test"]
    assert esnli[0]["input"] == "A dog 0 runs in the test park.</s>An animal 0 moves."
    assert [r["label"] for r in esnli] == ["entailment", "neutral", "contradiction"]
    anli = sources.load_splits(cfg(ref_root, "anli1", "gpt"), 0)["valid"]
    assert [r["label"] for r in anli] == ["entailment", "neutral", "contradiction"]
    svamp = sources.load_splits(cfg(ref_root, "svamp"), 0)["test"][1]
    assert svamp["input"] == "Tom has 1 test apples and buys 2 more.\nHow many does he have?"
    assert svamp["label"] == "( 1.0 + 2.0 )"
    asdiv = sources.load_splits(cfg(ref_root, "asdiv"), 0)
    labels = {r["label"] for r in asdiv["train"] + asdiv["valid"]}
    assert {"2", "3", "4", "5"} <= labels  # ASDiv answers "k+2 (apples)" -> the number only
    assert asdiv["test"][0]["input"].startswith("Tom has 0 test apples")  # SVAMP's test


def test_valid_split_is_hf_seed0_and_deterministic(ref_root):
    a = sources.load_splits(cfg(ref_root, "cqa"), seed=0)
    b = sources.load_splits(cfg(ref_root, "cqa"), seed=5)  # the 10% split ignores the seed
    assert a == b
    # HF train_test_split(test_size=0.1, seed=0): default_rng(0).permutation(10) =
    # [4 6 2 7 3 5 9 0 8 1]; ceil(1.0) = 1 held out, the rest in permuted order.
    want = expected_splits("cqa", "palm")["train"]
    assert a["valid"] == [want[4]]
    assert a["train"] == [want[i] for i in (6, 2, 7, 3, 5, 9, 0, 8, 1)]


def test_subsample(ref_root):
    def train_of(seed, subsample=0.5):
        s = sources.load_splits(cfg(ref_root, "esnli", subsample=subsample), seed)
        return [r["input"] for r in s["train"]]

    assert train_of(3) == train_of(3)
    assert len(train_of(3)) == 5
    assert sorted(train_of(3)) != sorted(train_of(4))
    # default_rng(3).permutation(10) = [9 6 0 2 1 4 7 5 3 8]: 5 held out, the rest kept.
    inputs = [e.input for e in EXAMPLES["esnli"]["train"]]
    assert train_of(3) == [inputs[i] for i in (4, 7, 5, 3, 8)]
    assert len(train_of(3, 0.34)) == 3  # ceil(0.66 * 10) = 7 held out
    with pytest.raises(UserError, match="subsample"):
        config_check.check_data(cfg(ref_root, "esnli", subsample=0.0), 0)


def test_label_type_llm(ref_root, caplog):
    caplog.set_level(logging.INFO)
    gt = sources.load_splits(cfg(ref_root, "cqa"), 0)
    llm = sources.load_splits(cfg(ref_root, "cqa", label_type="llm"), 0)
    assert [r["label"] for r in llm["train"]] == [r["llm_label"] for r in gt["train"]]
    assert [r["gt_label"] for r in llm["train"]] == [r["label"] for r in gt["train"]]
    acc = sources.llm_label_accuracy(gt["train"], "cqa")
    assert acc < 1.0 and sources.llm_label_accuracy(llm["train"], "cqa") == acc
    assert any(r["label"] != r["llm_label"] for r in gt["train"])  # the fixture has wrong ones
    assert llm["valid"] == gt["valid"] and llm["test"] == gt["test"]  # gt labels kept there
    assert "LLM Train Acc" in caplog.text and "LLM Test Acc" in caplog.text
    with pytest.raises(UserError, match="label_type"):
        config_check.check_data(cfg(ref_root, "generic", None, label_type="llm"), 0)


def test_llm_label_accuracy(ref_root):
    test = sources.load_splits(cfg(ref_root, "cqa"), 0)["test"]
    want = sum(e.palm_parsed[1] == e.label for e in EXAMPLES["cqa"]["test"]) / 3
    assert sources.llm_label_accuracy(test, "cqa") == pytest.approx(want)
    # svamp/asdiv compare values: "(3 + 2)" equals "5" and "( 3.0 + 2.0 )".
    recs = [
        {"label": "5", "llm_label": "(3 + 2)"},
        {"label": "( 3.0 + 2.0 )", "llm_label": "(3 + 2)"},
        {"label": "5", "llm_label": " "},
        {"label": "5", "llm_label": "(3 - 2)"},
    ]
    assert sources.llm_label_accuracy(recs, "asdiv") == 0.5
    assert sources.llm_label_accuracy(recs, "cqa") == 0.0


def test_multi_file_llm_outputs_and_train_cut(tmp_path, monkeypatch):
    # Files of 4 outputs: file i holds examples [4i, 4i + 4) of the split.
    monkeypatch.setitem(
        sources.SPECS, "cqa", dataclasses.replace(sources.SPECS["cqa"], batch_size=4)
    )
    root = fixtures.write_reference_fixtures(tmp_path, ["cqa"], llm_batch_size=4)
    assert len(json.loads((root / "cqa/llm/train_CoT_2.json").read_text())) == 2
    got = sources.load_splits(cfg(root, "cqa"), 0)
    want = expected_splits("cqa", "palm")
    assert got["test"] == want["test"]
    assert sorted(map(key, got["train"] + got["valid"])) == sorted(map(key, want["train"]))
    # svamp: 2 files of 3 -> the reference keeps only the 6 training examples they cover.
    monkeypatch.setitem(
        sources.SPECS, "svamp", dataclasses.replace(sources.SPECS["svamp"], batch_size=3)
    )
    root = fixtures.write_reference_fixtures(tmp_path / "s", ["svamp"], llm_batch_size=3)
    got = sources.load_splits(cfg(root, "svamp"), 0)
    want = expected_splits("svamp", "palm")["train"][:6]
    assert sorted(map(key, got["train"] + got["valid"])) == sorted(map(key, want))


def test_svamp_from_source_json(tmp_path):
    problems = [
        {"Body": f"B{k}", "Question": f"Q{k}?", "Equation": f"( {k}.0 + 1.0 )", "Answer": k + 1.0}
        for k in range(803)
    ]
    fixtures._write_json(tmp_path / "svamp" / "SVAMP.json", problems)
    for split, n in (("train", 800), ("test", 3)):
        fixtures._write_json(
            tmp_path / "svamp" / "llm" / f"{split}_CoT_0.json",
            [f"r The answer is ({k})." for k in range(min(n, 500))],
        )
    fixtures._write_json(
        tmp_path / "svamp" / "llm" / "train_CoT_1.json", ["r The answer is (1)."] * 300
    )
    got = sources.load_splits(cfg(tmp_path, "svamp"), 0)
    # RandomState(0).permutation(803) starts [8 575 616 ...]: the first training example is 8.
    everything = got["train"] + got["valid"]
    assert len(everything) == 800 and len(got["test"]) == 3
    assert {
        "input": "B8\nQ8?",
        "label": "( 8.0 + 1.0 )",
        "rationale": "r",
        "llm_label": "(0)",
    } in everything


@pytest.mark.parametrize(
    "output,want",
    [
        ("R So the answer is (b) bank.", ("R", "bank")),
        ("R So the answer is (b) bank\nQ: x So the answer is", ("R", "bank")),
        ("R So the answer is nothing.", ("R", " ")),
    ],
)
def test_cqa_palm_parser(output, want):
    assert parsers.parse_cqa_palm(output) == want


def test_cqa_palm_unparsable_is_an_error(ref_root, tmp_path):
    for bad in ("no marker at all", "So the answer is (a) x. So the answer is (b) y."):
        with pytest.raises(parsers.UnparsableOutput):
            parsers.parse_cqa_palm(bad)
        assert parsers.parse_cqa_gpt(bad) == (" ", " ")  # GPT-NeoX falls back instead
    root = fixtures.write_reference_fixtures(tmp_path, ["cqa"])
    path = root / "cqa/llm/test_CoT_0.json"
    outs = json.loads(path.read_text())
    outs[1] = "garbled"
    path.write_text(json.dumps(outs))
    with pytest.raises(UserError, match=r"test_CoT_0\.json, output 1: cannot parse"):
        sources.load_splits(cfg(root, "cqa"), 0)


@pytest.mark.parametrize("name", fixtures.REFERENCE_NAMES)
def test_parsers_on_every_fixture_output(name):
    for split, examples in EXAMPLES[name].items():
        for e in examples:
            assert parsers.get_parser(name, "palm")(e.palm) == e.palm_parsed, (split, e.palm)
            if e.gpt is not None:
                assert parsers.get_parser(name, "gpt")(e.gpt) == e.gpt_parsed, (split, e.gpt)


def test_anli_gpt_fallback_order():
    assert parsers.parse_anli_gpt("a So the answer is b. So the answer is c. The answer is d.") == (
        "a So the answer is b. So the answer is c.",
        "d",
    )
    assert parsers.parse_anli_palm("x The answer is neutral.") == ("", "")


# ---- errors ---------------------------------------------------------------------------------


def test_missing_dataset_message(tmp_path):
    with pytest.raises(UserError) as e:
        sources.load_splits(cfg(tmp_path / "nowhere", "cqa"), 0)
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "cqa" / "cqa_train.json") in msg
    assert "datasets.zip" in msg and "distilling-step-by-step" in msg
    assert f"'{tmp_path / 'nowhere'}/'" in msg


def test_missing_llm_file_and_count_mismatch(tmp_path):
    root = fixtures.write_reference_fixtures(tmp_path, ["esnli"])
    (root / "gpt-neox/esnli/valid.json").unlink()
    with pytest.raises(UserError, match=r"gpt-neox/esnli/valid\.json: file not found"):
        sources.load_splits(cfg(root, "esnli", "gpt"), 0)
    path = root / "esnli/llm/test_CoT_0.json"
    path.write_text(json.dumps(json.loads(path.read_text())[:-1]))
    with pytest.raises(UserError, match="2 palm outputs .* but 3 test examples"):
        sources.load_splits(cfg(root, "esnli"), 0)
    path.write_text(json.dumps(["a", 5, "c"]))
    with pytest.raises(UserError, match=r"test_CoT_0\.json, output 1: expected a string"):
        sources.load_splits(cfg(root, "esnli"), 0)


@pytest.mark.parametrize(
    "name,llm,match",
    [
        ("squad", "palm", "not supported; use one of anli1, asdiv, cqa, esnli, generic, svamp"),
        ("asdiv", "gpt", "not available for asdiv"),
        ("cqa", None, "not valid for cqa"),
        ("cqa", "generic", "not valid for cqa"),
        ("generic", "palm", "not valid for generic"),
    ],
)
def test_bad_names(name, llm, match):
    with pytest.raises(UserError, match=match):
        config_check.check_data(cfg(Path("datasets"), name, llm), 0)


@pytest.mark.parametrize(
    "name,row,field",
    [
        ("cqa", {"id": "x", "question": "q", "answer": "a"}, "choices"),
        ("cqa", {"question": "q", "choices": ["a"] * 5, "answer": 3}, "answer"),
        ("esnli", {"premise": "p", "hypothesis": "h", "label": 7}, "label"),
        ("anli1", {"premise": "p", "label": 1}, "hypothesis"),
        ("asdiv", {"Body": "b", "Question": "q"}, "Answer"),
    ],
)
def test_bad_reference_rows(tmp_path, name, row, field):
    root = fixtures.write_reference_fixtures(tmp_path, [name])
    path = root / name / f"{name}_train.json"
    lines = path.read_text().splitlines()
    lines[1] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=rf"{name}_train\.json, line 2 \(record 2\): .*'{field}'"):
        sources.load_splits(cfg(root, name), 0)


# ---- generic --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "array", "concat"])
def test_generic_formats(tmp_path, fmt):
    root = fixtures.write_generic_fixture(tmp_path, fmt)
    got = sources.load_splits(cfg(root, "generic", "generic"), 0)
    want = fixtures.generic_records(34)
    assert got["train"] == [{**r, "llm_label": r["label"]} for r in want[:24]]
    assert [len(got[s]) for s in ("valid", "test")] == [4, 6]
    assert got["test"][-1]["input"] == want[-1]["input"]


def test_generic_split_and_custom_files(tmp_path):
    root = fixtures.write_generic_fixture(tmp_path, n_valid=0)
    got = sources.load_splits(cfg(root, "generic", None), 0)
    assert (len(got["train"]), len(got["valid"])) == (21, 3)  # ceil(2.4) = 3 split off
    assert all("llm_label" not in r for s in got.values() for r in s)
    other = fixtures.write_generic_file(tmp_path / "x.json", fixtures.generic_records(5), "array")
    got = sources.load_splits(cfg(root, "generic", None, test_file=str(other)), 0)
    assert got["test"] == fixtures.generic_records(5)
    # A custom train file never picks up the default directory's valid file.
    fixtures.write_generic_fixture(tmp_path / "d", n_valid=4)
    c = cfg(tmp_path / "d", "generic", None, train_file=str(other))
    assert len(sources.load_splits(c, 0)["valid"]) == 1
    with pytest.raises(UserError, match=r"valid file not found.*data\.valid_file"):
        sources.load_splits(cfg(root, "generic", None, valid_file=str(tmp_path / "no")), 0)
    with pytest.raises(UserError, match="training split of generic is empty"):
        one = fixtures.write_generic_file(tmp_path / "one.json", fixtures.generic_records(1))
        sources.load_splits(cfg(root, "generic", None, train_file=str(one)), 0)


GOOD = json.dumps({"input": "i", "label": "l", "rationale": "r"})


@pytest.mark.parametrize(
    "text,where",
    [
        (
            GOOD + '\n{"input": "i", "rationale": "r"}\n',
            r"line 2 \(record 2\): missing field 'label'",
        ),
        (
            GOOD + '\n\n{"input": "i", "label": 5, "rationale": "r"}\n',
            r"line 3 \(record 2\): field 'label' must be a string, got a JSON number \(write",
        ),
        (
            "[\n" + GOOD + ',\n {"input": " ", "label": "l", "rationale": "r"}\n]',
            r"line 3 \(record 2\): field 'input' is empty",
        ),
        (GOOD + "\n[1, 2]\n", r"line 2 \(record 2\): the record is a JSON array, expected an obj"),
        (
            '{\n  "input": "i",\n  "label": "l",\n  "rationale": "r"\n}\n'
            '{\n  "input": "i",\n  "lab',
            r"line 8: invalid JSON: Unterminated string starting at column 3 .*truncated",
        ),
        (GOOD + "\n" + GOOD[:-3] + "\n" + GOOD + "\n", r"line 2: invalid JSON"),
        ("[" + GOOD + ",\n" + GOOD, r"line 2: .*truncated"),
    ],
)
def test_generic_errors_name_file_line_field(tmp_path, text, where):
    path = tmp_path / "g.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=rf"{path}, {where}"):
        generic.read_generic_file(path)


def test_generic_not_utf8_and_empty(tmp_path):
    path = tmp_path / "g.json"
    path.write_bytes((GOOD + "\n").encode() + b'{"input": "caf\xe9", "label": "l"}\n')
    with pytest.raises(UserError, match=rf"{path}, line 2: not valid UTF-8 \(byte 0xe9"):
        generic.read_generic_file(path, skip_bad_records=True)
    path.write_text("  \n")
    with pytest.raises(UserError, match="no valid records"):
        generic.read_generic_file(path)


def test_skip_bad_records(tmp_path, caplog):
    lines = [
        GOOD,
        '{"input": "i"}',
        GOOD,
        '{"input": "i", "label": 3, "rationale": "r"}',
        "7",
        '{"broken',
        GOOD,
    ]
    path = tmp_path / "g.json"
    path.write_text("\n".join(lines) + "\n")
    caplog.set_level(logging.WARNING)
    records, skipped = generic.read_generic_file(path, skip_bad_records=True)
    assert (len(records), skipped) == (3, 4)
    assert f"{path}: skipped 4 bad record(s)" in caplog.text
    # Pretty-printed objects: a broken one is skipped as one record, the next is read.
    recs = fixtures.generic_records(3)
    text = "\n".join(json.dumps(r, indent=4) for r in recs)
    broken = text.replace('"label": "sodium",', '"label": "sodium"', 1)
    path.write_text(broken)
    records, skipped = generic.read_generic_file(path, skip_bad_records=True)
    assert (records, skipped) == ([recs[0], recs[2]], 1)
    with pytest.raises(
        UserError, match="line 9: invalid JSON: Expecting .,. delimiter.*skip_bad_records=True"
    ):
        generic.read_generic_file(path)
    # Through load_splits.
    root = fixtures.write_generic_fixture(tmp_path / "r", n_valid=0)
    with (root / "generic/generic_test.json").open("a") as f:
        f.write('{"input": 1}\n')
    with pytest.raises(UserError, match=r"generic_test\.json, line 7 \(record 7\)"):
        sources.load_splits(cfg(root, "generic", "generic"), 0)
    got = sources.load_splits(cfg(root, "generic", "generic", skip_bad_records=True), 0)
    assert len(got["test"]) == 6


def test_raw_files(tmp_path):
    root = fixtures.write_reference_fixtures(tmp_path, ["esnli"])
    files = sources.raw_files(cfg(root, "esnli"))
    assert len(files) == 3 + 100 + 2 + 2  # data files + PaLM files of train, valid, test
    assert str(root / "esnli/llm/train_CoT_99.json") in files
    assert all(Path(f).is_file() for f in files if "_CoT_" not in f or "_CoT_0" in f)
    gpt = sources.raw_files(cfg(root, "asdiv", "palm"))
    assert str(root / "asdiv/asdiv_train.json") in gpt and str(root / "svamp/SVAMP.json") in gpt
    assert str(root / "gpt-neox/cqa/test.json") in sources.raw_files(cfg(root, "cqa", "gpt"))
    gen = sources.raw_files(cfg(root, "generic", None, train_file="a.json"))
    assert gen == sorted(
        [
            "a.json",
            str(root / "generic/generic_test.json"),
            str(root / "generic/generic_valid.json"),
        ]
    )
