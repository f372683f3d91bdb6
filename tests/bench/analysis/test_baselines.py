"""bench/analysis/baselines.py: a run saved as a committed baseline gates like the run; a re-run's changed predictions
are listed; a broken baseline is one line naming the file and the key."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import main
from conftest import write_run
from test_gate import runs


def test_a_committed_baseline_gates_like_the_run_and_only_on_shared_examples(tmp_path, capsys):
    runs(tmp_path, candidate_lost=12)
    assert main(["baseline", "save", "base", str(tmp_path / "baseline"), "--results-dir", str(tmp_path)]) == 0
    saved = sorted(p.name for p in (tmp_path / "baseline").iterdir())
    assert saved == ["baseline.json", "gsm8k.jsonl", "mmlu.jsonl"]
    assert main(["gate", "cand", "--baseline", str(tmp_path / "baseline"), "--results-dir", str(tmp_path)]) == 1
    write_run(tmp_path, "fewer", {"gsm8k": [(f"q{i}", 1.0) for i in range(40)]})
    capsys.readouterr()
    assert main(["gate", "fewer", "--baseline", str(tmp_path / "baseline"), "--results-dir", str(tmp_path)]) == 0
    assert "gsm8k: gated on the 40 examples both scored (60 in the baseline, 40 in the candidate)" in \
        capsys.readouterr().out


def test_a_changed_prediction_is_listed_with_its_id_and_a_diff(tmp_path):
    """What `bench baseline check` prints when a re-run moved an output."""
    import shutil

    from bench.analysis.baselines import changed_predictions
    from bench.store import read_jsonl, write_jsonl

    runs(tmp_path, candidate_lost=0)
    assert main(["baseline", "save", "base", str(tmp_path / "baseline"), "--results-dir", str(tmp_path)]) == 0
    fresh = tmp_path / "fresh"
    for task in ("gsm8k", "mmlu"):
        rows = read_jsonl(tmp_path / "baseline" / f"{task}.jsonl")
        rows = [{**r, "output": "the answer is 4"} for r in rows]
        if task == "gsm8k":
            rows[3] = {**rows[3], "output": "the answer is 5", "score": 0.0}
        write_jsonl(fresh / task / "predictions.jsonl", rows)
    for task in ("gsm8k", "mmlu"):
        saved = [{**r, "output": "the answer is 4"} for r in read_jsonl(tmp_path / "baseline" / f"{task}.jsonl")]
        write_jsonl(tmp_path / "baseline" / f"{task}.jsonl", saved)
    [change] = changed_predictions(tmp_path / "baseline", fresh)
    assert change.startswith("gsm8k q3: score 1.0 -> 0.0") and "-the answer is 4\n+the answer is 5" in change
    shutil.rmtree(fresh / "mmlu")
    assert any("only in the baseline" in c for c in changed_predictions(tmp_path / "baseline", fresh))


def test_baseline_check_says_when_the_baseline_ran_on_a_machine_that_rounds_differently(tmp_path):
    from bench.analysis.baselines import read_baseline, rounding_note
    from bench.machine import machine

    saved = read_baseline(saved_baseline(tmp_path) / "baseline.json")
    assert saved["machine"] == machine() and rounding_note(saved) is None  # made here: nothing to say
    saved["record"]["machine"] = machine() | {"threads": machine()["threads"] + 1}  # the run's own machine counts
    assert "float rounding may differ" in rounding_note(saved)
    saved["record"].pop("machine")
    saved.pop("machine")
    assert rounding_note(saved).startswith("baseline made on an unrecorded machine")


def saved_baseline(tmp_path):
    runs(tmp_path, candidate_lost=12)
    assert main(["baseline", "save", "base", str(tmp_path / "baseline"), "--results-dir", str(tmp_path)]) == 0
    return tmp_path / "baseline"


@pytest.mark.parametrize("key", ["run", "record", "metrics"])
def test_a_baseline_json_without_a_key_names_the_file_and_the_key(tmp_path, capsys, key):
    baseline = saved_baseline(tmp_path)
    saved = json.loads((baseline / "baseline.json").read_text())
    del saved[key]
    (baseline / "baseline.json").write_text(json.dumps(saved))
    assert main(["gate", "cand", "--baseline", str(baseline), "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"bench: error: {baseline / 'baseline.json'}: missing key {key!r} (baselines are written by " \
                  f"`bench baseline save RUN DIR`)\n"
    assert main(["baseline", "check", str(baseline)]) == 2
    assert f"missing key {key!r}" in capsys.readouterr().err


@pytest.mark.parametrize("broken, message", [
    ("{not json", "not readable JSON"),
    ("[]", "expected a JSON object, got list"),
])
def test_a_baseline_json_that_is_not_an_object_is_one_line(tmp_path, capsys, broken, message):
    baseline = saved_baseline(tmp_path)
    (baseline / "baseline.json").write_text(broken)
    assert main(["gate", "cand", "--baseline", str(baseline), "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bench: error: {baseline / 'baseline.json'}: {message}") and err.count("\n") == 1


def test_a_baseline_row_without_a_score_names_the_file_and_line(tmp_path, capsys):
    baseline = saved_baseline(tmp_path)
    lines = (baseline / "gsm8k.jsonl").read_text().splitlines()
    lines[2] = json.dumps({"id": "q2", "output": None})
    (baseline / "gsm8k.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["gate", "cand", "--baseline", str(baseline), "--results-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"bench: error: {baseline / 'gsm8k.jsonl'}, line 3: needs keys 'id' and 'score'\n"


def test_a_task_without_its_file_is_named(tmp_path, capsys):
    baseline = saved_baseline(tmp_path)
    (baseline / "mmlu.jsonl").unlink()
    assert main(["gate", "cand", "--baseline", str(baseline), "--results-dir", str(tmp_path)]) == 2
    assert "task 'mmlu' in 'metrics' has no mmlu.jsonl beside it" in capsys.readouterr().err


def test_a_baseline_check_reruns_the_saved_limits_token_caps_and_sampling():
    """Each task's own limit (not its n: mmlu's limit is per subject), its token cap and the sampling settings come
    back; a task the run skipped (hellaswag offline) is left out, and drift gets no token cap of its own."""
    from bench.analysis.baselines import rerun_argv
    from bench.cli import _selected_tasks, build_parser

    sampled = {"max_new_tokens": 192, "stop": [], "temperature": 0.7, "seed": 0, "dtype": "float32", "engine": 3}
    identity = {"model": "default", "dtype": "float32", "limit": 5, "tasks": {
        "mmlu": {"n": 285, "harness": {}, "skipped": None},
        "hellaswag": {"n": 0, "harness": {}, "skipped": "Hub-only, offline"},
        "ifeval": {"n": 5, "generation": sampled, "samples": 2},
        "gsm8k": {"n": 3, "generation": {**sampled, "max_new_tokens": 512}, "samples": 2, "limit": 3},
        "drift": {"n": 5, "generation": {**sampled, "temperature": 0.0}, "seed_fingerprint": "abc"}}}
    argv = rerun_argv({"run": "seed", "record": {"identity": identity, "batch_size": 8}}, Path("/tmp/fresh"), "DATA")
    args = build_parser().parse_args(argv)
    assert args.tasks == ["mmlu", "ifeval", "gsm8k", "drift"]
    assert args.task_limits == {"mmlu": 5, "ifeval": 5, "gsm8k": 3, "drift": 5}
    assert args.max_new_tokens == {"ifeval": 192, "gsm8k": 512}
    assert (args.temperature, args.samples, args.batch_size, args.data_dir) == (0.7, 2, 8, "DATA")
    caps = {t.name: t.generation.max_new_tokens for t in _selected_tasks(args) if hasattr(t, "generation")}
    assert caps["ifeval"] == 192 and caps["gsm8k"] == 512
