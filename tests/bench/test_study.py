"""bench/study.py and `bench reproduce`: profiles are data; the paper profile is the study's; a tiny study runs
end to end and a second run reuses everything."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import asdict

import pytest

from conftest import SHARED
from bench.cli import main
from bench.machine import describe, machine
from bench.study import load_profile
from bench.types import BenchError

METHODS = SHARED / "docs" / "methods.md"


@pytest.mark.skipif(not METHODS.is_file(), reason="needs ../shared/docs/methods.md beside the checkout")
def test_paper_profile_is_the_studys_configuration_line_by_line():
    text = METHODS.read_text()
    training = next(line for line in text.splitlines() if line.startswith("Training (scripts/"))
    paper = load_profile("paper")
    assert paper.model.endswith(re.search(r"(Llama-2-7b-chat-hf)", training).group(1))
    assert f"LoRA rank {paper.sft['rank']}, alpha {paper.sft['alpha']}, dropout {paper.sft['dropout']}" in training
    assert f"targets {','.join(paper.sft['target_modules'])}" in training
    assert f"lr {paper.sft['learning_rate']:.0e}".replace("e-0", "e-") in training
    assert f"{paper.sft['scheduler']}" in training and "bf16" in training and paper.dtype == "bfloat16"
    assert f"per-device batch {paper.sft['batch_size']} x grad-accum {paper.sft['gradient_accumulation']}" in training
    assert f"epochs {paper.sft['epochs']} for {paper.train_task}" in training
    assert paper.train_task == "gsm8k" and paper.limit is None and paper.train_limit is None
    assert set(paper.suites) == {"math", "safety", "code", "tooluse", "knowledge", "drift", "helpfulness"}
    assert paper.judge == "alpaca_eval_gpt4"  # the study's annotator
    assert "Prompt format for training and evaluation: the Alpaca template (section 2), except math" in training
    assert paper.prompt_format == "study"


@pytest.mark.parametrize("name", ["tiny", "paper", "tiny-helpfulness", "tiny-seeds", "small", "small-seeds"])
def test_shipped_profiles_name_known_tasks_and_valid_training(name):
    from fine_tune import METHODS
    from fine_tune.common import config_from_dict
    from tasks import TASKS, select_tasks

    profile = load_profile(name)
    assert select_tasks(profile.suites, profile.tasks) and profile.train_task in TASKS
    assert set(profile.task_limits) <= {t.name for t in select_tasks(profile.suites, profile.tasks)}
    for method in profile.methods:
        config_from_dict(profile.train_config(method), f"profile {name} [{method}]", METHODS[method].config)
    assert "gkd" not in profile.methods or profile.teacher  # the tiny study: the seed; the paper: a larger model


PROFILE_BASE = 'model = "default"\ntrain_task = "gsm8k"\n'


@pytest.mark.parametrize("extra, message", [
    ('suites = ["math"]\nlimt = 3\n', "unknown key 'limt'"),
    ('suites = "math"\n', "key 'suites' must be list"),
    ("", "name the evaluation in 'suites' or 'tasks'"),
    ('suites = ["math"]\nprompt_format = "alpaca"\n', "key 'prompt_format' must be one of chat, study"),
    ('suites = ["math"]\nmethods = ["sft", "ppo"]\n', "key 'methods': unknown method 'ppo'"),
    ('suites = ["math"]\nmethods = ["gkd", "sft"]\nteacher_adapter = "sft"\n',
     "names method 'sft', which must be trained before gkd"),
    ('suites = ["math"]\nlimit = 0\n', "key 'limit' must be a whole number of at least 1, got 0"),
    ('suites = ["math"]\ntrain_limit = -1\n', "key 'train_limit' must be a whole number of at least 1, got -1"),
    ('suites = ["math"]\nbatch_size = 0\n', "key 'batch_size' must be a whole number of at least 1"),
    ('suites = ["math"]\n[task_limits]\ngsm8k = "8"\n', "key 'task_limits' \\(gsm8k\\) must be a whole number of "
     "at least 1, got '8'"),
    ('suites = ["math"]\n[max_new_tokens]\nifeval = 0\n', "key 'max_new_tokens' \\(ifeval\\) must be a whole number"),
    ('suites = ["math", 3]\n', "key 'suites' must be a list of names"),
    ('suites = ["math"]\ndtype = "bf16"\n', "key 'dtype' must be one of auto, bfloat16, float32"),
])
def test_profile_errors_name_the_key(tmp_path, extra, message):
    bad = tmp_path / "bad.toml"
    bad.write_text(PROFILE_BASE + extra)
    with pytest.raises(BenchError, match=message):
        load_profile(str(bad))


@pytest.mark.parametrize("extra, message", [
    ('suites = ["maths"]\n', "--profile .*bad.toml: unknown suite 'maths'"),
    ('tasks = ["gsm8kk"]\n', "--profile .*bad.toml: unknown task 'gsm8kk'"),
    ('suites = ["math"]\n[task_limits]\nifeval = 5\n', "--profile .*bad.toml: key 'task_limits': ifeval not among the "
     "selected tasks"),
    ('suites = ["math"]\n[max_new_tokens]\ndrift = 5\n', "key 'max_new_tokens': drift not among"),
    ('suites = ["math"]\n[gkd]\nbogus = 1\n', "--profile .*bad.toml \\[sft\\] and \\[gkd\\]: unknown key 'bogus'"),
    ('suites = ["math"]\n[onpolicy_sd]\nmax_new_tokens = 0\n', "\\[onpolicy_sd\\]: key 'max_new_tokens' must be at least 1"),
    ('suites = ["math"]\n[sft]\nrank = 0\n', "--profile .*bad.toml \\[sft\\]: key 'rank' must be at least 1"),
])
def test_a_profile_naming_what_no_stage_could_run_fails_before_the_first_stage(tmp_path, capsys, extra, message):
    """Before, an unknown task or a limit for a task not selected failed at the evaluation, after hours of training."""
    bad = tmp_path / "bad.toml"
    bad.write_text(PROFILE_BASE + extra)
    assert main(["reproduce", "--profile", str(bad), "--results-dir", str(tmp_path / "r")]) == 2
    assert re.search(message, capsys.readouterr().err) and not (tmp_path / "r" / "checkpoints").exists()
    bad.write_text(PROFILE_BASE.replace('train_task = "gsm8k"', 'train_task = "gsm9k"') + 'suites = ["math"]\n')
    assert main(["reproduce", "--profile", str(bad), "--results-dir", str(tmp_path / "r")]) == 2
    assert "key 'train_task': unknown training task 'gsm9k'" in capsys.readouterr().err


def test_unknown_profile_is_an_error():
    with pytest.raises(BenchError, match="no such profile"):
        load_profile("nope")


def test_tiny_study_end_to_end_and_reused(capsys, tiny_model_dir, fixture_data, tmp_path):
    profile = tmp_path / "micro.toml"
    profile.write_text(f'model = "{tiny_model_dir}"\ndtype = "float32"\nprompt_format = "study"\n'
                       'train_task = "gsm8k"\ntrain_limit = 4\nmethods = ["sft", "sdft", "gkd", "onpolicy_sd"]\n'
                       f'teacher = "{tiny_model_dir}"\nteacher_adapter = "sft"\n'
                       'suites = ["math"]\ntasks = ["drift"]\nlimit = 2\n[sft]\nbatch_size = 2\ngradient_accumulation = 1\n'
                       'epochs = 1\n[gkd]\nmax_new_tokens = 8\nlmbda = 1.0\n[onpolicy_sd]\nmax_new_tokens = 8\n'
                       '[task_limits]\ndrift = 3\n[max_new_tokens]\ngsm8k = 7\n')
    args = ["reproduce", "--profile", str(profile), "--data-dir", str(fixture_data), "--results-dir", str(tmp_path)]
    assert main(args) == 0, capsys.readouterr().err
    report = tmp_path / "reports" / "micro"
    table = json.loads((report / "report.json").read_text())
    assert table["runs"] == ["micro-seed", "micro-sft", "micro-sdft", "micro-gkd", "micro-onpolicy_sd"]
    assert table["trained"]["micro-sft"] == table["trained"]["micro-onpolicy_sd"] == "math"
    rows = {(r["task"], r["run"]) for r in table["tasks"]}
    assert ("drift", "micro-sdft") in rows and ("gsm8k", "micro-sft") in rows and ("multiarith", "micro-seed") in rows
    for name in table["runs"]:  # the profile's token cap reaches every evaluation, and is recorded
        run_dir = tmp_path / "runs" / name
        assert json.loads((run_dir / "gsm8k" / "metrics.json").read_text())["generation"]["max_new_tokens"] == 7
        assert json.loads((run_dir / "run.json").read_text())["identity"]["tasks"]["gsm8k"]["generation"][
            "max_new_tokens"] == 7
        assert json.loads((run_dir / "multiarith" / "metrics.json").read_text())["generation"]["max_new_tokens"] == 512
    drift_n = {r["n"] for r in table["tasks"] if r["task"] == "drift"}
    assert drift_n == {3}
    trained = json.loads((tmp_path / "checkpoints" / "micro-sft" / "train.json").read_text())
    assert trained["prompt_format"] == trained["identity"]["prompt_format"] == "study"
    run = tmp_path / "runs" / "micro-sdft"
    assert json.loads((run / "run.json").read_text())["identity"]["prompt_format"] == "study"
    drift_prompt = json.loads((run / "drift" / "predictions.jsonl").read_text().splitlines()[0])["prompt"]
    assert drift_prompt.startswith("Below is an instruction") and "<|im_start|>" not in drift_prompt
    assert "<|im_start|>" in json.loads((run / "gsm8k" / "predictions.jsonl").read_text().splitlines()[0])["prompt"]
    stages = json.loads((report / "stages.json").read_text())
    methods = ("sft", "sdft", "gkd", "onpolicy_sd")
    labels = {*(f"{stage} {m}" for m in methods for stage in ("train", "eval")), "eval seed", "compare"}
    assert set(stages) == labels | {"total", "complete", "cold", "work", "peak_rss_mib", "work_peak_rss_mib", "machine"}
    assert stages["complete"] is True and set(stages["cold"]) == labels - {"compare"}  # the stages with a work record
    for label, entry in stages["cold"].items():  # this invocation did every stage's work
        assert entry["seconds"] == stages[label] and entry["peak_rss_mib"] == stages["peak_rss_mib"][label]
        assert entry["machine"] == describe(machine())
    record = tmp_path / "runs" / "micro-sdft" / "run.json"
    assert stages["cold"]["eval sdft"]["record_sha256"] == hashlib.sha256(record.read_bytes()).hexdigest()
    assert stages["machine"] == machine() == trained["machine"]  # the stage times' machine; an adapter's rounding
    assert set(stages["peak_rss_mib"]) == labels and all(mib > 100 for mib in stages["peak_rss_mib"].values())
    assert set(stages["work_peak_rss_mib"]) == labels - {"compare"}
    assert all(mib > 100 for mib in stages["work_peak_rss_mib"].values()), "train.json and run.json record the peak"
    assert set(stages["work"]["train sdft"]) == {"distil", "training"}
    assert set(stages["work"]["train gkd"]) == {"generation", "teacher", "training"}
    gkd = json.loads((tmp_path / "checkpoints" / "micro-gkd" / "train.json").read_text())
    assert gkd["teacher"]["adapter"] == str(tmp_path / "checkpoints" / "micro-sft")
    assert gkd["config"]["max_new_tokens"] == 8 and gkd["config"]["batch_size"] == 2  # [gkd] over [sft]
    assert set(stages["work"]["eval sft"]) == {"gsm8k", "multiarith", "drift"}
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("already trained") == 4
    again = json.loads((report / "stages.json").read_text())
    assert again["work"] == stages["work"], "a re-run that reuses the work keeps where its time went"
    assert again["work_peak_rss_mib"] == stages["work_peak_rss_mib"]
    assert again["cold"] == stages["cold"], "a re-run that reuses the work keeps the cold stage times"
    assert "peak RSS" in (report / "report.md").read_text()
    shutil.rmtree(tmp_path / "runs" / "micro-sdft")  # work done again is timed again; the rest is kept
    assert main(args) == 0
    third = json.loads((report / "stages.json").read_text())
    assert third["cold"]["eval sdft"]["seconds"] == third["eval sdft"]
    assert third["cold"]["eval sdft"]["record_sha256"] != stages["cold"]["eval sdft"]["record_sha256"]
    assert {k: v for k, v in third["cold"].items() if k != "eval sdft"} == \
        {k: v for k, v in stages["cold"].items() if k != "eval sdft"}


def test_helpfulness_profile_trains_what_the_tiny_study_trains():
    """The two CPU profiles read the same fine-tunes: the same seed, data and SFT settings."""
    tiny, helpfulness = load_profile("tiny"), load_profile("tiny-helpfulness")
    assert (helpfulness.model, helpfulness.train_task, helpfulness.train_limit, helpfulness.sft) == \
        (tiny.model, tiny.train_task, tiny.train_limit, tiny.sft)
    assert helpfulness.tasks == ["alpaca_eval"] and helpfulness.judge is None  # the default local judge


def test_a_seeded_study_trains_each_method_per_seed_and_reads_them_together(capsys, tiny_model_dir, fixture_data,
                                                                             tmp_path):
    profile = tmp_path / "seeded.toml"
    profile.write_text(f'model = "{tiny_model_dir}"\ndtype = "float32"\ntrain_task = "gsm8k"\ntrain_limit = 4\n'
                       'methods = ["sft", "gkd"]\ntraining_seeds = [0, 1]\n'
                       f'teacher = "{tiny_model_dir}"\nteacher_adapter = "sft"\n'
                       'tasks = ["gsm8k", "drift"]\nlimit = 2\n[sft]\nbatch_size = 2\ngradient_accumulation = 1\n'
                       'epochs = 1\n[gkd]\nmax_new_tokens = 4\n')
    args = ["reproduce", "--profile", str(profile), "--data-dir", str(fixture_data), "--results-dir", str(tmp_path)]
    assert main(args) == 0, capsys.readouterr().err
    names = ["seeded-sft-s0", "seeded-sft-s1", "seeded-gkd-s0", "seeded-gkd-s1"]
    for name, seed in zip(names, (0, 1, 0, 1)):
        trained = json.loads((tmp_path / "checkpoints" / name / "train.json").read_text())
        assert trained["identity"]["config"]["training_seed"] == seed
    gkd = json.loads((tmp_path / "checkpoints" / "seeded-gkd-s1" / "train.json").read_text())
    assert gkd["teacher"]["adapter"] == str(tmp_path / "checkpoints" / "seeded-sft-s1"), "the same seed's SFT teacher"
    report = json.loads((tmp_path / "reports" / "seeded" / "report.json").read_text())
    assert report["runs"][:5] == ["seeded-seed", *names]
    assert "seeded-sft (2 seeds)" in report["runs"] and "seeded-gkd (2 seeds)" in report["runs"]
    assert {(v["a"], v["b"]) for v in report["verdict"]} == {("seeded-sft (2 seeds)", "seeded-gkd (2 seeds)")}
    stages = json.loads((tmp_path / "reports" / "seeded" / "stages.json").read_text())
    assert "train sft-s1" in stages and "eval gkd-s0" in stages


def test_seeds_must_be_distinct_whole_numbers(tmp_path):
    profile = tmp_path / "p.toml"
    profile.write_text('model = "default"\ntrain_task = "gsm8k"\ntasks = ["gsm8k"]\ntraining_seeds = [0, 0]\n')
    with pytest.raises(BenchError, match="key 'training_seeds' must be a list of distinct whole numbers"):
        load_profile(str(profile))


def test_the_seeded_tiny_profile_is_the_tiny_study_over_three_seeds():
    tiny, seeded = load_profile("tiny"), load_profile("tiny-seeds")
    assert seeded.training_seeds == [0, 1, 2] and seeded.methods == ["sft", "sdft"]
    assert (seeded.sft, seeded.tasks, seeded.task_limits, seeded.max_new_tokens, seeded.train_limit) == \
        (tiny.sft, tiny.tasks, tiny.task_limits, tiny.max_new_tokens, tiny.train_limit)
    assert load_profile("paper").training_seeds == [0, 1, 2]


def test_the_seeded_small_profile_is_the_small_study_and_its_first_seed_the_trainers_default():
    from fine_tune.common import Optimization

    small, seeded = load_profile("small"), load_profile("small-seeds")
    assert seeded.training_seeds[0] == Optimization().training_seed and len(seeded.training_seeds) > 1
    assert {**asdict(seeded), "name": "small", "training_seeds": None} == {**asdict(small), "training_seeds": None}


def distil_profile(tmp_path, seed_dir, teacher_dir):
    profile = tmp_path / "distil.toml"
    profile.write_text(f'model = "{seed_dir}"\ndtype = "float32"\ntrain_task = "gsm8k"\ntrain_limit = 8\n'
                       f'methods = ["gkd"]\nteacher = "{teacher_dir}"\nteacher_adapter = "sft"\n'
                       'tasks = ["gsm8k"]\nlimit = 2\n[sft]\nbatch_size = 2\ngradient_accumulation = 1\n'
                       'epochs = 1\n[gkd]\nmax_new_tokens = 4\n')
    return profile


@pytest.mark.slow
def test_a_teacher_of_another_model_is_fine_tuned_first_and_distilled_from(capsys, tiny_model_dir, other_tiny_model_dir,
                                                                          fixture_data, tmp_path):
    """The GKD paper's setup: the teacher (a bigger model of the seed's family) fine-tuned on the task, then the
    seed distilled from it; the teacher's fine-tune is a checkpoint of the study, not one of its compared runs. A
    study killed during the teacher's fine-tune and again during GKD resumes to the same adapters and report."""
    import torch
    from safetensors.torch import load_file

    from conftest import sigkill_after_step, train_in_subprocess

    profile = distil_profile(tmp_path, tiny_model_dir, other_tiny_model_dir)
    assert load_profile(str(profile)).teacher_fine_tune() == "sft"
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    args = lambda results: ["reproduce", "--profile", str(profile), "--data-dir", str(fixture_data),
                            "--results-dir", str(results)]
    assert main(args(whole)) == 0, capsys.readouterr().err
    teacher = json.loads((whole / "checkpoints" / "distil-teacher-sft" / "train.json").read_text())
    assert teacher["method"] == "sft" and teacher["model"] == str(other_tiny_model_dir)
    gkd = json.loads((whole / "checkpoints" / "distil-gkd" / "train.json").read_text())
    assert gkd["teacher"]["model"] == str(other_tiny_model_dir)
    assert gkd["teacher"]["adapter"] == str(whole / "checkpoints" / "distil-teacher-sft")
    report = json.loads((whole / "reports" / "distil" / "report.json").read_text())
    assert report["runs"] == ["distil-seed", "distil-gkd"]
    stages = json.loads((whole / "reports" / "distil" / "stages.json").read_text())
    assert list(stages)[:3] == ["train teacher-sft", "train gkd", "eval seed"]
    assert "train teacher-sft" in stages["work"]

    for checkpoint in ("distil-teacher-sft", "distil-gkd"):
        sigkill_after_step(train_in_subprocess(args(killed)), killed / "checkpoints" / checkpoint, 1)
    partial = json.loads((killed / "reports" / "distil" / "stages.json").read_text())
    assert partial["complete"] is False and set(partial["cold"]) == {"train teacher-sft"}  # kept through the kill
    assert main(args(killed)) == 0, capsys.readouterr().err
    stages = json.loads((killed / "reports" / "distil" / "stages.json").read_text())
    assert stages["complete"] is True and stages["cold"]["train teacher-sft"] == partial["cold"]["train teacher-sft"]
    assert stages["cold"]["train gkd"]["seconds"] == stages["train gkd"]
    for checkpoint in ("distil-teacher-sft", "distil-gkd"):  # resumed from the last complete step: float tolerance
        ours, theirs = (load_file(d / "checkpoints" / checkpoint / "adapter_model.safetensors") for d in (killed, whole))
        assert ours.keys() == theirs.keys() and all(torch.allclose(ours[k], theirs[k], atol=1e-6) for k in ours)
    resumed = json.loads((killed / "reports" / "distil" / "report.json").read_text())
    assert [(r["run"], r["score"]) for r in resumed["tasks"]] == [(r["run"], r["score"]) for r in report["tasks"]]


