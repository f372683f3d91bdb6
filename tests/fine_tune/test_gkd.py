"""fine_tune/gkd.py and the on-policy loop (fine_tune/onpolicy.py) through `bench train gkd`: a real distillation
between tiny random models, its record, its resume after SIGKILL, its refusals."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from bench.cli import main
from conftest import FIXTURE_DATA, sigkill_after_step, train_in_subprocess

def bench(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


LORA = {"rank": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
        "dropout": 0.0, "batch_size": 2, "gradient_accumulation": 1}


@pytest.fixture(scope="module")
def sft_teacher(tmp_path_factory, tiny_model_dir) -> Path:
    """An SFT adapter on the tiny model, trained hard on the gsm8k fixture: the tiny study's kind of teacher (the
    seed with the SFT adapter), with something the seed does not know."""
    results = tmp_path_factory.mktemp("teacher")
    config = results / "sft.json"
    config.write_text(json.dumps({**LORA, "learning_rate": 0.02, "epochs": 10}))
    assert main(["train", "sft", "--task", "gsm8k", "--model", str(tiny_model_dir), "--config", str(config),
                 "--data-dir", str(FIXTURE_DATA), "--results-dir", str(results), "--dtype", "float32",
                 "--name", "sft"]) == 0
    return results / "checkpoints" / "sft"


def test_defaults_are_trls():
    from trl.experimental.gkd import GKDConfig as TRLConfig

    from fine_tune.gkd import GKDConfig

    ours, theirs = GKDConfig(), TRLConfig(output_dir="unused", use_cpu=True, bf16=False)
    assert (ours.lmbda, ours.beta, ours.temperature, ours.max_new_tokens, ours.seq_kd) == \
        (theirs.lmbda, theirs.beta, theirs.temperature, theirs.max_new_tokens, theirs.seq_kd)
    assert not ours.temperature_in_loss  # TRL's compute_loss compares the distributions at temperature 1


def mean_kl_to_teacher(student_dir: Path, adapter: Path | None, teacher_adapter: Path, fixture_data: Path) -> float:
    """Forward KL(teacher || student) per token along the gsm8k fixture's reference responses."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fine_tune.data import load_train_examples, tokenize
    from fine_tune.divergence import generalized_jsd

    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    student = AutoModelForCausalLM.from_pretrained(student_dir)
    if adapter is not None:
        student = PeftModel.from_pretrained(student, adapter)
    teacher = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(student_dir), teacher_adapter)
    examples, _ = load_train_examples("gsm8k", fixture_data)
    values = []
    with torch.no_grad():
        for ex in examples:
            features = tokenize(tokenizer, ex.messages, ex.response, 1024)
            ids = torch.tensor([features["input_ids"]])
            keep = torch.tensor(features["labels"][1:]) != -100
            s, t = student(ids).logits[0, :-1][keep], teacher(ids).logits[0, :-1][keep]
            values.append(generalized_jsd(s, t, 0.0))
    return float(torch.cat(values).mean())


def gkd_args(student: Path, teacher: Path, data: Path, results: Path, *extra: str) -> list[str]:
    return ["train", "gkd", "--task", "gsm8k", "--model", str(student), "--teacher", str(teacher), "--data-dir",
            str(data), "--results-dir", str(results), "--dtype", "float32", "--max-new-tokens", "24", *extra]


def test_gkd_lowers_the_students_kl_to_the_teacher(capsys, tiny_model_dir, sft_teacher, fixture_data, tmp_path):
    config = tmp_path / "gkd.json"
    config.write_text(json.dumps({**LORA, "learning_rate": 0.02, "epochs": 8, "lmbda": 1.0, "beta": 0.5}))
    code, out, err = bench(capsys, *gkd_args(tiny_model_dir, tiny_model_dir, fixture_data, tmp_path, "--config",
                                             str(config), "--name", "gkd", "--teacher-adapter", str(sft_teacher)))
    assert code == 0, err
    out_dir = tmp_path / "checkpoints" / "gkd"
    before = mean_kl_to_teacher(tiny_model_dir, None, sft_teacher, fixture_data)
    after = mean_kl_to_teacher(tiny_model_dir, out_dir, sft_teacher, fixture_data)
    assert after < 0.8 * before, (before, after)

    record = json.loads((out_dir / "train.json").read_text())
    # Pinned (tiny model and teacher, seeded samples; the log rounds to 6 decimals): a change someone must mean.
    assert [float(r["loss"]) for r in csv.DictReader((out_dir / "train_log.csv").open())][:2] == pytest.approx(
        [0.003157, 0.001729], abs=2e-6)
    assert record["final_loss"] == pytest.approx(0.000124, abs=2e-6)
    assert record["method"] == "gkd" and record["steps"] == 16 and record["fraction_on_policy"] == 1.0
    assert record["teacher"]["adapter"] == str(sft_teacher) and len(record["teacher"]["adapter_sha256"]) == 64
    assert (record["lmbda"], record["beta"], record["temperature"], record["loss_temperature"]) == (1.0, 0.5, 0.9, 1.0)
    assert record["tokens_this_run"]["generated_tokens"] > 0 and record["peak_memory_mb"] > 0
    assert record["identity"]["teacher_adapter_sha256"] == record["teacher"]["adapter_sha256"]
    log = list(csv.DictReader((out_dir / "train_log.csv").open()))
    assert [int(r["step"]) for r in log] == list(range(1, 17)) and all(r["on_policy"] == "1.0" for r in log)
    assert float(log[-1]["kl_to_teacher"]) < float(log[0]["kl_to_teacher"])
    assert (out_dir / "loss.png").is_file() and not (out_dir / "state").exists()
    assert "adapter:" in out


