"""Few-shot chain-of-thought prompts: built-in ones per dataset, or a user's template file.

Every prompt has the paper's form (Wei et al. 2022, as used by Hsieh et al. 2023): shots
"Q: <question>\nA: <reasoning>. So the answer is <label>.", then the record's "Q: ...\nA:". The
built-in shots were written for this project (the reference never released its prompts). A
prompt's version enters the cache key, so editing a prompt re-asks the teacher. A prompt file's
placeholders (README.md) are replaced literally, so other braces in it are left alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from distill_jax.data.sources import NLI_SEPARATOR
from distill_jax.errors import UserError

STOP = ["\nQ:"]  # the teacher starting another shot: stop there


@dataclasses.dataclass(frozen=True)
class Shot:
    """One worked example: the question as the record holds it, the reasoning, the label."""

    input: str
    rationale: str
    label: str


@dataclasses.dataclass(frozen=True)
class Builtin:
    """A dataset's built-in prompt: an instruction line, shots and a version for the cache."""

    version: str
    instruction: str
    shots: tuple[Shot, ...]


_CHOICES = "\nAnswer Choices:\n(a) {}\n(b) {}\n(c) {}\n(d) {}\n(e) {}"
_NLI_Q = "Does the premise entail the hypothesis, contradict it, or neither (neutral)?"
_NLI_INSTRUCTION = (
    "Decide whether the premise entails the hypothesis, contradicts it, or neither. Reason step by "
    "step, then end with 'So the answer is <entailment|neutral|contradiction>.'"
)

BUILTIN: dict[str, Builtin] = {
    "cqa": Builtin(
        "cqa-v1",
        "Answer the multiple-choice question. Reason step by step, then end with "
        "'So the answer is (<letter>) <choice>.'",
        (
            Shot(
                "Where would you put a carton of milk to keep it cold?"
                + _CHOICES.format("oven", "refrigerator", "bookshelf", "car trunk", "garden"),
                "Milk must be kept cold to stay fresh, and a refrigerator is the appliance that "
                "keeps food cold.",
                "(b) refrigerator",
            ),
            Shot(
                "What do people usually do when they are tired at night?"
                + _CHOICES.format("run a race", "go to sleep", "eat breakfast", "shout", "swim"),
                "Being tired means the body needs rest, and at night people rest by sleeping.",
                "(b) go to sleep",
            ),
            Shot(
                "If you want to read a book you do not own, where can you borrow one?"
                + _CHOICES.format("library", "bakery", "gas station", "stadium", "pharmacy"),
                "Borrowing books for free is what a library is for; the other places sell or do "
                "other things.",
                "(a) library",
            ),
        ),
    ),
    "esnli": Builtin(
        "esnli-v1",
        _NLI_INSTRUCTION,
        (
            Shot(
                "A man is playing a guitar on a stage.</s>A man is performing music.",
                "Playing a guitar on a stage is a way of performing music.",
                "entailment",
            ),
            Shot(
                "Two children are building a sandcastle on the beach.</s>The children are "
                "sitting in a classroom.",
                "The children cannot be on the beach and in a classroom at the same time.",
                "contradiction",
            ),
            Shot(
                "A woman is walking a dog in the park.</s>The woman owns the dog.",
                "Walking a dog does not tell us whether she owns it; she could be walking a "
                "friend's dog.",
                "neutral",
            ),
        ),
    ),
    "anli1": Builtin(
        "anli1-v1",
        _NLI_INSTRUCTION,
        (
            Shot(
                "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.</s>The "
                "Eiffel Tower was built in the nineteenth century.",
                "1889 is a year of the nineteenth century, so the tower was built then.",
                "entailment",
            ),
            Shot(
                "Maria Lopez is a Spanish novelist who has written four books.</s>Maria Lopez "
                "has never written a book.",
                "The premise says she has written four books, which is the opposite of never "
                "having written one.",
                "contradiction",
            ),
            Shot(
                "The festival takes place every summer in a small town by the lake.</s>The "
                "festival attracts thousands of visitors.",
                "The premise says when and where the festival is held but not how many people "
                "come.",
                "neutral",
            ),
        ),
    ),
    "svamp": Builtin(
        "svamp-v1",
        "Solve the math word problem. Reason step by step, then end with 'So the answer is "
        "(<equation>).' using only numbers, + - * / and parentheses.",
        (
            Shot(
                "Tom had 8 apples. He gave 3 apples to his sister.\nHow many apples does Tom "
                "have now?",
                "Tom started with 8 apples and gave away 3, so we subtract: 8 - 3.",
                "( 8.0 - 3.0 )",
            ),
            Shot(
                "Each box holds 6 pencils. There are 4 boxes.\nHow many pencils are there in all?",
                "There are 4 boxes with 6 pencils each, so we multiply: 4 * 6.",
                "( 4.0 * 6.0 )",
            ),
            Shot(
                "A baker made 20 cookies and packed them equally into 5 bags. Then she ate 1 "
                "bag.\nHow many cookies are left?",
                "Each bag holds 20 / 5 cookies; she ate one of the 5 bags, so 4 bags are left: "
                "(20 / 5) * 4.",
                "( ( 20.0 / 5.0 ) * 4.0 )",
            ),
        ),
    ),
    "generic": Builtin(
        "generic-v1",
        "Answer the question. Reason step by step, then end with 'So the answer is <answer>.'",
        (
            Shot(
                "A patient's order reads: check the glucose level before breakfast. Which lab "
                "test is ordered?",
                "The order asks for the glucose level, and a glucose level is measured by a "
                "glucose test.",
                "glucose",
            ),
            Shot(
                "The thermometer shows 39.5 degrees Celsius for an adult. Is this a fever?",
                "Normal adult body temperature is about 37 degrees Celsius and anything above "
                "38 counts as a fever; 39.5 is above 38.",
                "yes",
            ),
        ),
    ),
}
BUILTIN["asdiv"] = dataclasses.replace(BUILTIN["svamp"], version="asdiv-v1")


