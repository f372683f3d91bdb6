"""fine_tune/common.py, what every trainer shares: configs from flat keys, a training's identity (what makes a
finished checkpoint reusable), the train log, and the adapter's staged save."""
from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest

from bench.types import BenchError
from fine_tune.common import (TrainJob, append_log_row, config_from_dict, flat, identity, load_config,
                              recorded_identity, save_adapter, trained_already)
from fine_tune.gkd import GKDConfig
from fine_tune.sft import SFTConfig


def test_study_defaults():
    lora, opt = SFTConfig().lora, SFTConfig().optimization
    assert (lora.rank, lora.alpha, lora.dropout, lora.target_modules) == (8, 16, 0.1, ("q_proj", "v_proj"))
    assert (opt.learning_rate, opt.scheduler, opt.batch_size, opt.gradient_accumulation) == (1e-4, "cosine", 2, 4)
    assert opt.epochs_for("gsm8k") == opt.epochs_for("openfunction") == 5 and opt.epochs_for("alpaca") == 2


def test_config_keys_and_types_are_checked():
    config = config_from_dict({"rank": 4, "target_modules": ["q_proj"], "epochs": 1}, "f", SFTConfig)
    assert (config.lora.rank, config.lora.target_modules, config.optimization.epochs) == (4, ("q_proj",), 1)
    assert config.lora.alpha == 16  # untouched keys keep their defaults
    with pytest.raises(BenchError, match="f: unknown key 'rnak'"):
        config_from_dict({"rnak": 4}, "f", SFTConfig)
    with pytest.raises(BenchError, match="f: key 'learning_rate' must be float, got str"):
        config_from_dict({"learning_rate": "1e-4"}, "f", SFTConfig)
    with pytest.raises(BenchError, match="f: key 'rank' must be int, got bool"):
        config_from_dict({"rank": True}, "f", SFTConfig)
    with pytest.raises(BenchError, match="f: unknown key 'lmbda'"):
        config_from_dict({"lmbda": 0.5}, "f", SFTConfig)


@pytest.mark.parametrize("key, value, message", [
    ("epochs", 0, "must be finite and above 0, got 0"),
    ("epochs", float("inf"), "must be finite and above 0, got inf"),
    ("learning_rate", -1e-4, "must be finite and above 0"),
    ("scheduler", "cosinee", "must be one of linear, cosine, "),
    ("warmup_ratio", 1.0, "must be at least 0 and below 1, got 1.0"),
    ("rank", 0, "must be at least 1, got 0"),
    ("dropout", -0.1, "must be at least 0 and below 1"),
    ("gradient_accumulation", 0, "must be at least 1"),
    ("weight_decay", -0.01, "must be finite and at least 0, got -0.01"),
])
def test_a_value_no_trainer_can_run_is_an_error_naming_the_key(key, value, message):
    """Epochs 0 would write an untrained adapter as complete; a warmup over every step never trains at full rate."""
    with pytest.raises(BenchError, match=f"f: key '{key}' {message}"):
        config_from_dict({key: value}, "f", GKDConfig)


def test_flat_keys_round_trip_over_a_base():
    """A method's keys are flat in files and train.json; over a base config only the named keys change."""
    base = config_from_dict({"rank": 16, "lmbda": 1.0}, "f", GKDConfig)
    config = config_from_dict({"epochs": 2}, "g", GKDConfig, base)
    assert (config.lora.rank, config.lmbda, config.optimization.epochs) == (16, 1.0, 2)
    assert config_from_dict(flat(config), "h", GKDConfig) == config
    assert len(flat(GKDConfig())) == 20 and "training_seed" in flat(SFTConfig())


@pytest.mark.parametrize("name, text, message", [
    ("missing.toml", None, "no such file"),
    ("bad.toml", "rank = ", "not valid TOML"),
    ("bad.json", "{rank: 4}", "not valid JSON"),
    ("list.json", "[1, 2]", "expected a table of keys"),
    ("typo.toml", "rnak = 4", "unknown key 'rnak'"),
])
def test_a_bad_config_file_is_one_line_naming_it(tmp_path, name, text, message):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(BenchError, match=f"--config {path}: {message}"):
        load_config(path, SFTConfig)
    (tmp_path / "good.toml").write_text("rank = 4\nlearning_rate = 1e-3\n")
    assert load_config(tmp_path / "good.toml", SFTConfig) == config_from_dict({"rank": 4, "learning_rate": 1e-3}, "",
                                                                              SFTConfig)
    assert load_config(None, SFTConfig) == SFTConfig()


