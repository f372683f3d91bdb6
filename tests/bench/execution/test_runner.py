from __future__ import annotations

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
    identity = run["identity"]
    old = unsorted_adapter_sha256(adapter)
    fingerprint = hashlib.sha256(f"{identity['weights_sha256']}:{old}:float32".encode()).hexdigest()[:16]
    path.write_text(json.dumps({**run, "identity": {**identity, "adapter_sha256": old, "fingerprint": fingerprint}}))
    recorded = path.read_bytes()
    capsys.readouterr()
    assert main(argv) == 0 and path.read_bytes() == recorded
    run["identity"] = {**identity, "adapter_sha256": "0" * 64}
    path.write_text(json.dumps(run))
    assert main(argv) == 2 and "adapter_sha256" in capsys.readouterr().err
