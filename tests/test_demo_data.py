"""The bundled FHIR demo set (datasets/generic): reproducible, well formed, split as documented."""

from __future__ import annotations

import calendar
import datetime
import importlib.util
import itertools
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

DATA_DIR = pathlib.Path(__file__).resolve().parents[1] / "datasets" / "generic"
FIELDS = ["input", "label", "rationale"]
PREFIXED_DATE = re.compile(r"^(eq|gt|lt|ge|le)(\d{4})-(\d{2})-(\d{2})$")
MONTH_NUMBER = {name: i for i, name in enumerate(calendar.month_name) if name}


@pytest.fixture(scope="module")
def gen():
    """The generator script, imported from its path (datasets/ is not a package)."""
    spec = importlib.util.spec_from_file_location("generate_fhir", DATA_DIR / "generate_fhir.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["generate_fhir"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("generate_fhir", None)


@pytest.fixture(scope="module")
def data() -> dict[str, list[dict]]:
    """The committed records per split, parsed as JSON Lines."""
    out = {}
    for split in ("train", "valid", "test"):
        lines = (DATA_DIR / f"generic_{split}.json").read_text("utf-8").splitlines()
        out[split] = [json.loads(line) for line in lines]
    return out


def parse(label: str) -> tuple[str, list[tuple[str, str]]]:
    """'R?a=1&b=2' -> ('R', [('a', '1'), ('b', '2')])."""
    resource, query = label.split("?", 1)
    return resource, [tuple(pair.split("=", 1)) for pair in query.split("&")]


def combo_of(label: str) -> tuple[str, tuple[str, ...]]:
    resource, pairs = parse(label)
    return resource, tuple(sorted(name for name, _ in pairs))


def test_committed_files_equal_a_fresh_generation(gen, tmp_path):
    sizes = gen.write(tmp_path)
    assert sorted(sizes) == ["generic_test.json", "generic_train.json", "generic_valid.json"]
    for name in sizes:
        assert (tmp_path / name).read_bytes() == (DATA_DIR / name).read_bytes(), name


def test_check_reports_changed_and_missing_files(gen, tmp_path, capsys):
    for name in ("generic_train.json", "generic_test.json"):
        shutil.copy(DATA_DIR / name, tmp_path / name)
    path = tmp_path / "generic_test.json"
    path.write_bytes(path.read_bytes().replace(b"Patient?", b"Patient?_count=1&", 1))
    assert gen.main(["--check", "--out_dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "generic_valid.json" in err and "generic_test.json" in err
    assert "generic_train.json" not in err


def test_check_command_passes_under_another_hash_seed():
    # String hashing changes with PYTHONHASHSEED: the output must not depend on it.
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    cmd = [
        sys.executable,
        str(DATA_DIR / "generate_fhir.py"),
        "--check",
        "--out_dir",
        str(DATA_DIR),
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_sizes_and_fields(gen, data):
    assert {s: len(r) for s, r in data.items()} == gen.SIZES
    assert len(data["train"]) >= 5000 and len(data["valid"]) >= 500 and len(data["test"]) >= 500
    for split, records in data.items():
        for i, rec in enumerate(records):
            assert list(rec) == FIELDS, (split, i)
            assert all(isinstance(rec[f], str) and rec[f].strip() for f in FIELDS), (split, i)
        if split != "train":
            assert len({r["label"] for r in records}) == len(records), split
    inputs = [r["input"] for records in data.values() for r in records]
    assert len(set(inputs)) == len(inputs)
    assert sum((DATA_DIR / f"generic_{s}.json").stat().st_size for s in data) < 5_000_000


def test_held_out_labels_and_combinations_are_not_in_train(gen, data):
    splits = gen.split_combinations()
    train_labels = {r["label"] for r in data["train"]}
    train_combos = {combo_of(r["label"]) for r in data["train"]}
    assert train_combos == {(res, c) for res, cs in splits["train"].items() for c in cs}
    held_out = {}
    for split in ("valid", "test"):
        held = {(res, c) for res, combos in splits[split].items() for c in combos}
        held_out[split] = held
        assert len(held) >= 5 and not held & train_combos
        assert not {r["label"] for r in data[split]} & train_labels
        combos = [combo_of(r["label"]) for r in data[split]]
        assert set(combos) <= held | train_combos
        assert {c for c in combos[::2]} == held  # every other record uses a held-out set
        assert not set(combos[1::2]) & held
        for resource, combo in held:
            assert len(combo) >= 3
            for sub in itertools.combinations(combo, len(combo) - 1):  # learnable from parts
                if sub in gen.combinations(resource):  # not: a value without a code
                    assert (resource, sub) in train_combos, (resource, combo, sub)
            for res, train_combo in train_combos:  # never seen inside a bigger train set
                assert res != resource or not set(combo) < set(train_combo), (combo, train_combo)
    assert not held_out["valid"] & held_out["test"]


def test_labels_are_canonical_fhir_searches(gen, data):
    for rec in itertools.chain(*data.values()):
        resource, pairs = parse(rec["label"])
        names = [name for name, _ in pairs]
        assert names == sorted(set(names)), rec["label"]  # sorted by name, no repeats
        assert set(names) <= set(gen.RESOURCES[resource].cards), rec["label"]
        assert 1 <= len(pairs) <= gen.MAX_PARAMS
        for name, value in pairs:
            assert value and " " not in value and "&" not in value, rec["label"]
            if name in ("birthdate", "date", "onset-date", "authoredon"):
                match = PREFIXED_DATE.match(value)
                assert match, rec["label"]
                datetime.date(*map(int, match.groups()[1:]))  # a real calendar day
            elif name in ("subject", "patient"):
                assert re.fullmatch(r"Patient/[1-9]\d{0,3}", value), rec["label"]
            elif name in ("code", "vaccine-code"):
                assert re.fullmatch(r"\d[\d-]*", value), rec["label"]  # bare: WITH_SYSTEM off
            elif name == "value-quantity":
                assert re.fullmatch(r"(gt|lt|ge|le)\d+", value), rec["label"]


def test_label_values_come_from_the_input(gen, data):
    names = {}  # code -> the names it may be requested by
    for table in (gen.OBS_CODES, gen.CONDITION_CODES, gen.PROCEDURE_CODES, gen.DRUG_CODES,
                  gen.VACCINE_CODES):  # fmt: skip
        for entry in table:
            assert entry[0] not in names  # codes of different systems do not collide
            names[entry[0]] = entry[1]
    for rec in itertools.chain(*data.values()):
        text = rec["input"]
        for name, value in parse(rec["label"])[1]:
            if name in ("given", "family", "address-city"):
                assert re.search(rf"\b{value}\b", text), (name, rec)
            elif name in ("subject", "patient"):
                assert re.search(rf"(?<!\d){value.split('/')[1]}(?!\d)", text), (name, rec)
            elif name in ("code", "vaccine-code"):
                said = names[value]
                assert any(n.lower() in text.lower() for n in said), (name, rec)
            elif name == "value-quantity":
                assert re.search(rf"\b{value[2:]}\b", text), (name, rec)
            elif PREFIXED_DATE.match(value):
                assert value[2:6] in text, (name, rec)  # the year is copied


def test_date_conventions(data):
    months = "|".join(MONTH_NUMBER)
    rules = [  # (input pattern, label value built from the match)
        (r"(?<!or )(?<!no )\b(?:after|later than) (\d{4})\b(?!-)", lambda m: f"gt{m[1]}-12-31"),
        (r"(?<!or )\b(?:before|prior to) (\d{4})\b(?!-)", lambda m: f"lt{m[1]}-01-01"),
        (r"\bsince (\d{4})\b(?!-)", lambda m: f"ge{m[1]}-01-01"),
        (r"\bsince (" + months + r") (\d{4})", lambda m: f"ge{m[2]}-{MONTH_NUMBER[m[1]]:02d}-01"),
        (r"\bon (\d{4}-\d{2}-\d{2})", lambda m: f"eq{m[1]}"),
    ]
    hits = 0
    for rec in itertools.chain(*data.values()):
        for pattern, value in rules:
            for match in re.finditer(pattern, rec["input"]):
                assert "=" + value(match) in rec["label"], (pattern, rec)
                hits += 1
    assert hits > 500  # the rules did look at many records


def test_rationales_explain_every_parameter(data):
    words = []
    for rec in itertools.chain(*data.values()):
        resource, pairs = parse(rec["label"])
        rationale = rec["rationale"]
        assert f"the resource type is {resource}." in rationale, rec
        assert rationale.endswith(f"gives {rec['label']}."), rec
        for name, value in pairs:  # each parameter has its own step before the final answer
            assert f"{name}={value}" in rationale[: -len(rec["label"])], (name, rec)
        words.append(len(rationale.split()))
    assert min(words) >= 20 and max(words) <= 130
    assert 35 <= sum(words) / len(words) <= 80