def job(tmp_path: Path, **changes) -> TrainJob:
    values = dict(method="sft", task="gsm8k", model="default", out_dir=tmp_path / "ckpt", examples=[],
                  data_sha256="d" * 64, limit=10)
    return replace(TrainJob(**values), **changes)


def test_a_trainings_identity_is_what_decides_its_weights(tmp_path):
    """Method, task, model, examples, dtype, data and every config key; the prompt format where it is not chat, the
    teacher and its adapter's hash for GKD; not where the checkpoint lives or where the results go."""
    base = identity(job(tmp_path), SFTConfig())
    assert base == {"method": "sft", "task": "gsm8k", "model": "default", "limit": 10, "dtype": "auto",
                    "data_sha256": "d" * 64, "config": json.loads(json.dumps(flat(SFTConfig())))}
    for changed in (dict(task="alpaca"), dict(model="other"), dict(limit=20), dict(dtype="float32"),
                    dict(data_sha256="e" * 64), dict(prompt_format="plain")):
        assert identity(job(tmp_path, **changed), SFTConfig()) != base, changed
    assert identity(job(tmp_path), config_from_dict({"training_seed": 1}, "", SFTConfig)) != base
    assert identity(job(tmp_path, out_dir=tmp_path / "elsewhere", results_dir=tmp_path / "r"), SFTConfig()) == base
    adapter = tmp_path / "teacher"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    gkd = identity(job(tmp_path, method="gkd", teacher="big", teacher_adapter=str(adapter)), GKDConfig())
    (adapter / "adapter_model.safetensors").write_bytes(b"other weights")
    again = identity(job(tmp_path, method="gkd", teacher="big", teacher_adapter=str(adapter)), GKDConfig())
    assert gkd["teacher"] == "big" and gkd["teacher_adapter_sha256"] != again["teacher_adapter_sha256"]


def test_a_finished_checkpoint_is_reused_only_with_its_identity(tmp_path):
    done = job(tmp_path)
    assert not trained_already(done, SFTConfig())
    done.out_dir.mkdir()
    record = identity(done, SFTConfig())
    (done.out_dir / "train.json").write_text(json.dumps({"identity": record}))
    assert trained_already(done, SFTConfig())
    with pytest.raises(BenchError, match="checkpoint ckpt in .* was trained with other settings; choose another"):
        trained_already(job(tmp_path, limit=11), SFTConfig())
    old = {**record, "config": {("seed" if k == "training_seed" else k): v for k, v in record["config"].items()}}
    assert recorded_identity({"identity": old}) == record, "checkpoints from before training_seed stay valid"


def test_checkpoints_recorded_before_weight_decay_was_a_key_keep_the_decay_they_were_trained_with(tmp_path):
    """The on-policy trainers' AdamW took torch's default 0.01 and SFT's Trainer 0 before `weight_decay` existed:
    such a checkpoint is reused where a profile asks for that decay, and refused where it asks for another."""
    for method, config, trained_with in (("sft", SFTConfig(), 0.0), ("gkd", GKDConfig(), 0.01)):
        done = job(tmp_path, method=method, out_dir=tmp_path / method, **({"teacher": "big"} if method == "gkd" else {}))
        done.out_dir.mkdir()
        record = identity(done, config_from_dict({"weight_decay": trained_with}, "f", type(config)))
        del record["config"]["weight_decay"]  # as recorded before
        (done.out_dir / "train.json").write_text(json.dumps({"identity": record}))
        assert trained_already(done, config_from_dict({"weight_decay": trained_with}, "f", type(config)))
        if trained_with:
            with pytest.raises(BenchError, match="was trained with other settings"):
                trained_already(done, config)  # today's default, 0


