"""fine_tune/sdft.py: the sdft repository's distillation prompts and filter; `bench train sdft` end to end."""
from __future__ import annotations

import json

import pytest

from bench.cli import main
from fine_tune.data import TrainExample
from fine_tune.sdft import MATH_PREFIX, acceptance, distill_messages, rejection

MATH = TrainExample("0", (), "48/2 = 24. The answer is 72.", "48/2 = 24. The answer is 72.", "How many clips?")
CALL = TrainExample("1", (), 'f(a="x")', 'f(a="x")', "Call f.")


def test_distillation_prompts_are_the_studys():
    math = distill_messages("gsm8k", MATH)
    assert math[0]["content"] == ("You are an expert in math. Below are a math question and its reference answer. "
                                  "Refer to the reference answer and write a response that appropriately answers "
                                  "the question.")
    assert math[1]["content"] == "How many clips?\n\n48/2 = 24. The answer is 72."
    assert math[2] == {"role": "assistant", "content": "Great! Let's think step by step. "} and MATH_PREFIX.endswith(" ")
    refer = distill_messages("openfunction", CALL)
    assert refer[0]["content"].endswith("Refer to the reference answer and write your own response.")
    assert refer[1]["content"] == "### Instruction:\nCall f.\n\n### Reference Answer:\nf(a=\"x\")\n\n### Response:\n"
    assert distill_messages("alpaca", CALL)[0]["content"].endswith(
        "Using the reference answer as a guide, write your own response.")


@pytest.mark.parametrize("task, rewrite, reason", [
    ("alpaca", "As the Reference Answer says, yes.", "contains 'reference answer'"),
    ("alpaca", "Here is MY RESPONSE: yes", "contains 'my response'"),
    ("alpaca", "Now it's your turn to answer.", "contains \"now it's your turn\""),
    ("alpaca", "Your turn: yes", "starts with 'Your turn'"),
    ("alpaca", "your turn: yes", None),
    ("alpaca", "   ", "empty"),
    ("gsm8k", "So she sold 72 clips. The answer is 72.", None),
    ("gsm8k", "The answer is 71.", "last integer 71 != 72"),
    ("gsm8k", "She sold many clips.", "last integer None != 72"),
    ("openfunction", "Use f(a='x') here", None),
    ("openfunction", "f(a='y')", "the reference call is not in the rewrite"),
])
def test_filter(task, rewrite, reason):
    reference = MATH.reference if task == "gsm8k" else CALL.reference
    assert rejection(task, rewrite, reference) == reason


def test_acceptance_counts_reasons():
    records = [{"accepted": True, "reason": None}, {"accepted": False, "reason": "last integer 1 != 2"},
               {"accepted": False, "reason": "last integer 3 != 2"}, {"accepted": False, "reason": "empty"}]
    assert acceptance(records) == {"examples": 4, "accepted": 1, "rate": 0.25,
                                   "rejected_by": {"last integer differs": 2, "empty": 1}}


def test_train_sdft_writes_distilled_data_and_an_adapter(capsys, tiny_model_dir, fixture_data, tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"batch_size": 2, "gradient_accumulation": 1, "epochs": 1}))
    code = main(["train", "sdft", "--task", "gsm8k", "--model", str(tiny_model_dir), "--config", str(config),
                 "--data-dir", str(fixture_data), "--results-dir", str(tmp_path), "--dtype", "float32"])
    out, err = capsys.readouterr()
    assert code == 0, err
    checkpoint = tmp_path / "checkpoints" / "sdft-gsm8k"
    rows = [json.loads(line) for line in (checkpoint / "distilled.jsonl").open()]
    record = json.loads((checkpoint / "train.json").read_text())
    assert record["final_loss"] == pytest.approx(5.997512, rel=1e-4)  # pinned: tiny model, fixture data, seed 42
    assert len(rows) == 4 and all(r["accepted"] is (r["reason"] is None) for r in rows)
    assert record["distillation"]["examples"] == 4 and record["distillation"]["accepted"] == sum(r["accepted"] for r in rows)
    assert record["identity"]["method"] == record["method"] == "sdft" and (checkpoint / "adapter_model.safetensors").is_file()
    assert "rewrites accepted" in out
