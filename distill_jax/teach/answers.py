"""Teacher answers -> (rationale, label), agreement with gold, and the majority vote.

Parsing goes through the dataset's parser (`data/parsers.py`: the reference's "So the answer
is" and its fallbacks), on the text up to where the teacher starts another shot ("\\nQ:"), its
last sentence given exactly one period (the ANLI parser drops the last character, whatever it is).
"""

from __future__ import annotations

import collections
import re

from distill_jax import metrics
from distill_jax.data import parsers
from distill_jax.data.sources import NLI_LABELS

_MARKER = "So the answer is"
_CHOICE_LINE = re.compile(r"^\(([a-e])\) (.+)$", re.MULTILINE)


def _answer_text(text: str) -> str:
    """The answer up to the next shot, ending in exactly one period."""
    text = text.split("\nQ:")[0].strip()
    return text.rstrip(".").rstrip() + "." if text else text


def _parse_generic(text: str) -> tuple[str, str]:
    # The last "So the answer is": a rationale may quote the phrase; the label ends the text.
    head, sep, tail = text.rpartition(_MARKER)
    if not sep:
        return "", ""
    label = tail.strip().split("\n\n")[0].strip()
    return head.strip(), label[:-1].rstrip() if label.endswith(".") else label


def _parse_cqa(text: str, query: str) -> tuple[str, str]:
    rationale, label = parsers.parse_cqa_gpt(text)
    if label.strip():
        return rationale, label
    # No "(x)" mark: accept the bare choice text, or a bare letter, if the question lists it.
    rationale, bare = _parse_generic(text)
    choices = dict(_CHOICE_LINE.findall(query))
    letter = bare.strip("() ").lower()
    if letter in choices:
        return rationale, choices[letter].strip()
    by_text = {c.strip().lower(): c.strip() for c in choices.values()}
    return rationale, by_text.get(bare.lower(), "")


def _parse_nli(text: str) -> tuple[str, str]:
    rationale, label = parsers.parse_anli_gpt(text)
    if not label.strip():  # the reference's e-SNLI form "...\nAnswer: neutral"
        rationale, label = parsers.parse_esnli_gpt(text)
    label = label.strip().rstrip(".").lower()
    return rationale, label if label in NLI_LABELS else ""


def _parse_equation(text: str) -> tuple[str, str]:
    # The reference's SVAMP parser splits on "The answer is"; ours says "So the answer is".
    rationale, label = parsers.parse_svamp_gpt(text.replace(_MARKER, "The answer is"))
    return rationale, label if metrics.safe_eval(label) is not None else ""


def parse(dataset: str, text: str, query: str = "") -> tuple[str, str] | None:
    """(rationale, label) of one answer, or None when either part is missing; `query` is the
    record's input (CQA: its answer choices resolve a bare answer)."""
    text = _answer_text(text or "")
    if dataset == "cqa":
        rationale, label = _parse_cqa(text, query)
    elif dataset in ("esnli", "anli1"):
        rationale, label = _parse_nli(text)
    elif dataset in metrics.EQUATION_DATASETS:
        rationale, label = _parse_equation(text)
    else:
        rationale, label = _parse_generic(text)
    rationale, label = rationale.strip(), label.strip()
    return (rationale, label) if rationale and label else None


def agrees(dataset: str, pred: str, gold: str) -> bool:
    """Whether a teacher label matches the gold one (the dataset's accuracy metric)."""
    return metrics.accuracy([pred], [gold], dataset) == 1.0


def vote_key(dataset: str, label: str) -> str:
    """What two labels must share to count as the same vote (an equation's value)."""
    if dataset in metrics.EQUATION_DATASETS:
        value = metrics.safe_eval(label)
        if value is not None:
            return repr(round(value, 9) + 0.0)
    return label.strip()


def decide(
    dataset: str, texts: list[str], query: str, gold: str | None, filter_name: str
) -> tuple[str, str, str | None]:
    """(rationale, label, reason) of one input: the majority vote over the parsed samples, then
    `filter_name` ('parsed', 'gold', 'majority' = more than half of all samples agree, 'none' =
    keep even unparseable). `reason` is None (kept), 'unparseable', 'disagrees_with_gold' or
    'no_majority'."""
    parsed = [p for p in (parse(dataset, t, query) for t in texts) if p is not None]
    if not parsed:
        raw = texts[0].strip() if texts else ""
        return raw, "", None if filter_name == "none" else "unparseable"
    counts = collections.Counter(vote_key(dataset, label) for _, label in parsed)
    best, votes = counts.most_common(1)[0]  # ties: the label seen first wins
    rationale, label = next(p for p in parsed if vote_key(dataset, p[1]) == best)
    if filter_name == "gold" and gold is not None and not agrees(dataset, label, gold):
        return rationale, label, "disagrees_with_gold"
    if filter_name == "majority" and not votes > len(texts) / 2:
        return rationale, label, "no_majority"
    return rationale, label, None


def per_label_accuracy(dataset: str, rows: list[tuple[str, str]]) -> dict[str, float] | None:
    """Teacher accuracy per gold label over (gold, teacher label) pairs, for classification-like
    data (at most 20 distinct gold labels, no equations); else None."""
    golds = {g for g, _ in rows}
    if dataset in metrics.EQUATION_DATASETS or not rows or len(golds) > 20:
        return None
    return {g: accuracy(dataset, [row for row in rows if row[0] == g]) for g in sorted(golds)}


def accuracy(dataset: str, rows: list[tuple[str, str]]) -> float | None:
    """Teacher accuracy over (gold, teacher label) pairs; None without any."""
    if not rows:
        return None
    return sum(agrees(dataset, p, g) for g, p in rows) / len(rows)
