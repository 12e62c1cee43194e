"""Raw dataset files -> records `{input, label, rationale[, llm_label]}` per split.

Reproduces the reference's `data_utils.py` + the data part of `run.py`: the JSON Lines files
`<data.dir>/<name>/<name>_{split}.json` formatted per dataset; the teacher's outputs (PaLM
`<name>/llm/{split}_CoT_{i}.json`, file i holding examples [i * batch_size, (i + 1) *
batch_size), or GPT-NeoX `gpt-neox/<name>/{split}.json`) parsed by `parsers.py`; the training
split cut to the LLM batches, `data.subsample`, a 10% validation split (seed 0) where the
dataset has none, and `data.label_type='llm'`. The random splits follow HF
`Dataset.train_test_split` (`default_rng(seed).permutation(n)`, the first `ceil(test_size * n)`
held out), so the same seed gives the reference's examples.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from distill_jax import config_defaults, metrics
from distill_jax.data import generic, parsers
from distill_jax.data.json_records import iter_records, read_utf8, type_name
from distill_jax.errors import UserError

SUPPORTED = frozenset(config_defaults.DATASETS)
NLI_SEPARATOR = "</s>"  # the reference joins premise and hypothesis with T5's eos_token text
NLI_LABELS = ("entailment", "neutral", "contradiction")
SPLITS = ("train", "valid", "test")
DOWNLOAD_HINT = (
    "Download datasets.zip from the distilling-step-by-step repository "
    "(https://github.com/google-research/distilling-step-by-step) and unzip it into '{dir}/'."
)


@dataclasses.dataclass(frozen=True)
class Spec:
    """The reference's per-dataset constants (its DatasetLoader subclasses)."""

    batch_size: int  # examples per PaLM output file
    num_batches: dict[str, int]  # PaLM files per split (`{split}_batch_idxs`)
    has_valid: bool  # ships a validation split; otherwise 10% of train is split off
    llms: tuple[str, ...]  # teachers with outputs and a parser


SPECS: dict[str, Spec] = {
    "cqa": Spec(1000, {"train": 10, "test": 2}, False, ("palm", "gpt")),
    "svamp": Spec(500, {"train": 2, "test": 1}, False, ("palm", "gpt")),
    "asdiv": Spec(1000, {"train": 3, "test": 1}, False, ("palm",)),
    "esnli": Spec(5500, {"train": 100, "valid": 2, "test": 2}, True, ("palm", "gpt")),
    "anli1": Spec(5000, {"train": 4, "valid": 1, "test": 1}, True, ("palm", "gpt")),
}


class _BadRow(Exception):
    """A row of a reference file lacks a field or has a wrong-typed one."""


def _text(row: dict, field: str) -> str:
    if field not in row:
        raise _BadRow(f"missing field '{field}'")
    if not isinstance(row[field], str):
        raise _BadRow(f"field '{field}' must be a string, got a JSON {type_name(row[field])}")
    return row[field]


def _format_cqa(row: dict) -> tuple[str, str]:
    c = row.get("choices")
    if not (isinstance(c, list) and len(c) >= 5 and all(isinstance(x, str) for x in c[:5])):
        raise _BadRow("field 'choices' must be a list of 5 strings")
    question = _text(row, "question")
    choices = "".join(f"\n({x}) {choice}" for x, choice in zip("abcde", c[:5], strict=True))
    return f"{question}\nAnswer Choices:{choices}", _text(row, "answer")


def _format_nli(row: dict) -> tuple[str, str]:
    label = row.get("label")
    if type(label) is int and 0 <= label < len(NLI_LABELS):
        label = NLI_LABELS[label]
    elif label not in NLI_LABELS:
        raise _BadRow(
            f"field 'label' must be 0, 1 or 2 (or {', '.join(NLI_LABELS)}), got {json.dumps(label)}"
        )
    return NLI_SEPARATOR.join([_text(row, "premise"), _text(row, "hypothesis")]), label


def _format_svamp(row: dict) -> tuple[str, str]:
    return _text(row, "input"), _text(row, "label")


def _format_asdiv(row: dict) -> tuple[str, str]:
    # The answer's number only: "9 (apples)" -> "9".
    return _text(row, "Body") + "\n" + _text(row, "Question"), _text(row, "Answer").split(" ")[0]


_FORMATTERS = {
    "cqa": _format_cqa,
    "esnli": _format_nli,
    "anli1": _format_nli,
    "svamp": _format_svamp,
    "asdiv": _format_asdiv,
}


def _missing(path: Path, data_dir: Path) -> UserError:
    return UserError(f"{path}: file not found. " + DOWNLOAD_HINT.format(dir=data_dir))


