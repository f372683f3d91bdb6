"""fine_tune/data.py: the study's training formats, and the loss on the response only."""
from __future__ import annotations

import pytest

from bench.types import BenchError
from fine_tune.data import IGNORE_INDEX, load_train_examples, tokenize
from tasks.alpaca import ALPACA_SYSTEM
from tasks.math import MATH_TRAIN_SYSTEM


def test_gsm8k_examples_use_the_math_training_prompt(fixture_data):
    examples, sha = load_train_examples("gsm8k", fixture_data, limit=2)
    assert len(examples) == 2 and len(sha) == 64
    first = examples[0]
    assert first.messages[0] == {"role": "system", "content": MATH_TRAIN_SYSTEM}
    assert first.messages[1]["content"].startswith("Natalia sold clips")
    assert first.response == first.reference and first.response.endswith("The answer is 72.")


def test_alpaca_examples_put_a_nonempty_input_on_the_line_after_the_instruction(fixture_data):
    examples, _ = load_train_examples("alpaca", fixture_data)
    with_input = examples[0]
    assert with_input.messages[0]["content"] == ALPACA_SYSTEM
    assert with_input.messages[1]["content"] == (
        "### Instruction:\nRewrite the sentence using gender-neutral language.\nOutput should be a single sentence."
        "\nA salesman is giving a presentation.\n\n### Response:\n")
    assert examples[1].messages[1]["content"].count("\n") == 4  # empty input: nothing added
    assert with_input.template == "alpaca" and load_train_examples("gsm8k", fixture_data)[0][0].template == "chat"


def test_loss_mask_covers_exactly_the_response_and_end_of_turn(tiny_model_dir, fixture_data):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    example = load_train_examples("gsm8k", fixture_data, limit=1)[0][0]
    features = tokenize(tokenizer, example.messages, example.response, max_length=4096)
    ids, labels = features["input_ids"], features["labels"]
    assert len(ids) == len(labels) == len(features["attention_mask"])
    learned = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    assert learned == list(range(learned[0], len(ids)))  # one contiguous span at the end
    assert tokenizer.decode([ids[i] for i in learned]) == example.response + tokenizer.eos_token
    prompt = tokenizer.decode(ids[:learned[0]])
    system, user = (m["content"] for m in example.messages)  # the fixture tokenizer's ChatML, written out
    assert prompt == (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
                      "<|im_start|>assistant\n")
    short = tokenize(tokenizer, example.messages, example.response, max_length=10)
    assert len(short["input_ids"]) == 10 and set(short["labels"]) == {IGNORE_INDEX}


def test_unknown_task_and_missing_field_are_errors(fixture_data, tmp_path):
    with pytest.raises(BenchError, match="unknown training task 'nope'"):
        load_train_examples("nope", fixture_data)
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "train.jsonl").write_text('{"question": "q", "answer": "a"}\n{"question": "q"}\n')
    with pytest.raises(BenchError, match=r"gsm8k/train.jsonl:2: missing field 'answer'"):
        load_train_examples("gsm8k", tmp_path)


def test_plain_prompts_train_on_the_alpaca_template_as_text(tiny_model_dir, fixture_data):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    example = load_train_examples("alpaca", fixture_data, limit=1)[0][0]
    features = tokenize(tokenizer, example.messages, example.response, max_length=4096, plain=True)
    first_learned = next(i for i, label in enumerate(features["labels"]) if label != IGNORE_INDEX)
    assert tokenizer.decode(features["input_ids"][:first_learned]) == \
        f"{ALPACA_SYSTEM}\n\n{example.messages[1]['content']}"
