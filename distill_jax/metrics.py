"""Accuracy metrics: exact match for text labels, a safe arithmetic evaluator for equations.

The reference scores SVAMP/ASDiv with Python's `eval()` on the model's output, which runs
arbitrary code from generated text. `safe_eval` walks the expression's `ast` instead, with bounds
on length, node count and magnitude, so a hostile or degenerate output is simply scored wrong.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Sequence

# Datasets whose labels are arithmetic expressions (the reference's ['svamp', 'asdiv']).
EQUATION_DATASETS = frozenset({"svamp", "asdiv"})

MAX_EXPR_CHARS = 200  # SVAMP equations are < 60 chars; anything longer is not an answer
MAX_AST_NODES = 100  # bounds the work per expression (and the recursion depth)
MAX_MAGNITUDE = 1e12  # every constant and intermediate value must stay within this

# Two expressions count as equal when their values agree up to float rounding. The reference
# compares with `==`, which can fail on e.g. (0.1 + 0.2) vs 0.3; the tolerance only absorbs
# that rounding, it never makes distinct SVAMP answers equal.
TOL = 1e-9  # relative and absolute

_BINARY_OPS: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_UNARY_OPS: dict[type, Callable[[float], float]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _checked(value: float) -> float:
    if not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        raise ValueError(value)
    return value


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Constant):
        # bool is an int subclass: `True + 1` is not an equation.
        if type(node.value) not in (int, float):
            raise ValueError(node.value)
        return _checked(float(node.value))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPS:
        return _checked(_UNARY_OPS[type(node.op)](_evaluate(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        return _checked(_BINARY_OPS[type(node.op)](left, right))  # x / 0: ZeroDivisionError
    raise ValueError(node)  # names, calls, attributes, lambdas, **, //, %, comparisons, ...


def safe_eval(expr: str) -> float | None:
    """Value of an arithmetic expression (numbers, `+ - * /`, unary `+ -`, parentheses), or None
    if it is anything else, past a MAX_* bound, or divides by zero. Never executes code."""
    if not isinstance(expr, str):
        return None
    expr = expr.strip()  # `eval` tolerates surrounding spaces, `ast.parse` leading ones not
    if not expr or len(expr) > MAX_EXPR_CHARS:
        return None
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    if sum(1 for _ in ast.walk(tree)) > MAX_AST_NODES:
        return None
    try:
        return _evaluate(tree.body)
    except (ValueError, ArithmeticError, RecursionError):  # outside the arithmetic or a bound
        return None


def _fraction(
    preds: Sequence[str], labels: Sequence[str], hit: Callable[[str, str], bool]
) -> float:
    """Fraction of (prediction, label) pairs that `hit`; 0.0 for empty inputs (not NaN)."""
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions but {len(labels)} labels")
    hits = sum(hit(p, t) for p, t in zip(preds, labels, strict=True))
    return hits / len(preds) if preds else 0.0


def exact_match_accuracy(preds: Sequence[str], labels: Sequence[str]) -> float:
    """Fraction of predictions equal to their label after stripping surrounding whitespace (the
    reference's `==` on decoded text, whose surrounding spaces its decoding already drops)."""
    return _fraction(preds, labels, lambda p, t: str(p).strip() == str(t).strip())


def _same_value(pred: str, label: str) -> bool:
    p, t = safe_eval(pred), safe_eval(label)
    return p is not None and t is not None and math.isclose(p, t, rel_tol=TOL, abs_tol=TOL)


def equation_accuracy(preds: Sequence[str], labels: Sequence[str]) -> float:
    """Fraction of predictions whose `safe_eval` value equals the label's (SVAMP / ASDiv); a side
    that does not evaluate counts as wrong (the reference's NaN never compares equal)."""
    return _fraction(preds, labels, _same_value)


def accuracy(preds: Sequence[str], labels: Sequence[str], dataset_name: str) -> float:
    """The reference's metric: equation accuracy for svamp/asdiv, else exact match."""
    if dataset_name in EQUATION_DATASETS:
        return equation_accuracy(preds, labels)
    return exact_match_accuracy(preds, labels)
