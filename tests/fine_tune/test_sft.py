"""fine_tune/sft.py and `bench train sft`: a real LoRA training on a tiny model, its files, its refusals, its
resumption."""
from __future__ import annotations

import csv
import json

import pytest

from bench.cli import main
from conftest import sigkill_after_step, train_in_subprocess
from fine_tune.common import keep_log_rows
from bench.distributed import World
from fine_tune.sft import last_complete_checkpoint


def bench(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_sft_writes_a_loadable_adapter_and_is_not_repeated(capsys, tiny_model_dir, fixture_data, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"batch_size": 2, "gradient_accumulation": 1, "learning_rate": 0.01, "rank": 4}))
    args = ("train", "sft", "--task", "gsm8k", "--model", str(tiny_model_dir), "--epochs", "2", "--config",
            str(config), "--data-dir", str(fixture_data), "--results-dir", str(tmp_path), "--name", "tiny",
            "--dtype", "float32")
    code, out, err = bench(capsys, *args)
    assert code == 0, err
    out_dir = tmp_path / "checkpoints" / "tiny"
    record = json.loads((out_dir / "train.json").read_text())
    # Pinned on this tiny model, data and seed (2 threads and 1 give the same): a change is a change someone must mean.
    assert [float(r["loss"]) for r in csv.DictReader((out_dir / "train_log.csv").open())] == pytest.approx(
        [6.001049, 5.986705, 5.981876, 5.973458], rel=1e-4)
    assert record["final_loss"] == pytest.approx(5.985772, rel=1e-4)  # Trainer's mean over the steps
    assert record["steps"] == 4 and record["examples"] == 4 and record["config"]["rank"] == 4
    assert record["identity"]["data_sha256"] == record["data_sha256"] and record["tokens_per_s"] > 0
    assert not (out_dir / "trainer").exists() and (out_dir / "loss.png").stat().st_size > 1000
    log = list(csv.DictReader((out_dir / "train_log.csv").open()))
    assert [int(r["step"]) for r in log] == [1, 2, 3, 4] and all(float(r["loss"]) > 0 for r in log)

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out_dir)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(torch.any(p != 0) for p in lora_b)  # trained: LoRA's B starts at zero

    code, out, _ = bench(capsys, *args)
    assert code == 0 and "already trained" in out
    code, _, err = bench(capsys, *args[:-4], "--limit", "2", "--dtype", "float32", "--name", "tiny")
    assert code == 2 and "trained with other settings" in err

    code, out, err = bench(capsys, "eval", str(tiny_model_dir), "--adapter", str(out_dir), "--tasks", "gsm8k",
                           "--limit", "1", "--dtype", "float32", "--data-dir", str(fixture_data), "--results-dir",
                           str(tmp_path))
    assert code == 0, err
    assert "trained with" not in out
    code, out, err = bench(capsys, "eval", str(tiny_model_dir), "--adapter", str(out_dir), "--tasks", "gsm8k",
                           "--limit", "1", "--dtype", "float32", "--data-dir", str(fixture_data), "--results-dir",
                           str(tmp_path), "--prompt-format", "study", "--name", "study")
    assert code == 0, err
    assert "was trained with chat prompts; this evaluation sends study prompts" in " ".join(out.split())


def test_train_bad_input_is_one_line(capsys, tiny_model_dir, fixture_data, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("rank = 'eight'\n")
    code, _, err = bench(capsys, "train", "sft", "--task", "gsm8k", "--config", str(bad), "--data-dir",
                         str(fixture_data), "--results-dir", str(tmp_path))
    assert code == 2 and "key 'rank' must be int" in err and err.count("\n") == 1
    code, _, err = bench(capsys, "train", "sft", "--task", "mmlu", "--data-dir", str(fixture_data))
    assert code == 2 and "unknown training task 'mmlu'" in err
    with pytest.raises(SystemExit) as exit_:
        main(["train", "ppo", "--task", "gsm8k"])
    assert exit_.value.code == 2 and "invalid choice: 'ppo'" in capsys.readouterr().err


@pytest.mark.slow  # over 10 s here: left out by make test-fast
def test_sigkill_mid_training_then_rerun_resumes_to_the_same_adapter(tiny_model_dir, tmp_path):
    """kill -9 after a Trainer checkpoint in the third epoch, re-run: training resumes there, logs each step once, and
    ends with the adapter an uninterrupted training gives. The examples are of one length, so each epoch's
    length-grouped order is a fresh shuffle: the resumed epoch must continue its own order, not the first epoch's."""
    import torch
    from safetensors.torch import load_file

    data = tmp_path / "data" / "gsm8k"
    data.mkdir(parents=True)
    data.joinpath("train.jsonl").write_text("".join(
        json.dumps({"question": f"What is {a} plus {b}?", "answer": f"{a} plus {b} is {a + b}.\nThe answer is {a + b}."})
        + "\n" for a in (1, 2) for b in (5, 6, 7, 8)))  # 12 + 19 tokens each with the tiny tokenizer
    config = tmp_path / "resume.json"
    config.write_text(json.dumps({"batch_size": 1, "gradient_accumulation": 1, "learning_rate": 0.01, "rank": 4,
                                  "save_steps": 2, "epochs": 4}))
    args = ["--task", "gsm8k", "--model", str(tiny_model_dir), "--config", str(config), "--data-dir",
            str(tmp_path / "data"), "--name", "tiny", "--dtype", "float32"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"

    # Kill once step 19 is logged: the last checkpoint is step 18, two steps into the third epoch (8 steps each).
    sigkill_after_step(train_in_subprocess(["train", "sft", *args, "--results-dir", str(killed)]),
                       killed / "checkpoints" / "tiny", 19)

    for results in (killed, clean):
        run = train_in_subprocess(["train", "sft", *args, "--results-dir", str(results)])
        assert run.wait(timeout=300) == 0, run.stderr.read()
    record = json.loads((killed / "checkpoints" / "tiny" / "train.json").read_text())
    assert record["resumed"] and record["steps"] == 32
    steps = [int(r["step"]) for r in csv.DictReader((killed / "checkpoints" / "tiny" / "train_log.csv").open())]
    assert steps == list(range(1, 33))
    logs = [[float(r["loss"]) for r in csv.DictReader((r / "checkpoints" / "tiny" / "train_log.csv").open())]
            for r in (killed, clean)]
    assert logs[0] == pytest.approx(logs[1], rel=1e-5)
    resumed, uninterrupted = (load_file(r / "checkpoints" / "tiny" / "adapter_model.safetensors")
                              for r in (killed, clean))
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.allclose(resumed[k], uninterrupted[k], atol=1e-6) for k in resumed)


def test_a_checkpoint_half_written_by_a_kill_is_dropped_and_the_log_cut_back(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(World(), tmp_path) == tmp_path / "checkpoint-4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    log = tmp_path / "train_log.csv"
    log.write_text("step,loss,lr,tokens_per_s\n" + "".join(f"{i},1.0,0.1,5\n" for i in range(1, 7)))
    keep_log_rows(log, 4)
    assert [int(r["step"]) for r in csv.DictReader(log.open())] == [1, 2, 3, 4]
    log.write_text(log.read_text() + "\n5,1.0,0.1,5\n1")  # a blank line, step 5, and step 1x cut short by a kill
    keep_log_rows(log, 5)
    assert [int(r["step"]) for r in csv.DictReader(log.open())] == [1, 2, 3, 4, 5]
    keep_log_rows(log, 0)
    assert not log.exists()