def test_epochs_too_few_for_one_step_is_one_line_and_writes_no_checkpoint(capsys, tiny_model_dir, fixture_data,
                                                                          tmp_path):
    code, _, err = bench(capsys, *gkd_args(tiny_model_dir, tiny_model_dir, fixture_data, tmp_path, "--limit", "2",
                                           "--epochs", "0.1", "--name", "none"))
    assert code == 2 and err == "bench: error: 0.1 epochs of 2 examples make no training step\n", "before any model loads"
    assert not (tmp_path / "checkpoints" / "none" / "train.json").exists()
    with pytest.raises(SystemExit) as exit:
        main(gkd_args(tiny_model_dir, tiny_model_dir, fixture_data, tmp_path, "--epochs", "0"))
    assert exit.value.code == 2 and "argument --epochs: must be above 0, got 0" in capsys.readouterr().err


def test_lambda_zero_trains_on_the_dataset_and_seq_kd_on_the_teachers_samples(capsys, tiny_model_dir, fixture_data,
                                                                              tmp_path):
    for name, extra in (("dataset", ("--lmbda", "0")), ("seq-kd", ("--lmbda", "0", "--seq-kd"))):
        code, _, err = bench(capsys, *gkd_args(tiny_model_dir, tiny_model_dir, fixture_data, tmp_path, "--epochs",
                                               "1", "--name", name, *extra))
        assert code == 0, err
    dataset = json.loads((tmp_path / "checkpoints" / "dataset" / "train.json").read_text())
    seq_kd = json.loads((tmp_path / "checkpoints" / "seq-kd" / "train.json").read_text())
    assert dataset["fraction_on_policy"] == seq_kd["fraction_on_policy"] == 0.0
    assert dataset["tokens_this_run"]["generated_tokens"] == 0 and seq_kd["tokens_this_run"]["generated_tokens"] > 0


def test_the_engine_samples_from_the_adapter_weights_of_the_step(tiny_model_dir):
    """Greedy through the engine on the LoRA-wrapped student equals transformers' generate on the same weights."""
    from bench.types import GenerationConfig
    from fine_tune.common import LoRA
    from fine_tune.onpolicy import load_student

    student = load_student(str(tiny_model_dir), LoRA(rank=4), 42, "float32", "chat")
    with torch.no_grad():
        for name, p in student.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter: B is no longer zero
    student.model.eval()
    prompts = [student.tokenizer(text, add_special_tokens=False)["input_ids"] for text in ("What is 2+2?", "Hi")]
    engine = student.engine("step-1")
    assert engine.packed
    ours = engine.sample_ids(prompts, GenerationConfig(max_new_tokens=12), seeds=[0, 0])
    for prompt, tokens in zip(prompts, ours):
        reference = student.model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                           eos_token_id=student.tokenizer.eos_token_id)[0, len(prompt):].tolist()
        assert tokens == reference
    with student.model.disable_adapter():
        base = engine.sample_ids(prompts, GenerationConfig(max_new_tokens=12), seeds=[0, 0])
    assert base != ours


def test_a_bf16_run_samples_from_a_copy_synchronised_every_step(tiny_model_dir):
    from fine_tune.common import LoRA
    from fine_tune.onpolicy import load_student

    student = load_student(str(tiny_model_dir), LoRA(rank=4), 42, "bfloat16", "chat")
    assert student.inference is not student.model and student.inference.dtype == torch.bfloat16
    with torch.no_grad():
        for name, p in student.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    student.sync()
    copies = dict(student.inference.named_parameters())
    lora = [(name, p) for name, p in student.model.named_parameters() if "lora_" in name]
    assert lora and all(torch.equal(copies[name], p.to(copies[name].dtype)) for name, p in lora)
    assert student.engine("step-1").model.model is student.inference


