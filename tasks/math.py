"""GSM8K and MultiArith: integer-answer word problems, prompted and scored as the sdft repository does.

The prompt is the sdft "paper" style: the math system prompt, then the question alone as the user turn.
The score is the sdft integer match (`eval/utils.py`): the last number in the output against the last number
in the reference answer. That rule is reproduced with its quirks (see `last_integer`) so that accuracies are
comparable with the paper's; it is knowingly not the best possible answer extractor.

Data: the offline mirror's `gsm8k/test.jsonl` (sdft's copy, answers end "The answer is N.") and
`multiarith/test.jsonl` (fields instruction/output, output "The answer is N"). Online, the Hub copies are read
through `HubSource`; GSM8K answers there end "#### N", which `last_integer` reads the same way.
"""
from __future__ import annotations

import re
from typing import Any

from bench.types import Example, GenerationConfig, HubSource, Message, Score, Task

MATH_TRAIN_SYSTEM = (
    "You are an expert in math. Below is a math question. "
    "Write a response that appropriately answers the question."
)
# "{answer}" is literal text of the prompt, never formatted.
MATH_SYSTEM = (
    MATH_TRAIN_SYSTEM
    + " Your final answer should be an integer at the end of your response, formatted as: The answer is {answer}."
)

NUMBER_PATTERN = re.compile(r"-?\d+(?:[,\s]\d+)*(?:\.\d+)?")

MATH_GENERATION = GenerationConfig(max_new_tokens=512, stop=())


def last_integer(text: str) -> int | None:
    """The last number in `text` as an integer, or None when there is none or it has a non-zero fraction.

    Reproduces sdft's `find_last_integer` on purpose, quirks included:
    - a comma or a single space may sit between digit groups, and both are removed, so "1,234" -> 1234
      and "3 4" -> 34 (two separate numbers joined: the reference behaviour, kept for comparability);
    - a newline or tab may also join digit groups in the match, but the reference removes only commas and
      spaces, so its `int()` fails and the number is invalid: "12\\n34" -> None;
    - "12.0" -> 12, "12.50" -> None; a trailing sentence period is not a fraction: "18." -> 18.
    """
    matches = NUMBER_PATTERN.findall(text)
    if not matches:
        return None
    number = matches[-1].replace(",", "").replace(" ", "")
    integer, _, fraction = number.partition(".")
    if fraction and int(fraction) != 0:
        return None
    if re.search(r"\s", integer):
        return None
    return int(integer)


def math_messages(example: Example) -> list[Message]:
    return [
        {"role": "system", "content": MATH_SYSTEM},
        {"role": "user", "content": example.input},
    ]


def score_math(output: str, example: Example) -> Score:
    """1.0 when the output's last integer equals the reference integer; an invalid reference scores 0.0, as in sdft."""
    predicted = last_integer(output)
    answer = None if predicted is None else str(predicted)
    if example.target is None:
        return Score(0.0, answer, "reference has no valid integer")
    if predicted is None:
        return Score(0.0, None, "no valid integer in output")
    reference = int(example.target)
    if predicted == reference:
        return Score(1.0, answer, f"{predicted} == {reference}")
    return Score(0.0, answer, f"{predicted} != {reference}")


def _math_example(example_id: str, question: str, answer: str) -> Example:
    reference = last_integer(answer)
    return Example(
        id=example_id,
        input=question,
        target=None if reference is None else str(reference),
        metadata={"answer": answer},
    )


def gsm8k_example(record: dict[str, Any], index: int) -> Example:
    return _math_example(f"gsm8k-{index}", record["question"], record["answer"])


def multiarith_example(record: dict[str, Any], index: int) -> Example:
    return _math_example(f"multiarith-{index}", record["instruction"], record["output"])


gsm8k = Task(
    name="gsm8k",
    capability="math",
    dataset="gsm8k/test.jsonl",
    to_example=gsm8k_example,
    to_prompt=math_messages,
    score=score_math,
    generation=MATH_GENERATION,
    metric="accuracy",
    hub=HubSource("openai/gsm8k", split="test", name="main"),
    description="GSM8K test (1,319 grade-school word problems), integer match on the last number.",
)

multiarith = Task(
    name="multiarith",
    capability="math",
    dataset="multiarith/test.jsonl",
    to_example=multiarith_example,
    to_prompt=math_messages,
    score=score_math,
    generation=MATH_GENERATION,
    metric="accuracy",
    hub=HubSource("ChilleD/MultiArith", split="test", rename={"question": "instruction", "final_ans": "output"}),
    description="MultiArith test (180 multi-step arithmetic problems), integer match on the last number.",
)
