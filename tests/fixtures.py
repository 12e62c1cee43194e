"""Small dataset files in the reference layout, for tests of every stage that reads data.

`write_reference_fixtures(root)` writes, for each reference dataset, `<root>/<name>/<name>_
{train,valid,test}.json` (JSON Lines, the reference's raw fields), the PaLM outputs
`<root>/<name>/llm/{split}_CoT_{i}.json` and the GPT-NeoX outputs
`<root>/gpt-neox/<name>/{split}.json`, and returns `root` (use it as `config.data.dir`).
`write_generic_fixture(root)` does the same for the generic format.

`EXAMPLES[name][split]` lists what was written and what loading must give: each Example holds
the raw row, the expected record input and label, and each LLM's output with the expected
(rationale, label) written out by hand. The LLM outputs exercise the parsers' normal branch
(most examples, some with a wrong answer) and each fallback branch.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

REFERENCE_NAMES = ("cqa", "esnli", "anli1", "svamp", "asdiv")
# Examples per split; `valid` only for the datasets that ship one (esnli, anli1).
SIZES = {"train": 10, "valid": 3, "test": 3}
NLI = ("entailment", "neutral", "contradiction")
# The reference's PaLM examples per output file (its DatasetLoader batch sizes).
REFERENCE_BATCH_SIZES = {"cqa": 1000, "svamp": 500, "asdiv": 1000, "esnli": 5500, "anli1": 5000}


@dataclasses.dataclass(frozen=True)
class Example:
    row: dict  # the raw row as written to <name>_<split>.json
    input: str  # the record's expected input
    label: str  # the record's expected ground-truth label
    palm: str  # PaLM output
    palm_parsed: tuple[str, str]  # expected (rationale, llm_label) from it
    gpt: str | None = None  # GPT-NeoX output (None: the reference has none, i.e. ASDiv)
    gpt_parsed: tuple[str, str] | None = None


def _cqa(split: str, k: int) -> Example:
    choices = ["bank", "library", "shelf", "drawer", "garden"]
    answer = choices[k % 5]
    guess = k % 5 if k % 4 else (k + 1) % 5  # every 4th answer is wrong
    g_text, g_letter = choices[guess], "abcde"[guess]
    question = f"Where would you keep book {k} of {split}?"
    row = {
        "id": f"{split}{k}",
        "question": question,
        "choices": choices,
        "answer": answer,
        "abstractive_explanation": "x",
        "extractive_explanation": "y",
    }
    text = f"{question}\nAnswer Choices:\n(a) bank\n(b) library\n(c) shelf\n(d) drawer\n(e) garden"
    rationale = f"Book {k} goes in a {g_text}."
    palm, palm_parsed = (
        f"{rationale} So the answer is ({g_letter}) {g_text}.\n\nQ: next",
        (rationale, g_text),
    )
    gpt, gpt_parsed = f"  {rationale} So the answer is ({g_letter}) {g_text}.", (rationale, g_text)
    if k == 3:  # no "(x)" choice mark: label ' '
        palm, palm_parsed = f"{rationale} So the answer is {g_text}.", (rationale, " ")
        gpt, gpt_parsed = f"  {rationale} The answer is ({g_letter}) {g_text}.", (" ", " ")
    elif k == 5:  # only the mark and a period: the period is dropped, label ''
        palm, palm_parsed = f"{rationale} So the answer is ({g_letter}).", (rationale, "")
        gpt, gpt_parsed = f" {rationale} So the answer is ({g_letter})", (rationale, " ")
    return Example(row, text, answer, palm, palm_parsed, gpt, gpt_parsed)


def _nli(name: str, split: str, k: int) -> Example:
    label = NLI[k % 3]
    guess = NLI[(k + (k % 4 == 0)) % 3]  # every 4th answer is wrong
    premise, hypothesis = f"A dog {k} runs in the {split} park.", f"An animal {k} moves."
    rationale = f"Running dog {k} implies a moving animal."
    if name == "esnli":
        row = {
            "premise": premise,
            "hypothesis": hypothesis,
            "label": k % 3,
            "explanation_1": "e1",
            "explanation_2": "",
            "explanation_3": "",
        }
        palm = f"{rationale}\nAnswer: {guess}\n\nPremise: another one"
        palm_parsed = (rationale, guess)
        gpt, gpt_parsed = f"   {rationale}\nAnswer: {guess}", (rationale, guess)
        if k == 2:  # "Answer:" without the space: rationale found, label ' '
            palm, palm_parsed = f"{rationale}\nAnswer:{guess}", (rationale, " ")
            gpt, gpt_parsed = f"  {rationale} so {guess}", (f"{rationale} so {guess}", " ")
    else:
        row = {
            "uid": f"u{k}",
            "premise": premise,
            "hypothesis": hypothesis,
            "label": k % 3,
            "reason": "",
        }
        palm = f"{rationale} So the answer is {guess}.\n\nPremise: another one"
        palm_parsed = (rationale, guess)
        gpt, gpt_parsed = f"  {rationale} The answer is {guess}.", (rationale, guess)
        if k == 2:  # no marker: ('', '')
            palm, palm_parsed = f"{rationale} Hence {guess}.", ("", "")
            gpt, gpt_parsed = f"{rationale} Hence {guess}.\nPremise: x", ("", "")
        elif k == 4:  # no final period: the reference still drops the last character
            palm, palm_parsed = f"{rationale} So the answer is {guess}", (rationale, guess[:-1])
    return Example(row, f"{premise}</s>{hypothesis}", label, palm, palm_parsed, gpt, gpt_parsed)


def _math(name: str, split: str, k: int) -> Example:
    body, question = f"Tom has {k} {split} apples and buys 2 more.", "How many does he have?"
    eq = f"( {k}.0 + 2.0 )"
    guess = f"({k} + 2)" if k % 4 else f"({k} - 2)"  # every 4th answer is wrong
    rationale = f"Tom has {k} apples and buys 2."
    if name == "svamp":
        row = {"input": f"{body}\n{question}", "label": eq}
    else:
        row = {
            "Body": body,
            "Question": question,
            "Formula": f"{k}+2={k + 2}",
            "Answer": f"{k + 2} (apples)",
        }
    label = eq if name == "svamp" else str(k + 2)
    palm = f"{rationale} The answer is {guess}.\n\nQ: next question"
    palm_parsed = (rationale, guess)
    gpt, gpt_parsed = f"\n {rationale} The answer is {guess}.", (rationale, guess)
    if k == 1:  # no parenthesised equation: label ' '
        palm, palm_parsed = f"{rationale} The answer is {k + 2}.", (rationale, " ")
        gpt, gpt_parsed = f" {rationale} So {k + 2}.", (" ", " ")
    elif k == 2:  # the marker twice: (' ', ' ')
        palm = f"{rationale} The answer is 4. The answer is {guess}."
        palm_parsed = (" ", " ")
    elif k == 6:  # greedy parentheses: from the first '(' to the last ')'
        palm = f"{rationale} The answer is ((6 + 2) * 1) (apples)."
        palm_parsed = (rationale, "((6 + 2) * 1) (apples)")
    if name == "asdiv":
        gpt = gpt_parsed = None
    return Example(row, f"{body}\n{question}", label, palm, palm_parsed, gpt, gpt_parsed)


def _build(name: str, split: str, k: int) -> Example:
    if name == "cqa":
        return _cqa(split, k)
    if name in ("esnli", "anli1"):
        return _nli(name, split, k)
    return _math(name, split, k)


def _splits(name: str) -> dict[str, int]:
    if name in ("esnli", "anli1"):
        return dict(SIZES)
    if name == "asdiv":  # ASDiv only adds training examples; its test file is unused
        return {"train": 4, "test": 2}
    return {"train": SIZES["train"], "test": SIZES["test"]}


EXAMPLES: dict[str, dict[str, list[Example]]] = {
    name: {split: [_build(name, split, k) for k in range(n)] for split, n in _splits(name).items()}
    for name in REFERENCE_NAMES
}


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1), encoding="utf-8")


def write_jsonl(path: Path, rows: Iterable[dict]) -> Path:
    """Writes `rows` as JSON Lines (the reference's `Dataset.to_json` layout)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_reference_fixtures(
    root: Path, names: Sequence[str] = REFERENCE_NAMES, llm_batch_size: int | None = None
) -> Path:
    """Writes the reference layout for `names` under `root` and returns `root`.

    PaLM outputs are split into files of `llm_batch_size` examples (default: the reference's
    batch size per dataset, i.e. one file for these small splits). `asdiv` also writes `svamp`,
    whose files it reads.
    """
    root = Path(root)
    names = list(names) + (["svamp"] if "asdiv" in names and "svamp" not in names else [])
    for name in names:
        bs = llm_batch_size or REFERENCE_BATCH_SIZES[name]
        for split, examples in EXAMPLES[name].items():
            write_jsonl(root / name / f"{name}_{split}.json", [e.row for e in examples])
            outputs = [e.palm for e in examples]
            for i in range(0, len(outputs), bs):
                _write_json(
                    root / name / "llm" / f"{split}_CoT_{i // bs}.json", outputs[i : i + bs]
                )
            if examples[0].gpt is not None:
                _write_json(root / "gpt-neox" / name / f"{split}.json", [e.gpt for e in examples])
    return root


