"""OpenFunctions (Gorilla, the sdft study's 112 test examples): can the model still write a function call?

Alpaca template, greedy. Two scores per example:
- `exact`, the headline: the study's rule (`eval/eval_openfunction.py`), exactly. Both strings are normalised
  (whitespace runs collapse to one space, ' becomes ", ", " becomes ","); the reference splits into a dotted
  name and its argument text; correct when `\\bNAME(ARGS)` occurs anywhere in the normalised output.
- `ast`: the reference and the first call in the output parsed with Python's `ast`; equal when the function
  name matches and every keyword argument has an equal literal value, whatever the order, quoting or spacing.
"""
from __future__ import annotations

import ast
import re
from typing import Any

from bench.types import ALPACA_TEMPLATE, Example, GenerationConfig, Score, Task
from tasks.alpaca import alpaca_messages

CALL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*(?:\.[a-zA-Z_][a-zA-Z0-9_]*)*)\((.*)\)")
DOTTED_CALL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*(?:\.[a-zA-Z_][a-zA-Z0-9_]*)*\(")


def standardize_call(text: str) -> str:
    text = re.sub(r"\s+", " ", text.strip())
    return text.replace("'", '"').replace(", ", ",")


def split_reference(reference: str) -> tuple[str, str]:
    """(name, argument text) of a reference call; ValueError when it is not `name(...)`."""
    match = CALL.match(standardize_call(reference))
    if match is None:
        raise ValueError(f"reference is not a function call: {reference!r}")
    return match.group(1), match.group(2)


def exact_match(output: str, reference: str) -> bool:
    name, params = split_reference(reference)
    pattern = r"\b" + re.escape(name) + r"\(" + re.escape(params) + r"\)"
    return re.search(pattern, standardize_call(output)) is not None


def parse_call(text: str) -> tuple[str, dict[str, Any]] | None:
    """(dotted name, {keyword: literal value}) of a call expression, or None when it is not one. Positional
    arguments are kept under keys "0", "1", ...; a value that is not a literal is kept as its source text."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(node, ast.Call):
        return None
    name = ast.unparse(node.func)
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", name):
        return None
    args: dict[str, Any] = {}
    for i, arg in enumerate(node.args):
        args[str(i)] = _literal(arg)
    for keyword in node.keywords:
        args[keyword.arg if keyword.arg is not None else "**"] = _literal(keyword.value)
    return name, args


def _literal(node: ast.AST) -> Any:
    try:
        return ("literal", _booleans_apart(ast.literal_eval(node)))
    except (ValueError, SyntaxError, TypeError):
        return ("source", ast.unparse(node))


def _booleans_apart(value: Any) -> Any:
    """The value with each bool tagged, so that True is not 1 (Python's ==); 2 and 2.0 stay equal."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (list, tuple, set)):
        return type(value)(_booleans_apart(v) for v in value) if not isinstance(value, set) else \
            frozenset(_booleans_apart(v) for v in value)
    if isinstance(value, dict):
        return {k: _booleans_apart(v) for k, v in value.items()}
    return value


def first_call(output: str) -> tuple[str, dict[str, Any]] | None:
    """The first parseable call in the output: from each `name(` on, the shortest text that parses as a call (ending
    at some `)`: a bracket inside a string argument does not end it)."""
    for match in DOTTED_CALL.finditer(output):
        start = match.start()
        if start > 0 and (output[start - 1].isalnum() or output[start - 1] in "_."):
            continue
        for end in (i for i in range(match.end(), len(output)) if output[i] == ")"):
            call = parse_call(output[start:end + 1])
            if call is not None:
                return call
    return None


def score_call(output: str, example: Example) -> Score:
    exact = exact_match(output, example.target)
    found = first_call(output)
    return Score(float(exact), found[0] if found else None,
                 "reference call found" if exact else "reference call not found",
                 others={"ast": float(found is not None and found == parse_call(example.target))})


def openfunction_example(record: dict[str, Any], index: int) -> Example:
    reference = record["output"]
    split_reference(reference)
    if parse_call(reference) is None:
        raise ValueError(f"reference does not parse as a call: {reference!r}")
    return Example(id=f"openfunction-{index}", input=record["instruction"], target=reference)


openfunction = Task(
    name="openfunction",
    capability="tooluse",
    dataset="openfunction/test.jsonl",
    to_example=openfunction_example,
    to_prompt=alpaca_messages,
    template=ALPACA_TEMPLATE,
    score=score_call,
    generation=GenerationConfig(max_new_tokens=256),
    metric="exact",
    hub=None,
    description="Gorilla OpenFunctions (112, the sdft test split), Alpaca template; exact (the study's rule) and ast.",
)
