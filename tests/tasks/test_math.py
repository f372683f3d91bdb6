from __future__ import annotations


import pytest

from conftest import first_mirror_record
from bench.types import Example
from tasks.math import (
    MATH_SYSTEM,
    MATH_TRAIN_SYSTEM,
    gsm8k,
    gsm8k_example,
    last_integer,
    multiarith,
    multiarith_example,
    score_math,
)



@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,234", 1234),
        ("12.50", None),
        ("12.0", 12),
        ("12.00", 12),
        ("-3", -3),
        ("The answer is 18.", 18),
        ("3 4", 34),
        ("no number here", None),
        ("", None),
        ("-1,234,567", -1234567),
        ("costs 2 dollars, total 1,234.5", None),
        ("total 1,234.0", 1234),
        ("Step 1: 3 + 4 = 7\nStep 2: 7 * 2 = 14\nThe answer is 14.", 14),
        ("The answer is 18.\n\nI hope this helps!", 18),
        ("first 5 then 7", 7),
        ("12\n34", None),
        ("12\t34", None),
        ("12  34", 34),
        ("Janet sells 16 - 3 - 4 = 9 duck eggs.\nThe answer is 18.", 18),
        ("<<48+24=72>>72 clips\n#### 72", 72),
        ("$2,125.", 2125),
        ("0.5", None),
        ("-0", 0),
    ],
)
def test_last_integer(text: str, expected: int | None) -> None:
    assert last_integer(text) == expected


def test_system_prompts() -> None:
    assert MATH_SYSTEM == (
        "You are an expert in math. Below is a math question. Write a response that appropriately answers the "
        "question. Your final answer should be an integer at the end of your response, formatted as: "
        "The answer is {answer}."
    )
    assert MATH_TRAIN_SYSTEM == (
        "You are an expert in math. Below is a math question. Write a response that appropriately answers the "
        "question."
    )


GSM8K_RECORD = {
    "question": "Janet’s ducks lay 16 eggs per day. How much does she make?",
    "answer": "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes 9 * 2 = $18 every day.\nThe answer is 18.",
}
MULTIARITH_RECORD = {"instruction": "Paige had 11 songs. She deleted 9 and added 8. How many?", "output": "The answer is 10"}


def test_gsm8k_example() -> None:
    ex = gsm8k_example(GSM8K_RECORD, 7)
    assert ex == Example(
        id="gsm8k-7", input=GSM8K_RECORD["question"], target="18", metadata={"answer": GSM8K_RECORD["answer"]}
    )


def test_gsm8k_example_reads_hub_answers() -> None:
    ex = gsm8k_example({"question": "q", "answer": "48/2 = <<48/2=24>>24\n48+24 = <<48+24=72>>72\n#### 72"}, 0)
    assert ex.target == "72"


def test_multiarith_example() -> None:
    ex = multiarith_example(MULTIARITH_RECORD, 0)
    assert ex == Example(
        id="multiarith-0", input=MULTIARITH_RECORD["instruction"], target="10", metadata={"answer": "The answer is 10"}
    )


def test_missing_field_raises_key_error() -> None:
    with pytest.raises(KeyError):
        gsm8k_example({"question": "q"}, 0)
    with pytest.raises(KeyError):
        multiarith_example({"question": "q", "output": "The answer is 1"}, 0)


@pytest.mark.parametrize(
    ("to_example", "record"), [(gsm8k_example, GSM8K_RECORD), (multiarith_example, MULTIARITH_RECORD)]
)
@pytest.mark.parametrize(
    ("output", "value", "answer"),
    [
        ("So the answer is {ref}.", 1.0, "{ref}"),
        ("The answer is {ref}.0", 1.0, "{ref}"),
        ("The answer is 1,000.", 0.0, "1000"),
        ("The answer is {ref}.5", 0.0, None),
        ("I cannot solve this.", 0.0, None),
    ],
)
def test_score_math(to_example, record: dict, output: str, value: float, answer: str | None) -> None:
    ex = to_example(record, 0)
    score = score_math(output.format(ref=ex.target), ex)
    assert score.value == value
    assert score.answer == (None if answer is None else answer.format(ref=ex.target))
    assert score.explanation


def test_score_math_invalid_reference() -> None:
    ex = gsm8k_example({"question": "q", "answer": "The answer is 2.5."}, 0)
    assert ex.target is None
    score = score_math("The answer is 2.", ex)
    assert (score.value, score.answer) == (0.0, "2")


def test_messages() -> None:
    ex = gsm8k_example(GSM8K_RECORD, 0)
    for task in (gsm8k, multiarith):
        assert task.to_prompt(ex) == [
            {"role": "system", "content": MATH_SYSTEM},
            {"role": "user", "content": GSM8K_RECORD["question"]},
        ]


def test_task_values() -> None:
    assert (gsm8k.name, gsm8k.dataset, gsm8k.capability, gsm8k.metric) == (
        "gsm8k", "gsm8k/test.jsonl", "math", "accuracy"
    )
    assert (multiarith.name, multiarith.dataset, multiarith.capability, multiarith.metric) == (
        "multiarith", "multiarith/test.jsonl", "math", "accuracy"
    )
    for task in (gsm8k, multiarith):
        assert task.generation.max_new_tokens == 512
        assert task.generation.stop == ()




def test_gsm8k_mirror_first_line() -> None:
    ex = gsm8k.to_example(first_mirror_record(gsm8k.dataset), 0)
    assert ex.id == "gsm8k-0"
    assert ex.target == "18"
    assert ex.input.startswith("Janet")


def test_multiarith_mirror_first_line() -> None:
    ex = multiarith.to_example(first_mirror_record(multiarith.dataset), 0)
    assert ex.id == "multiarith-0"
    assert ex.target == "10"