def show_input(dataset: str, text: str) -> str:
    """The record's input as the prompt shows it (NLI: premise and hypothesis on own lines)."""
    if dataset in ("esnli", "anli1") and NLI_SEPARATOR in text:
        premise, hypothesis = text.split(NLI_SEPARATOR, 1)
        return f"Premise: {premise}\nHypothesis: {hypothesis}\n{_NLI_Q}"
    return text


def _hint(label: str) -> str:
    return f"\n(Hint: the correct answer is {label}. Explain why.)"


def render_shots(dataset: str, shots: list[Shot] | tuple[Shot, ...], rationalize: bool) -> str:
    """The few-shot block, one `Q: ... A: ... So the answer is ....` paragraph per shot."""
    return "".join(
        f"Q: {show_input(dataset, s.input)}{_hint(s.label) if rationalize else ''}\n"
        f"A: {s.rationale.rstrip()} So the answer is {s.label}.\n\n"
        for s in shots
    )


@dataclasses.dataclass(frozen=True)
class Prompter:
    """Renders the prompt for one record; `version` identifies the template for the cache."""

    dataset: str
    template: str  # with {shots}, {input} and optionally {label}
    version: str
    rationalize: bool

    def render(self, text: str, label: str | None, shots: list[Shot] | tuple[Shot, ...]) -> str:
        """The full prompt for input `text` (gold `label` shown only with rationalize)."""
        query = show_input(self.dataset, text)
        if self.rationalize and "{label}" not in self.template:
            query += _hint(label)
        return (
            self.template.replace("{shots}", render_shots(self.dataset, shots, self.rationalize))
            .replace("{label}", label or "")
            .replace("{input}", query)
        )


def make_prompter(dataset: str, prompt_file: str, rationalize: bool) -> tuple[Prompter, tuple]:
    """(Prompter, built-in shots) for `dataset`, or for the user's template `prompt_file`."""
    builtin = BUILTIN[dataset]
    if not prompt_file:
        template = builtin.instruction + "\n\n{shots}Q: {input}\nA:"
        return Prompter(dataset, template, builtin.version, rationalize), builtin.shots
    try:
        template = Path(prompt_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(
            f"config field teacher.prompt_file={prompt_file!r}: cannot read: {e}"
        ) from None
    if "{input}" not in template:
        raise UserError(
            f"config field teacher.prompt_file={prompt_file!r}: the template has no {{input}} "
            "placeholder (placeholders: {shots}, {input}, {label})"
        )
    version = "file-" + hashlib.sha256(template.encode()).hexdigest()[:16]
    return Prompter(dataset, template, version, rationalize), builtin.shots
