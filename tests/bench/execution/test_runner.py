from __future__ import annotations

import sys

import pytest

from bench.execution.runner import pass_at_k


def test_pass_at_k_is_the_unbiased_estimator() -> None:
    # n=5 samples: problems with 5, 0 and 1 correct
    result = pass_at_k([5, 0, 1], 5)
    assert set(result) == {"pass@1", "pass@5"}
    assert result["pass@1"] == pytest.approx((1 + 0 + 0.2) / 3)
    assert result["pass@5"] == pytest.approx((1 + 0 + 1) / 3)
    # n=10, c=2, k=5: 1 - C(8,5)/C(10,5) = 1 - 56/252
    assert pass_at_k([2], 10)["pass@5"] == pytest.approx(1 - 56 / 252)


@pytest.mark.parametrize("change, differs", [
    ((), None),
    (("--max-new-tokens", "gsm8k=5"), "tasks"),
    (("--temperature", "0.7"), "tasks"),
    (("--dtype", "bfloat16"), "dtype"),
    (("--prompt-format", "study"), "prompt_format"),
    (("--limit", "3"), "limit"),
    (("--batch-size", "1"), None),  # how the engine batches is not what was measured
])
def test_what_makes_a_finished_run_reusable(capsys, tiny_model_dir, fixture_data, tmp_path, change, differs):
    """run_identity: the same command reuses the finished run and rewrites nothing; a setting that changes what
    was measured is an error naming it, never a silent mix of two runs under one name."""
    from bench.cli import main

    argv = ["eval", str(tiny_model_dir), "--tasks", "gsm8k", "--limit", "2", "--dtype", "float32", "--data-dir",
            str(fixture_data), "--results-dir", str(tmp_path), "--name", "run"]
    assert main(argv) == 0
    record = (tmp_path / "runs" / "run" / "run.json").read_bytes()
    capsys.readouterr()
    again = list(argv)
    for option, value in zip(change[::2], change[1::2]):
        if option in again:
            again[again.index(option) + 1] = value
        else:
            again += [option, value]
    code = main(again)
    err = capsys.readouterr().err
    if differs is None:
        assert code == 0 and (tmp_path / "runs" / "run" / "run.json").read_bytes() == record
    else:
        assert code == 2 and "is complete with other settings" in err and differs in err.split("(")[-1], err


def test_a_changed_data_file_is_another_run(capsys, tiny_model_dir, fixture_data, tmp_path):
    import shutil

    from bench.cli import main

    data = tmp_path / "data"
    shutil.copytree(fixture_data, data)
    argv = ["eval", str(tiny_model_dir), "--tasks", "gsm8k", "--limit", "2", "--dtype", "float32", "--data-dir",
            str(data), "--results-dir", str(tmp_path / "results"), "--name", "run"]
    assert main(argv) == 0
    path = data / "gsm8k" / "test.jsonl"
    path.write_text(path.read_text() + "\n")  # the same examples, other bytes: the sha256 is what is recorded
    assert main(argv) == 2 and "tasks differ" in capsys.readouterr().err


def test_a_run_recorded_with_the_adapter_hash_of_before_2a3432b_is_reused(capsys, tiny_model_dir, fixture_data,
                                                                         tmp_path):
    """Runs finished while the adapter hash read PEFT's config bytes (its module list in set order) are the same
    runs: re-running the command reads them back instead of refusing the name; any other adapter is still refused."""
    import hashlib
    import json

    from conftest import make_adapter

    from bench.cli import main
    from bench.generation.models import adapter_sha256, unsorted_adapter_sha256

    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter")
    config_path = adapter / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["target_modules"] = sorted(config["target_modules"], reverse=True)  # as another process wrote it
    config_path.write_text(json.dumps(config, indent=2))
    assert unsorted_adapter_sha256(adapter) != adapter_sha256(adapter)
    argv = ["eval", str(tiny_model_dir), "--adapter", str(adapter), "--tasks", "gsm8k", "--limit", "2", "--dtype",
            "float32", "--data-dir", str(fixture_data), "--results-dir", str(tmp_path), "--name", "run"]
    assert main(argv) == 0
    path = tmp_path / "runs" / "run" / "run.json"
    run = json.loads(path.read_text())
    identity = {k: v for k, v in run["identity"].items() if k != "decoding_sha256"}  # not recorded then
    old = unsorted_adapter_sha256(adapter)
    fingerprint = hashlib.sha256(f"{identity['weights_sha256']}:{old}:float32".encode()).hexdigest()[:16]
    path.write_text(json.dumps({**run, "identity": {**identity, "adapter_sha256": old, "fingerprint": fingerprint}}))
    recorded = path.read_bytes()
    capsys.readouterr()
    assert main(argv) == 0 and path.read_bytes() == recorded
    run["identity"] = {**identity, "adapter_sha256": "0" * 64}
    path.write_text(json.dumps(run))
    assert main(argv) == 2 and "adapter_sha256" in capsys.readouterr().err


def test_the_commit_recorded_is_forgetbenchs_not_that_of_a_repository_it_is_installed_inside(tmp_path, monkeypatch):
    import subprocess
    from pathlib import Path

    from bench.execution import runner

    root = Path(runner.__file__).resolve().parents[2]
    if (root / ".git").exists():  # a checkout (CI's clone): its own commit
        assert runner.git_commit()["commit"] == subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                                                               capture_output=True, text=True).stdout.strip()
    user = tmp_path / "user-repo"
    installed = user / ".venv" / "lib" / "site-packages" / "bench" / "execution" / "runner.py"
    installed.parent.mkdir(parents=True)
    installed.write_text("")
    subprocess.run(["git", "init", "-q", str(user)], check=True)
    subprocess.run(["git", "-C", str(user), "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-q",
                    "--allow-empty", "-m", "user's"], check=True)
    monkeypatch.setattr(runner, "__file__", str(installed))
    assert runner.git_commit() is None