@pytest.mark.slow  # over 10 s here: left out by make test-fast
def test_sigkill_mid_training_then_rerun_resumes_to_the_same_adapter(tiny_model_dir, sft_teacher, fixture_data,
                                                                     tmp_path):
    from safetensors.torch import load_file

    config = tmp_path / "resume.json"
    config.write_text(json.dumps({"batch_size": 1, "gradient_accumulation": 2, "learning_rate": 0.01, "rank": 4,
                                  "save_steps": 2, "epochs": 6}))
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    args = lambda results: gkd_args(tiny_model_dir, tiny_model_dir, fixture_data, results, "--config", str(config),
                                    "--name", "gkd", "--teacher-adapter", str(sft_teacher))
    sigkill_after_step(train_in_subprocess(args(killed)), killed / "checkpoints" / "gkd", 3)
    for results in (killed, clean):
        run = train_in_subprocess(args(results))
        assert run.wait(timeout=300) == 0, run.stderr.read()
    record = json.loads((killed / "checkpoints" / "gkd" / "train.json").read_text())
    assert record["resumed"] and record["steps"] == 12
    rows = list(csv.DictReader((killed / "checkpoints" / "gkd" / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    clean_rows = list(csv.DictReader((clean / "checkpoints" / "gkd" / "train_log.csv").open()))
    assert [r["loss"] for r in rows] == [r["loss"] for r in clean_rows]
    resumed, uninterrupted = (load_file(r / "checkpoints" / "gkd" / "adapter_model.safetensors") for r in (killed, clean))
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.allclose(resumed[k], uninterrupted[k], atol=1e-6) for k in resumed)


@pytest.fixture(scope="module")
def wider_vocab_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model with 8 more rows of logits than its tokenizer: another vocabulary size."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = tmp_path_factory.mktemp("wider")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.resize_token_embeddings(model.config.vocab_size + 8)
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(directory)
    return directory


def test_bad_input_is_one_line(capsys, tiny_model_dir, other_tiny_model_dir, wider_vocab_dir, fixture_data, tmp_path):
    base = ["--task", "gsm8k", "--model", str(tiny_model_dir), "--data-dir", str(fixture_data), "--results-dir",
            str(tmp_path), "--dtype", "float32"]
    code, _, err = bench(capsys, "train", "gkd", *base)
    assert code == 2 and "needs --teacher MODEL" in err
    code, _, err = bench(capsys, "train", "gkd", *base, "--teacher", str(wider_vocab_dir), "--name", "wide")
    assert code == 2 and f"--teacher {wider_vocab_dir}: its vocabulary" in err and "is not the student's" in err
    assert len([line for line in err.splitlines() if line.startswith("bench:")]) == 1
    code, _, err = bench(capsys, "train", "sft", *base, "--teacher", str(tiny_model_dir))
    assert code == 2 and "only gkd has a separate teacher" in err
    code, _, err = bench(capsys, "train", "sft", *base, "--lmbda", "0.5")
    assert code == 2 and "--lmbda: not an option of sft" in err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"beta": 1.5}))
    code, _, err = bench(capsys, "train", "gkd", *base, "--teacher", str(tiny_model_dir), "--config", str(bad))
    assert code == 2 and "gkd: beta must be in [0, 1], got 1.5" in err
    for option, value, message in (("--lmbda", "1.5", "must be in [0, 1]"), ("--beta", "-0.1", "must be at least 0"),
                                   ("--temperature", "0", "must be above 0")):
        with pytest.raises(SystemExit) as exit_:
            main(["train", "gkd", *base, "--teacher", str(tiny_model_dir), option, value])
        assert exit_.value.code == 2 and message in capsys.readouterr().err

    # an adapter trained on another base
    sft = ["train", "sft", "--task", "gsm8k", "--model", str(other_tiny_model_dir), "--data-dir", str(fixture_data),
           "--results-dir", str(tmp_path), "--dtype", "float32", "--epochs", "1", "--name", "other-sft"]
    assert bench(capsys, *sft)[0] == 0
    adapter = tmp_path / "checkpoints" / "other-sft"
    code, _, err = bench(capsys, "train", "gkd", *base, "--teacher", str(tiny_model_dir), "--teacher-adapter",
                         str(adapter), "--name", "mismatch")
    assert code == 2 and f"--teacher-adapter {adapter}: trained on other base weights than model" in err
    code, _, err = bench(capsys, "train", "gkd", *base, "--teacher", str(tiny_model_dir), "--teacher-adapter",
                         str(tmp_path), "--name", "mismatch")
    assert code == 2 and "not a PEFT adapter" in err
