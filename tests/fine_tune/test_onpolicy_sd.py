"""fine_tune/onpolicy_sd.py through `bench train onpolicy_sd`: the teacher's prompt, its three kinds, the divergence
options, and the refusals."""
from __future__ import annotations

import csv
import json

import pytest

from bench.cli import main
from bench.types import BenchError
from fine_tune.data import load_train_examples
from fine_tune.onpolicy_sd import teacher_messages


def bench(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_teacher_reads_the_reference_after_the_instruction(fixture_data):
    for task in ("gsm8k", "alpaca"):
        example = load_train_examples(task, fixture_data, 1)[0][0]
        student, teacher = example.messages, teacher_messages(example)
        assert teacher[:-1] == student[:-1] and teacher[-1]["role"] == "user"
        demo = (f"{example.instruction}\n\nThis is an example of a correct response:\n{example.reference}\n\n"
                "Now write a response of your own.")  # the method's framing, written out
        assert teacher[-1]["content"] == student[-1]["content"].replace(example.instruction, demo)
        assert example.reference in teacher[-1]["content"] and example.reference not in student[-1]["content"]


def test_an_example_without_a_reference_is_refused(fixture_data):
    from dataclasses import replace

    example = replace(load_train_examples("gsm8k", fixture_data, 1)[0][0], reference=" ")
    with pytest.raises(BenchError, match="training example 0: no reference answer"):
        teacher_messages(example)


def args(model, data, results, *extra: str) -> list[str]:
    return ["train", "onpolicy_sd", "--task", "gsm8k", "--model", str(model), "--data-dir", str(data),
            "--results-dir", str(results), "--dtype", "float32", "--max-new-tokens", "16", *extra]


def test_teacher_kinds_start_as_the_seed_and_part_after_a_step(capsys, tiny_model_dir, fixture_data, tmp_path):
    """At step 1 the adapter is zero, so the EMA, base and live teachers are all the seed and give the same loss;
    after an update at a high rate the live teacher is the trained student and the base teacher is not."""
    config = tmp_path / "sd.json"
    config.write_text(json.dumps({"batch_size": 2, "gradient_accumulation": 1, "learning_rate": 0.05, "rank": 4,
                                  "epochs": 2, "dropout": 0.0}))
    losses = {}
    for kind in ("ema", "base", "live"):
        code, _, err = bench(capsys, *args(tiny_model_dir, fixture_data, tmp_path, "--config", str(config),
                                           "--teacher-kind", kind, "--name", kind))
        assert code == 0, err
        out = tmp_path / "checkpoints" / kind
        losses[kind] = [float(r["loss"]) for r in csv.DictReader((out / "train_log.csv").open())]
        record = json.loads((out / "train.json").read_text())
        pinned = {"ema": [6e-06, 0.000987, 0.002453, 0.000319], "base": [6e-06, 0.001055, 0.002516, 0.000332],
                  "live": [6e-06, 3.1e-05, 2e-06, 3e-06]}[kind]  # tiny model, seeded samples: a change must be meant
        assert losses[kind] == pytest.approx(pinned, abs=2e-6)
        assert record["method"] == "onpolicy_sd" and record["teacher"]["kind"] == kind
        assert record["fraction_on_policy"] == 1.0 and record["divergence"] == "forward_kl"
        saved = json.loads((out / "adapter_config.json").read_text())
        assert saved["r"] == 4 and not (out / "ema").exists()  # the EMA teacher's adapter is not the result
    assert losses["ema"][0] == losses["base"][0] == losses["live"][0]
    assert losses["live"][1] != losses["base"][1] and losses["ema"][1] != losses["live"][1]


@pytest.mark.parametrize("name", ["reverse_kl", "topk_jsd"])
def test_each_divergence_option_is_the_loss_trained(capsys, tiny_model_dir, fixture_data, tmp_path, monkeypatch, name):
    """--divergence reaches the loss: every micro-batch's loss is computed by that divergence (an ignored option
    would call forward_kl), and the run records it."""
    import fine_tune.onpolicy_sd

    called = []
    real = fine_tune.onpolicy_sd.divergence
    monkeypatch.setattr(fine_tune.onpolicy_sd, "divergence",
                        lambda kind, *a, **k: called.append(kind) or real(kind, *a, **k))
    code, _, err = bench(capsys, *args(tiny_model_dir, fixture_data, tmp_path, "--epochs", "1", "--divergence", name))
    assert code == 0, err
    record = json.loads((tmp_path / "checkpoints" / "onpolicy_sd-gsm8k" / "train.json").read_text())
    assert record["divergence"] == name and record["final_loss"] >= 0
    assert called and set(called) == {name}


def test_bad_input_is_one_line(capsys, tiny_model_dir, fixture_data, tmp_path):
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"max_length": 200}))
    code, _, err = bench(capsys, *args(tiny_model_dir, fixture_data, tmp_path, "--config", str(small)))
    assert code == 2 and "training example 0: the teacher prompt is" in err and "(raise max_length)" in err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"teacher_kind": "frozen"}))
    code, _, err = bench(capsys, *args(tiny_model_dir, fixture_data, tmp_path, "--config", str(bad)))
    assert code == 2 and "teacher_kind must be one of ema, base, live, got 'frozen'" in err
    code, _, err = bench(capsys, *args(tiny_model_dir, fixture_data, tmp_path, "--beta", "0.5"))
    assert code == 2 and "--beta: not an option of onpolicy_sd" in err
    empty = tmp_path / "data" / "gsm8k"
    empty.mkdir(parents=True)
    (empty / "train.jsonl").write_text(json.dumps({"question": "What is 1+1?", "answer": ""}) + "\n")
    code, _, err = bench(capsys, *args(tiny_model_dir, tmp_path / "data", tmp_path))
    assert code == 2 and "training example 0: no reference answer" in err