def _svamp_from_source(path: Path) -> dict[str, list[dict]]:
    """The reference's `SVAMPDatasetLoader.load_from_source`: SVAMP.json -> 800 train / rest."""
    data = json.loads(read_utf8(path))
    rows = []
    for k, ex in enumerate(data):
        try:
            text = f"{_text(ex, 'Body')}\n{_text(ex, 'Question')}"
            rows.append({"input": text, "label": _text(ex, "Equation")})
        except (_BadRow, TypeError) as e:
            raise UserError(f"{path}, problem {k}: {e}") from None
    idxs = np.random.RandomState(seed=0).permutation(len(rows))
    return {"train": [rows[i] for i in idxs[:800]], "test": [rows[i] for i in idxs[800:]]}


def _load_json_list(path: Path) -> list[str]:
    try:
        outputs = json.loads(read_utf8(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}, line {e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(outputs, list):
        raise UserError(
            f"{path}: expected a JSON list of output strings, got a JSON {type_name(outputs)}"
        )
    for k, out in enumerate(outputs):
        if not isinstance(out, str):
            raise UserError(f"{path}, output {k}: expected a string, got a JSON {type_name(out)}")
    return outputs


def _llm_paths(data_dir: Path, name: str, split: str, llm: str) -> list[Path]:
    """The teacher's output files of a split: GPT-NeoX's one file or all PaLM batch files."""
    if llm == "gpt":
        return [data_dir / "gpt-neox" / name / f"{split}.json"]
    num_batches = SPECS[name].num_batches[split]
    return [data_dir / name / "llm" / f"{split}_CoT_{i}.json" for i in range(num_batches)]


def _llm_outputs(data_dir: Path, name: str, split: str, llm: str, n: int) -> list[tuple]:
    """(path, index in file, output) for the `n` examples of `split`, in example order."""
    paths = _llm_paths(data_dir, name, split, llm)
    # The files that hold the n examples must exist; the reference reads all there are.
    needed = 1 if llm == "gpt" else min(math.ceil(n / SPECS[name].batch_size), len(paths))
    for path in paths[:needed]:
        if not path.is_file():
            raise _missing(path, data_dir)
    paths = [path for path in paths if path.is_file()]
    outputs = [(p, k, out) for p in paths for k, out in enumerate(_load_json_list(p))]
    if len(outputs) != n:
        raise UserError(
            f"{len(outputs)} {llm} outputs in {', '.join(map(str, paths))} but {n} {split} "
            f"examples in {data_dir / name}: the outputs must line up one per example"
        )
    return outputs


def _parts(name: str) -> dict[str, list[tuple[str, str]]]:
    """The (dataset, split) files of each split of `name`; ASDiv is the reference's SVAMP
    augmentation: train = SVAMP's + ASDiv's, test = SVAMP's."""
    if name == "asdiv":
        return {"train": [("svamp", "train"), ("asdiv", "train")], "test": [("svamp", "test")]}
    return {split: [(name, split)] for split in SPECS[name].num_batches}


def _gold_part(data_dir: Path, name: str, split: str) -> list[dict]:
    """Formatted `{input, label}` rows of one split file (SVAMP: from SVAMP.json if absent)."""
    path = data_dir / name / f"{name}_{split}.json"
    source = data_dir / name / "SVAMP.json"
    if name == "svamp" and not path.is_file() and source.is_file():
        return _svamp_from_source(source)[split]
    if not path.is_file():
        raise _missing(path, data_dir)

    def row(value: Any) -> dict | str:  # the formatted row, or what is wrong with the record
        if not isinstance(value, dict):
            return f"the record is a JSON {type_name(value)}, expected an object"
        try:
            text, label = _FORMATTERS[name](value)
        except _BadRow as e:
            return str(e)
        return {"input": text, "label": label}

    return [r for _, _, r in iter_records(path, row)]


def _load_part(data_dir: Path, name: str, split: str, llm: str) -> list[dict]:
    """Records of one dataset's split, with the LLM's rationale and label."""
    rows = _gold_part(data_dir, name, split)
    if not rows:
        raise UserError(f"{data_dir / name / f'{name}_{split}.json'}: no records")
    if split == "train":  # the reference keeps the examples its LLM batches cover
        spec = SPECS[name]
        rows = rows[: spec.batch_size * spec.num_batches["train"]]
    parse = parsers.get_parser(name, llm)
    for row, (out_path, k, output) in zip(
        rows, _llm_outputs(data_dir, name, split, llm, len(rows)), strict=True
    ):
        try:
            row["rationale"], row["llm_label"] = parse(output)
        except parsers.UnparsableOutput as e:
            raise UserError(f"{out_path}, output {k}: cannot parse the {llm} output: {e}") from None
    return rows


def _load_generic(data_cfg: Any, llm: str | None) -> dict[str, list[dict]]:
    skip = bool(data_cfg.skip_bad_records)
    splits = {}
    for split, path in generic.generic_paths(data_cfg).items():
        if path is not None:
            splits[split], _ = generic.read_generic_file(path, skip)
    fork_files = []
    for split, records in splits.items():
        if llm is None:  # no teacher: the files' llm_label (if any) is not used
            for r in records:
                r.pop("llm_label", None)
        elif "llm_label" not in records[0]:  # a file has it on every record or on none
            fork_files.append(split)  # the fork's meaning: the file's label is the LLM's
            for r in records:
                r["llm_label"] = r["label"]
    if fork_files:
        logging.info(
            "generic %s: records without 'llm_label' are read as the healthcare fork's: "
            "their 'label' is the LLM's",
            "/".join(fork_files),
        )
    return splits


def train_test_split(records: list, test_size: float, seed: int) -> tuple[list, list]:
    """(kept, held_out) as HF `Dataset.train_test_split(test_size=..., seed=...)` splits."""
    n = len(records)
    n_test = math.ceil(test_size * n)
    perm = np.random.default_rng(seed).permutation(n)
    return [records[i] for i in perm[n_test:]], [records[i] for i in perm[:n_test]]


def llm_label_accuracy(records: list[dict], dataset_name: str) -> float:
    """Accuracy of the LLM's labels against the ground truth (`gt_label` where
    `label_type='llm'` replaced `label`, else `label`; equations for svamp/asdiv)."""
    if any("llm_label" not in r for r in records):
        raise ValueError("records have no 'llm_label' (data.llm is not set)")
    return metrics.accuracy(
        [r["llm_label"] for r in records],
        [r.get("gt_label", r["label"]) for r in records],
        dataset_name,
    )


def raw_files(data_cfg: Any) -> list[str]:
    """Every raw file `load_splits(data_cfg, ...)` may read, existing or not (the key of the
    prepared records, `builder.file_fingerprint`)."""
    name, llm, data_dir = data_cfg.name, teacher(data_cfg), Path(data_cfg.dir)
    if name == "generic":
        out = [p for p in generic.generic_paths(data_cfg, check=False).values() if p is not None]
        out.append(data_dir / "generic" / "generic_valid.json")  # if it appears, splits change
        return sorted({str(p) for p in out})
    out = []
    for part, split in (p for parts in _parts(name).values() for p in parts):
        out.append(data_dir / part / f"{part}_{split}.json")
        if part == "svamp":
            out.append(data_dir / part / "SVAMP.json")
        out += _llm_paths(data_dir, part, split, llm)
    return sorted({str(p) for p in out})


def teacher(data_cfg: Any) -> str | None:
    """`data.llm`, with '' / 'none' read as None (no teacher)."""
    return None if data_cfg.llm in ("", "none", "None") else data_cfg.llm


def load_splits(data_cfg: Any, seed: int) -> dict[str, list[dict]]:
    """Records per split ('train', 'valid', 'test') for `config.data`, as the reference builds
    them: `{input, label, rationale}` plus `llm_label` where the LLM's label exists; with
    `label_type='llm'` training records are labelled `llm_label` and keep `gt_label`.
    Reference datasets need `data.llm` 'palm' or 'gpt'; `generic` takes 'generic' (the file's
    label is also `llm_label`) or None."""
    # The fields are checked by distill_jax/config_check.py.
    name, llm, subsample = data_cfg.name, teacher(data_cfg), float(data_cfg.subsample)
    if name == "generic":
        splits = _load_generic(data_cfg, llm)
    else:  # each split: the rows of its parts, in order
        splits = {
            split: [r for part, s in parts for r in _load_part(Path(data_cfg.dir), part, s, llm)]
            for split, parts in _parts(name).items()
        }
    if subsample < 1.0:  # the reference: train_test_split(test_size=1 - subsample, seed=run)
        splits["train"], _ = train_test_split(splits["train"], 1.0 - subsample, int(seed))
    if "valid" not in splits:  # the reference: train_test_split(test_size=0.1, seed=0)
        splits["train"], splits["valid"] = train_test_split(splits["train"], 0.1, 0)
    if not splits["train"]:
        raise UserError(
            f"the training split of {name} is empty after data.subsample={subsample} and the "
            "10% validation split: use more training examples (or set data.valid_file)"
        )
    if data_cfg.label_type == "llm":
        for split in ("train", "test"):
            acc = llm_label_accuracy(splits[split], name)
            logging.info("LLM %s Acc: %.4f", split.capitalize(), acc)
        # As the reference: only the training labels are replaced; `gt_label` keeps the truth.
        splits["train"] = [
            {**r, "label": r["llm_label"], "gt_label": r["label"]} for r in splits["train"]
        ]
    return {split: splits[split] for split in SPLITS}


def gold_rows(data_cfg: Any, split: str) -> list[dict]:
    """`{input, label}` of a reference dataset's `split`, formatted as for training, without
    any LLM output (what `--mode=teach` asks a teacher about when no --input is given)."""
    name = data_cfg.name
    if name not in SPECS:
        raise UserError(f"data.name={name!r} has no split files of the reference layout")
    parts = _parts(name)
    if split not in parts:
        raise UserError(
            f"{name} has no {split} split (it has {', '.join(parts)}); set teacher.split"
        )
    return [row for part, s in parts[split] for row in _gold_part(Path(data_cfg.dir), part, s)]