def test_an_unfinished_training_resumes_only_under_the_settings_it_started_with(tmp_path):
    """A killed training leaves its resume state: a re-run with another learning rate (or limit) must not continue
    it into a hybrid adapter recorded under the new settings."""
    from fine_tune.common import STARTED, begin_training, finish

    started = job(tmp_path)
    started.out_dir.mkdir()
    other = config_from_dict({"learning_rate": 1e-3}, "f", SFTConfig)
    begin_training(started, other)
    begin_training(started, SFTConfig())  # nothing saved yet (stopped on bad input, say): the new settings start
    (started.out_dir / "trainer" / "checkpoint-50").mkdir(parents=True)  # what a kill leaves
    begin_training(started, SFTConfig())  # the same settings: resumes
    with pytest.raises(BenchError, match="checkpoint ckpt in .* holds an unfinished training with other settings"):
        begin_training(started, other)
    with pytest.raises(BenchError, match="holds an unfinished training with other settings"):
        begin_training(job(tmp_path, limit=11), SFTConfig())
    (started.out_dir / STARTED).unlink()
    with pytest.raises(BenchError, match="holds an unfinished training whose settings were not recorded"):
        begin_training(started, SFTConfig())
    finish(started.out_dir, {"identity": identity(started, SFTConfig()), "method": "sft", "task": "gsm8k"})
    assert not (started.out_dir / STARTED).exists() and trained_already(started, SFTConfig())


def test_an_unfinished_training_resumes_only_in_the_dtype_it_started_in(tmp_path, monkeypatch):
    """`--dtype auto` is bf16 on one machine and fp32 on another: resume state computed in bf16 must not be continued
    in fp32 (a results directory copied to a machine without bf16) into an adapter of neither."""
    from bench.generation import models
    from fine_tune.common import COMPUTED_IN, STARTED, begin_training

    started = job(tmp_path)
    monkeypatch.setattr(models, "resolve_dtype", lambda dtype: "bfloat16" if dtype == "auto" else dtype)
    begin_training(started, SFTConfig())
    assert json.loads((started.out_dir / STARTED).read_text())[COMPUTED_IN] == "bfloat16"
    (started.out_dir / "trainer" / "checkpoint-50").mkdir(parents=True)
    begin_training(started, SFTConfig())  # the same machine: resumes
    monkeypatch.setattr(models, "resolve_dtype", lambda dtype: "float32" if dtype == "auto" else dtype)
    with pytest.raises(BenchError, match=r"checkpoint ckpt in .* holds an unfinished training computed in bfloat16, "
                                         r"and --dtype auto is float32 here; resume it where it started"):
        begin_training(started, SFTConfig())
    recorded = json.loads((started.out_dir / STARTED).read_text())
    del recorded[COMPUTED_IN]  # as recorded before the dtype was
    (started.out_dir / STARTED).write_text(json.dumps(recorded))
    begin_training(started, SFTConfig())


def test_a_gkd_checkpoint_recorded_with_the_teacher_adapter_hash_of_before_2a3432b_is_reused(tmp_path):
    from bench.generation.models import unsorted_adapter_sha256

    adapter = tmp_path / "teacher"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"target_modules": ["v_proj", "q_proj"]}')  # PEFT's set order
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    done = job(tmp_path, method="gkd", teacher="big", teacher_adapter=str(adapter))
    done.out_dir.mkdir()
    record = {**identity(done, GKDConfig()), "teacher_adapter_sha256": unsorted_adapter_sha256(adapter)}
    assert record != identity(done, GKDConfig())
    (done.out_dir / "train.json").write_text(json.dumps({"identity": record}))
    assert trained_already(done, GKDConfig())
    (done.out_dir / "train.json").write_text(json.dumps({"identity": {**record, "teacher_adapter_sha256": "0" * 64}}))
    with pytest.raises(BenchError, match="trained with other settings"):
        trained_already(done, GKDConfig())