def test_a_model_whose_tokenizer_or_generation_config_changed_is_another_model(capsys, tiny_model_dir, fixture_data,
                                                                              tmp_path):
    """Same weights, another end-of-turn id (as a Hub revision may bring): the cache must not serve the outputs of
    before, and a finished run of the old files is not this run; runs recorded before the decoding files were
    hashed are reused."""
    import json
    import shutil

    from bench.cli import main
    from bench.generation.models import load_model

    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "model")
    argv = ["eval", str(model_dir), "--tasks", "gsm8k", "--limit", "2", "--dtype", "float32", "--data-dir",
            str(fixture_data), "--results-dir", str(tmp_path), "--name", "run"]
    assert main(argv) == 0
    before = load_model(str(model_dir), dtype="float32")
    path = tmp_path / "runs" / "run" / "run.json"
    run = json.loads(path.read_text())
    assert run["identity"]["decoding_sha256"] == before.decoding_sha256
    path.write_text(json.dumps({**run, "identity": {k: v for k, v in run["identity"].items()
                                                    if k != "decoding_sha256"}}))
    recorded = path.read_bytes()
    assert main(argv) == 0 and path.read_bytes() == recorded, "recorded before decoding_sha256: the same run"
    config = json.loads((model_dir / "generation_config.json").read_text())
    (model_dir / "generation_config.json").write_text(json.dumps({**config, "eos_token_id": [0, 1]}))
    after = load_model(str(model_dir), dtype="float32")
    assert after.fingerprint == before.fingerprint and after.cache_id != before.cache_id
    path.write_text(json.dumps(run))
    capsys.readouterr()
    assert main(argv) == 2 and "decoding_sha256" in capsys.readouterr().err


def test_a_change_to_what_computed_a_knowledge_or_judged_run_is_another_run(capsys, tiny_model_dir, fixture_data,
                                                                             tmp_path, monkeypatch):
    """A knowledge task's log-likelihoods come from the engine, and a local judge's verdicts from its model's chat
    template and the engine: a new engine version or judge template is another run, refused under the old name, not
    the finished one reused; runs recorded before these were in the identity are reused."""
    import json

    from bench.cli import main
    from bench.evaluation import lmeval
    from conftest import build_tiny_model

    judge = build_tiny_model(tmp_path / "judge", seed=3)
    results = tmp_path / "results"
    common = ["--limit", "3", "--dtype", "float32", "--data-dir", str(fixture_data), "--results-dir", str(results)]
    knowledge = ["eval", str(tiny_model_dir), "--tasks", "arc_easy", *common, "--name", "k"]
    judged = ["eval", str(tiny_model_dir), "--tasks", "alpaca_eval", *common, "--judge", f"pointwise:{judge}",
              "--judge-pairs", "none", "--name", "j"]
    assert main(knowledge) == 0 and main(judged) == 0
    capsys.readouterr()

    def rerun(argv: list[str]) -> int:
        code = main(argv)
        assert code == 0 or "is complete with other settings (tasks differ)" in capsys.readouterr().err
        return code

    with monkeypatch.context() as patch:
        patch.setattr(lmeval, "ENGINE_VERSION", lmeval.ENGINE_VERSION + 1)
        assert rerun(knowledge) == 2
    template = judge / "chat_template.jinja"
    original = template.read_bytes()
    template.write_bytes(b"Judge strictly.\n" + original)
    assert rerun(judged) == 2
    template.write_bytes(original)
    assert rerun(knowledge) == 0 and rerun(judged) == 0

    for name, drop in (("k", lambda task: {**task, "harness": {k: v for k, v in task["harness"].items()
                                                                if k != "engine"}}),
                       ("j", lambda task: {k: v for k, v in task.items() if k != "judge_cache_id"})):
        path = results / "runs" / name / "run.json"
        record = json.loads(path.read_text())
        record["identity"]["tasks"] = {t: drop(task) for t, task in record["identity"]["tasks"].items()}
        path.write_text(json.dumps(record))
    assert rerun(knowledge) == 0 and rerun(judged) == 0, "recorded before: reused"


def test_an_outcome_is_cached_for_the_interpreter_that_ran_it(tmp_path, monkeypatch):
    """Programs run under this Python: an outcome cached under another version (3.12 removed distutils and imp) is
    run again, not read back."""
    from bench.execution import runner
    from bench.execution.sandbox import Limits, Sandbox
    from bench.generation.cache import Cache

    cache, sandbox = Cache(tmp_path / "cache.sqlite"), Sandbox(Limits(wall_seconds=4.0, cpu_seconds=3), workers=1)
    program = "import sys\nassert sys.version_info[:2] == (%d, %d)\n" % sys.version_info[:2]
    assert runner.execute([program], sandbox, cache)[0]["status"] == "passed"
    ran, run_many = [], sandbox.run_many
    monkeypatch.setattr(sandbox, "run_many", lambda sources: ran.extend(sources) or run_many(sources))
    runner.execute([program], sandbox, cache)
    assert ran == [], "the same interpreter: read back"
    monkeypatch.setattr(runner, "INTERPRETER", "3.99")
    assert runner.execute([program], sandbox, cache)[0]["status"] == "passed" and ran == [program], \
        "another interpreter: run again"