@pytest.mark.slow
def test_the_study_under_torchrun_is_the_study_of_one_process(tiny_model_dir, other_tiny_model_dir, fixture_data,
                                                              tmp_path):
    """`torchrun --nproc-per-node 2 -m bench reproduce`: every training data-parallel, every evaluation sharded and
    merged by rank 0, rank 0 compares; the report holds the one-process study's numbers."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    profile = tmp_path / "duo.toml"
    profile.write_text(f'model = "{tiny_model_dir}"\ndtype = "float32"\ntrain_task = "gsm8k"\ntrain_limit = 4\n'
                       f'methods = ["sft", "gkd"]\nteacher = "{other_tiny_model_dir}"\nsuites = ["math"]\n'
                       'tasks = ["drift"]\nlimit = 2\n[sft]\nbatch_size = 1\ngradient_accumulation = 2\nepochs = 1\n'
                       'dropout = 0.0\n[gkd]\nmax_new_tokens = 8\n[max_new_tokens]\ngsm8k = 7\nmultiarith = 7\n')
    reports = {}
    for processes in (1, 2):
        results = tmp_path / f"p{processes}"
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"] \
            if processes > 1 else []
        done = subprocess.run([sys.executable, *launcher, "-m", "bench", "reproduce", "--profile", str(profile),
                               "--data-dir", str(fixture_data), "--results-dir", str(results)], cwd=ROOT,
                              capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("stage seconds:") == 1  # rank 0 alone reports and writes stages.json
        reports[processes] = json.loads((results / "reports" / "duo" / "report.json").read_text())
    one, two = ({(r["task"], r["run"]): r for r in reports[p]["tasks"]} for p in (1, 2))
    assert one.keys() == two.keys() and ("gsm8k", "duo-gkd") in one
    for key, row in one.items():
        assert two[key]["n"] == row["n"]
        for field in ("score", "delta"):
            if row.get(field) is not None:
                assert two[key][field] == pytest.approx(row[field], rel=1e-5, abs=1e-6), (key, field)
    for name in ("duo-sft", "duo-gkd"):
        records = [json.loads((tmp_path / f"p{p}" / "checkpoints" / name / "train.json").read_text()) for p in (1, 2)]
        assert [r["world_size"] for r in records] == [1, 2] and records[0]["identity"] == records[1]["identity"]
