"""Parsers for the teachers' chain-of-thought outputs, one per (dataset, LLM).

Each maps one LLM output to `(rationale, label)` exactly as the reference's `data_utils.py`
(`_parse_llm_output` for PaLM, `_parse_gpt_output` for GPT-NeoX, which also left-strips),
with its fallbacks (`' '` or `''`) for outputs that do not parse. The one case the reference
does not catch (a PaLM CQA output without exactly one "So the answer is") raises
`UnparsableOutput` instead of an unpacking error.
"""

from __future__ import annotations

import re
from collections.abc import Callable

Parser = Callable[[str], tuple[str, str]]

_CHOICE_MARK = re.compile(r"\(.\)")  # "(a)" .. "(e)": CQA answers are "... (b) bank."
_PARENTHESISED = re.compile(r"\(.*\)")  # greedy: the whole "(3 + 4) * 2)"-style equation


class UnparsableOutput(ValueError):
    """An LLM output the reference cannot parse either (it would crash on it)."""


def _cqa_label(label: str) -> str:
    # Text after the "(x)" choice mark, without a final period; ' ' when there is none.
    try:
        label = _CHOICE_MARK.split(label)[1].strip()
        return label if label[-1] != "." else label[:-1]
    except IndexError:
        return " "


def _split_two(text: str, marker: str) -> tuple[str, str] | None:
    """(rationale right-stripped, label) when `marker` splits `text` in exactly two parts."""
    parts = text.split(marker)
    return (parts[0].rstrip(), parts[1]) if len(parts) == 2 else None


def parse_cqa_palm(output: str) -> tuple[str, str]:
    """CQA, PaLM: "<rationale> So the answer is (b) bank." (anything after "Q:" dropped)."""
    rationale_label = output.split("Q:")[0].rstrip()
    if (split := _split_two(rationale_label, "So the answer is")) is None:
        # The reference unpacks without a try and would crash here.
        found = rationale_label.count("So the answer is")
        raise UnparsableOutput(
            f"expected exactly one 'So the answer is' in the output, found {found}"
        )
    return split[0], _cqa_label(split[1])


def parse_cqa_gpt(output: str) -> tuple[str, str]:
    """CQA, GPT-NeoX: as PaLM, but `(' ', ' ')` when "So the answer is" does not split in two."""
    split = _split_two(output.split("Q:")[0].strip(), "So the answer is")
    return (split[0], _cqa_label(split[1])) if split else (" ", " ")


def _parse_equation(rationale_label: str) -> tuple[str, str]:
    if (split := _split_two(rationale_label, "The answer is")) is None:
        return " ", " "
    match = _PARENTHESISED.search(split[1])
    return split[0], match.group(0) if match else " "


def parse_svamp_palm(output: str) -> tuple[str, str]:
    """SVAMP / ASDiv, PaLM: "<rationale> The answer is (3 + 4)."; label keeps its parentheses."""
    return _parse_equation(output.split("Q:")[0].rstrip())


def parse_svamp_gpt(output: str) -> tuple[str, str]:
    """SVAMP, GPT-NeoX: as PaLM, left-stripped."""
    return _parse_equation(output.split("Q:")[0].strip())


def _esnli_label(output: str) -> str:
    try:
        return output.split("Answer: ")[1].split("Premise")[0].rstrip()
    except IndexError:
        return " "


def parse_esnli_palm(output: str) -> tuple[str, str]:
    """e-SNLI, PaLM: "<rationale>\\nAnswer: neutral\\n\\nPremise: ..."; label ' ' if no answer."""
    return output.split("Answer:")[0].rstrip(), _esnli_label(output)


def parse_esnli_gpt(output: str) -> tuple[str, str]:
    """e-SNLI, GPT-NeoX: as PaLM, rationale left-stripped."""
    return output.split("Answer:")[0].strip(), _esnli_label(output)


def _anli(split: tuple[str, str] | None) -> tuple[str, str]:
    # The reference drops the label's last character (the final period) unconditionally.
    return (split[0], split[1].lstrip()[:-1]) if split else ("", "")


def parse_anli_palm(output: str) -> tuple[str, str]:
    """ANLI, PaLM: "<rationale> So the answer is neutral." before "Premise:"; else ('', '')."""
    return _anli(_split_two(output.split("Premise:")[0].rstrip(), "So the answer is"))


def parse_anli_gpt(output: str) -> tuple[str, str]:
    """ANLI, GPT-NeoX: "So the answer is", then "The answer is", else ('', '')."""
    head = output.split("Premise:")[0].strip()
    return _anli(_split_two(head, "So the answer is") or _split_two(head, "The answer is"))


# (dataset, llm) -> parser. The reference has no GPT-NeoX outputs or parser for ASDiv.
PARSERS: dict[tuple[str, str], Parser] = {
    ("cqa", "palm"): parse_cqa_palm,
    ("cqa", "gpt"): parse_cqa_gpt,
    ("svamp", "palm"): parse_svamp_palm,
    ("svamp", "gpt"): parse_svamp_gpt,
    ("asdiv", "palm"): parse_svamp_palm,
    ("esnli", "palm"): parse_esnli_palm,
    ("esnli", "gpt"): parse_esnli_gpt,
    ("anli1", "palm"): parse_anli_palm,
    ("anli1", "gpt"): parse_anli_gpt,
}


def get_parser(dataset: str, llm: str) -> Parser:
    """The parser for `dataset`'s outputs from `llm` ('palm' or 'gpt'); KeyError if none."""
    return PARSERS[(dataset, llm)]