def test_a_checkpoint_is_refused_when_its_seed_or_teacher_changed_under_the_same_name(tmp_path, tiny_model_dir,
                                                                                     fixture_data):
    """A directory (or Hub snapshot) can change under the same name: a finished GKD checkpoint is reused only while
    the seed's and the teacher's weights and decoding files (tokenizer, chat template) are the ones it trained with;
    a checkpoint recorded before they were hashed is judged on what it recorded."""
    import shutil

    from fine_tune.common import train_job

    seed, teacher = tmp_path / "seed", tmp_path / "teacher"
    shutil.copytree(tiny_model_dir, seed)
    shutil.copytree(tiny_model_dir, teacher)

    def gkd_job():
        return train_job("gkd", "gsm8k", str(seed), "ckpt", tmp_path / "results", str(fixture_data), 2, "float32",
                         "chat", teacher=str(teacher))

    done = gkd_job()
    done.out_dir.mkdir(parents=True)
    record = identity(done, GKDConfig())
    (done.out_dir / "train.json").write_text(json.dumps({"identity": record}))
    assert trained_already(gkd_job(), GKDConfig())
    template = (seed / "chat_template.jinja").read_bytes()
    (seed / "chat_template.jinja").write_bytes(b"System: be brief.\n" + template)
    with pytest.raises(BenchError, match="checkpoint ckpt in .* was trained with other settings"):
        trained_already(gkd_job(), GKDConfig())
    (seed / "chat_template.jinja").write_bytes(template)
    assert trained_already(gkd_job(), GKDConfig())
    weights = next(teacher.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x00\x01")
    with pytest.raises(BenchError, match="was trained with other settings"):
        trained_already(gkd_job(), GKDConfig())
    before = {k: v for k, v in record.items() if k not in ("model_files", "teacher_files")}
    (done.out_dir / "train.json").write_text(json.dumps({"identity": before}))
    assert trained_already(gkd_job(), GKDConfig()), "recorded before the files were hashed: reused"


def test_the_train_log_writes_its_header_once(tmp_path):
    log = tmp_path / "train_log.csv"
    for step in (1, 2):
        append_log_row(log, ["step", "loss"], [step, 0.5 / step])
    assert list(csv.reader(log.open())) == [["step", "loss"], ["1", "0.5"], ["2", "0.25"]]


def test_the_adapter_is_saved_through_a_staging_directory(tmp_path):
    class Saves:
        def save_pretrained(self, directory, **kwargs):
            Path(directory).mkdir(parents=True)
            (Path(directory) / "adapter_model.safetensors").write_text(json.dumps(kwargs))

    out = tmp_path / "ckpt"
    out.mkdir()
    (out / ".adapter-staging").mkdir()  # left by a killed save
    (out / ".adapter-staging" / "stale").write_text("x")
    save_adapter(Saves(), out, safe_serialization=True)
    assert sorted(p.name for p in out.iterdir()) == ["adapter_model.safetensors"]
    assert json.loads((out / "adapter_model.safetensors").read_text()) == {"safe_serialization": True}


@pytest.mark.parametrize("method", ["sft", "onpolicy_sd"])
def test_every_trainer_decays_its_adapter_by_the_configured_weight_decay(method, capsys, tiny_model_dir, fixture_data,
                                                                          tmp_path, monkeypatch):
    """SFT (transformers' Trainer) and the on-policy loop (GKD's too) build AdamW with `weight_decay` (default 0, as
    TRL's trainers; the on-policy loop took torch's 0.01 before), and train.json records it."""
    import torch

    from bench.cli import main

    decays = []
    real = torch.optim.AdamW.__init__

    def recording(self, params, *args, **kwargs):
        real(self, params, *args, **kwargs)
        decays.extend(group["weight_decay"] for group in self.param_groups if group["params"])

    monkeypatch.setattr(torch.optim.AdamW, "__init__", recording)
    for name, decay in (("default", None), ("decayed", 0.1)):
        config = tmp_path / f"{name}.json"
        config.write_text(json.dumps({"batch_size": 2, "gradient_accumulation": 1, "rank": 4, "epochs": 1,
                                      **({"weight_decay": decay} if decay is not None else {})}))
        decays.clear()
        code = main(["train", method, "--task", "gsm8k", "--model", str(tiny_model_dir), "--limit", "2", "--config",
                     str(config), "--data-dir", str(fixture_data), "--results-dir", str(tmp_path), "--name", name,
                     "--dtype", "float32", *(["--max-new-tokens", "8"] if method != "sft" else [])])
        assert code == 0, capsys.readouterr().err
        record = json.loads((tmp_path / "checkpoints" / name / "train.json").read_text())
        assert set(decays) == {decay or 0.0} and record["identity"]["config"]["weight_decay"] == (decay or 0.0)



def test_a_lora_target_the_model_lacks_is_one_line_naming_the_key(tiny_model_dir):
    """Before, peft's NoMatchingPeftModuleError ended the training in a traceback."""
    from transformers import AutoModelForCausalLM

    from fine_tune.common import LoRA, add_lora

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(BenchError, match=r"target_modules: the model has no module named 'nope_proj' \(its linear "
                                         r"layers: down_proj, .*q_proj"):
        add_lora(model, LoRA(target_modules=("q_proj", "nope_proj")))
    adapted = add_lora(model, LoRA(target_modules=("self_attn.q_proj",)))  # peft's dotted suffix
    assert any("lora_A" in name for name, _ in adapted.named_parameters())