# ---- generic ---------------------------------------------------------------------------------

TESTS = ("glucose", "sodium", "potassium", "calcium", "ferritin", "lipase")


def generic_records(n: int, offset: int = 0) -> list[dict]:
    """`n` learnable generic records: the label is the lab test named in the input."""
    out = []
    for k in range(offset, offset + n):
        test = TESTS[k % len(TESTS)]
        out.append(
            {
                "input": f"Patient {k}: the doctor orders a {test} level. Which lab test?",
                "label": test,
                "rationale": f"The order names a {test} level, so the test is {test}.",
            }
        )
    return out


def write_generic_file(path: Path, records: Sequence[dict], fmt: str = "jsonl") -> Path:
    """Writes records as 'jsonl', 'array' (a JSON array) or 'concat' (pretty-printed objects
    back to back, like the healthcare fork's files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        text = "".join(json.dumps(r) + "\n" for r in records)
    elif fmt == "array":
        text = json.dumps(list(records), indent=2) + "\n"
    elif fmt == "concat":
        text = "\n".join(json.dumps(r, indent=4) for r in records) + "\n"
    else:
        raise ValueError(f"unknown format {fmt!r}")
    path.write_text(text, encoding="utf-8")
    return path


def write_generic_fixture(
    root: Path, fmt: str = "jsonl", n_train: int = 24, n_valid: int = 4, n_test: int = 6
) -> Path:
    """Writes `<root>/generic/generic_{train,valid,test}.json` and returns `root` (data.dir).

    `n_valid=0` writes no validation file (the loader then splits 10% off train).
    """
    root = Path(root)
    sizes = {"train": n_train, "valid": n_valid, "test": n_test}
    offset = 0
    for split, n in sizes.items():
        if n:
            write_generic_file(
                root / "generic" / f"generic_{split}.json", generic_records(n, offset), fmt
            )
        offset += n
    return root


# ---- a tiny random T5 with a tokenizer, as a HF directory ------------------------------------


def random_params(shapes, rng):
    """Float32 params for `jax.eval_shape(model.init, ...)`'s `shapes`, drawn from the numpy
    Generator `rng` (numpy, not model.init: compiling init costs seconds on CPU): RMS-norm
    scales near 1, kernels scaled by 1/sqrt(fan-in), embeddings standard normal."""
    import flax.linen as nn
    import jax
    import numpy as np

    def fill(path, x):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            return (1.0 + 0.2 * rng.standard_normal(x.shape)).astype(np.float32)
        fan_in = x.shape[0] if "embedding" not in name else 1
        return (rng.standard_normal(x.shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, nn.meta.unbox(shapes)["params"])


def write_random_t5(root: Path, version: str = "v1.1", seed: int = 0) -> Path:
    """A tiny T5 (v1.0 or v1.1) with fixed random weights and a SentencePiece vocabulary trained
    on the generic fixture texts, exported as a HF directory (`model.from_pretrained`); returns
    it. Its greedy outputs are non-trivial (mostly non-empty, different per input), unlike a
    model trained a few steps, and no training is needed."""
    import dataclasses as dc

    import jax
    import numpy as np

    from distill_jax.model import hf_io
    from distill_jax.model.config import T5Config
    from distill_jax.model.t5 import T5
    from distill_jax.tokenizer import Tokenizer

    root = Path(root)
    texts = [t for r in generic_records(60) for t in (r["input"], r["label"], r["rationale"])]
    tokenizer = Tokenizer.train(texts, 80, root / "tokenizer")
    cfg = T5Config(
        vocab_size=-(-tokenizer.vocab_size // 16) * 16, d_model=32, d_kv=8, d_ff=64, num_heads=4,
        num_encoder_layers=2, num_decoder_layers=2, relative_attention_num_buckets=8,
        relative_attention_max_distance=16, feed_forward_proj="relu", tie_word_embeddings=True,
    )  # fmt: skip
    if version == "v1.1":
        cfg = dc.replace(cfg, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    tokens = np.ones((1, 4), np.int32)
    shapes = jax.eval_shape(T5(cfg).init, jax.random.key(0), tokens, tokens)
    rng = np.random.default_rng(seed)

    params = random_params(shapes, rng)
    # Ids that decode to nothing (pad, unk, sentinels, vocabulary padding; not EOS) get zero
    # output weights, so greedy outputs are visible text rather than runs of invisible ids.
    silent = [i for i in range(cfg.vocab_size) if i != 1 and not tokenizer.decode([i])]
    if cfg.tie_word_embeddings:
        params["shared"]["embedding"][silent] = 0.0
    else:
        params["decoder"]["logits_dense"]["kernel"][:, silent] = 0.0
    out = root / f"t5-{version}"
    hf_io.export_pretrained(out, cfg, params, tokenizer)
    return out
