"""Encoding speed of the two `Tokenizer` backends: SentencePiece and `tokenizers`.

Trains a vocabulary on the bundled demo's training records (datasets/generic), then encodes
their prefixed inputs, labels and rationales (what the trainer tokenizes) with the same
vocabulary loaded two ways, alternating: `Tokenizer.from_dir` (spiece.model: SentencePiece)
and `Tokenizer(tokenizer_json=...)` (the tokenizer.json it saved: HF `tokenizers`, as
transformers 5 encodes). Both must give the same ids (checked); prints median seconds and
the ratio.

    PYTHONPATH=. TOKENIZERS_PARALLELISM=false python benchmarks/tokenizer.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import tempfile
import time

from distill_jax.tokenizer import Tokenizer

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds per backend")
    parser.add_argument("--copies", type=int, default=4, help="times the text list is repeated")
    parser.add_argument("--vocab_size", type=int, default=1000)
    args = parser.parse_args()

    text = (ROOT / "datasets" / "generic" / "generic_train.json").read_text(encoding="utf-8")
    records = json.loads(text) if text.lstrip().startswith("[") else [
        json.loads(line) for line in text.splitlines() if line.strip()
    ]  # fmt: skip
    texts = []
    for r in records:
        texts += ["predict: " + r["input"], "explain: " + r["input"], r["label"], r["rationale"]]
    with tempfile.TemporaryDirectory() as tmp:
        Tokenizer.train([r[k] for r in records for k in ("input", "label", "rationale")],
                        args.vocab_size, tmp)  # fmt: skip
        sp = Tokenizer.from_dir(tmp)
        tk = Tokenizer(tokenizer_json=(pathlib.Path(tmp) / "tokenizer.json").read_text())
    assert sp.encode_batch(texts) == tk.encode_batch(texts), "the backends disagree"
    texts = texts * args.copies
    backends = {"tokenizers": tk, "sentencepiece": sp}
    times: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(args.repeat):
        for name, tok in backends.items():
            start = time.perf_counter()
            tok.encode_batch(texts)
            times[name].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(f"{len(texts)} texts, {args.repeat} rounds, median seconds:")
    for name, t in medians.items():
        print(f"  {name:20s} {t:.3f}  ({len(texts) / t:,.0f} texts/s)")
    ratio = medians["tokenizers"] / medians["sentencepiece"]
    print(f"ratio tokenizers/sentencepiece: {ratio:.2f}")


if __name__ == "__main__":
    main()
