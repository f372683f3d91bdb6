"""bench/evaluation/lmeval.py: our knowledge numbers are lm-eval's numbers, and lm-eval's own command line agrees."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.cli import main
from bench.evaluation.lmeval import write_configs
from tasks.knowledge import arc_easy


def bench(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow  # over 10 s here: left out by make test-fast
def test_lm_eval_command_line_gives_the_same_answers(capsys, tiny_model_dir, fixture_data, tmp_path):
    configs, out_dir = tmp_path / "configs", tmp_path / "lm_eval_out"
    configs.mkdir()
    write_configs([arc_easy], fixture_data, configs)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                    f"pretrained={tiny_model_dir},dtype=float32", "--device", "cpu", "--tasks", "forgetbench_arc_easy",
                    "--include_path", str(configs), "--limit", "20", "--batch_size", "8", "--log_samples",
                    "--output_path", str(out_dir)], check=True, env=env, capture_output=True, timeout=600)
    results = json.loads(next(out_dir.rglob("results_*.json")).read_text())["results"]["forgetbench_arc_easy"]
    samples = [json.loads(line) for line in next(out_dir.rglob("samples_forgetbench_arc_easy_*.jsonl")).open()]
    theirs = {str(s["doc_id"]): max(range(len(s["filtered_resps"])), key=lambda i: float(s["filtered_resps"][i][0]))
              for s in samples}

    code, _, err = bench(capsys, "eval", str(tiny_model_dir), "--tasks", "arc_easy", "--limit", "20", "--dtype",
                         "float32", "--batch-size", "8", "--data-dir", str(fixture_data), "--results-dir",
                         str(tmp_path / "results"), "--name", "ours")
    assert code == 0, err
    task_dir = tmp_path / "results" / "runs" / "ours" / "arc_easy"
    metrics = json.loads((task_dir / "metrics.json").read_text())
    rows = [json.loads(line) for line in (task_dir / "predictions.jsonl").open()]
    assert metrics["n"] == 20 and len(theirs) == 20
    assert metrics["mean"] == pytest.approx(results["acc,none"])
    assert metrics["others"]["acc_norm"]["mean"] == pytest.approx(results["acc_norm,none"])
    assert {r["id"]: r["answer"] for r in rows} == theirs
    assert all(len(r["loglikelihoods"]) == len(r["requests"]) == 4 and r["score"] in (0.0, 1.0) for r in rows)


def test_knowledge_run_records_a_hub_only_task_as_skipped(capsys, tiny_model_dir, fixture_data, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ("eval", str(tiny_model_dir), "--tasks", "arc_challenge,hellaswag", "--dtype", "float32",
            "--data-dir", str(fixture_data), "--results-dir", str(tmp_path), "--name", "k")
    code, out, err = bench(capsys, *args)
    assert code == 0, err
    run = tmp_path / "runs" / "k"
    skipped = json.loads((run / "hellaswag" / "metrics.json").read_text())
    assert skipped["n"] == 0 and "offline" in skipped["skipped"] and "skipped" in out
    assert json.loads((run / "arc_challenge" / "metrics.json").read_text())["n"] == 3
    assert json.loads((run / "run.json").read_text())["complete"]
    cache = list((tmp_path / "cache" / "lm_eval").glob("*.db"))
    assert cache, "lm-eval's request cache is where a killed run resumes from"

    from bench.execution import runner

    record = (run / "run.json").read_bytes()
    monkeypatch.setattr(runner, "evaluate_harness_task",
                        lambda *a, **k: pytest.fail("a finished run was recomputed"))
    code, _, err = bench(capsys, *args)  # a finished run is reused: nothing runs, nothing is rewritten
    assert code == 0, err
    assert (run / "run.json").read_bytes() == record


def test_knowledge_bad_input_is_one_line(capsys, tiny_model_dir, fixture_data, tmp_path):
    data = tmp_path / "data" / "winogrande"
    data.mkdir(parents=True)
    (data / "validation.jsonl").write_text('{"sentence": "A _ b", "option1": "x", "answer": "1"}\n')
    code, _, err = bench(capsys, "eval", str(tiny_model_dir), "--tasks", "winogrande", "--data-dir",
                         str(tmp_path / "data"), "--results-dir", str(tmp_path / "results"))
    assert code == 2 and err.strip().count("\n") == 0
    assert f"{data / 'validation.jsonl'}:1: missing field 'option2'" in err
    assert not (tmp_path / "results" / "runs").exists() or not any((tmp_path / "results" / "runs").rglob("run.json"))


def test_adapter_reaches_lm_eval(capsys, tiny_model_dir, other_tiny_model_dir, fixture_data, tmp_path):
    from conftest import make_adapter

    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter")
    base = ("eval", str(tiny_model_dir), "--tasks", "arc_challenge", "--dtype", "float32", "--data-dir",
            str(fixture_data), "--results-dir", str(tmp_path / "results"))
    assert bench(capsys, *base, "--name", "base")[0] == 0
    assert bench(capsys, *base, "--name", "tuned", "--adapter", str(adapter))[0] == 0
    rows = {name: [json.loads(line)["loglikelihoods"] for line in
                   (tmp_path / "results" / "runs" / name / "arc_challenge" / "predictions.jsonl").open()]
            for name in ("base", "tuned")}
    assert rows["base"] != rows["tuned"]
    code, _, err = bench(capsys, "eval", str(other_tiny_model_dir), "--tasks", "arc_challenge", "--adapter",
                         str(adapter), "--data-dir", str(fixture_data), "--results-dir", str(tmp_path / "results"))
    last = err.strip().splitlines()[-1]  # above it, only transformers' loading bar
    assert code == 2 and last.startswith("bench: error: --adapter") and "does not fit" in last


def test_rerun_computes_only_the_requests_not_cached(capsys, tiny_model_dir, fixture_data, tmp_path, monkeypatch):
    """What a killed run re-run relies on: lm-eval's request cache, filled request by request."""
    from lm_eval.models.huggingface import HFLM

    seen: list[int] = []
    original = HFLM.loglikelihood
    monkeypatch.setattr(HFLM, "loglikelihood", lambda self, requests, **kw: seen.append(len(requests))
                        or original(self, requests, **kw))
    base = ("eval", str(tiny_model_dir), "--tasks", "arc_easy", "--dtype", "float32", "--data-dir", str(fixture_data),
            "--results-dir", str(tmp_path))
    assert bench(capsys, *base, "--limit", "10", "--name", "first")[0] == 0
    assert bench(capsys, *base, "--name", "all")[0] == 0
    assert seen == [40, 40]  # 10 questions x 4 choices, then only the 10 new ones
    first, full = ([json.loads(line) for line in (tmp_path / "runs" / name / "arc_easy" / "predictions.jsonl").open()]
                   for name in ("first", "all"))
    assert first == full[:10]
