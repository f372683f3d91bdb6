"""Every trainer data-parallel under `torchrun --nproc-per-node 2` (two CPU processes, gloo) trains what one process
trains with the same global batch: the same loss at every step and the same adapter, written once by rank 0."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT

pytestmark = pytest.mark.slow

# Global batch 2 x 2 on the 4 gsm8k fixture examples, two epochs: 4 optimizer steps; dropout off (each process
# draws its own masks, as in any data-parallel run).
CONFIG = {"batch_size": 1, "gradient_accumulation": 2, "learning_rate": 0.01, "rank": 4, "dropout": 0.0,
          "epochs": 2.0}


def train(processes: int, method: str, model: Path, data: Path, results: Path, *extra: str,
          values: dict | None = None) -> Path:
    config = results / "config.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(values or CONFIG))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"] \
        if processes > 1 else [sys.executable]
    done = subprocess.run([*launcher, "-m", "bench", "train", method, "--task", "gsm8k", "--model", str(model),
                           "--config", str(config), "--data-dir", str(data), "--results-dir", str(results),
                           "--dtype", "float32", "--name", method, *extra], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return results / "checkpoints" / method


def losses(checkpoint: Path) -> list[float]:
    return [float(row["loss"]) for row in csv.DictReader((checkpoint / "train_log.csv").open())]


def adapter(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(checkpoint / "adapter_model.safetensors")


@pytest.mark.parametrize("method", ["sft", "sdft", "gkd", "onpolicy_sd"])
def test_two_processes_train_what_one_trains(method, tiny_model_dir, other_tiny_model_dir, fixture_data, tmp_path):
    extra = ("--teacher", str(other_tiny_model_dir)) if method == "gkd" else ()
    extra += ("--max-new-tokens", "12") if method in ("gkd", "onpolicy_sd") else ()
    one = train(1, method, tiny_model_dir, fixture_data, tmp_path / "one", *extra)
    two = train(2, method, tiny_model_dir, fixture_data, tmp_path / "two", *extra)
    assert len(losses(one)) == 4 and losses(two) == pytest.approx(losses(one), rel=1e-4, abs=1e-6)
    ours, theirs = adapter(one), adapter(two)
    assert ours.keys() == theirs.keys() and any(t.abs().max() > 0 for n, t in ours.items() if "lora_B" in n)
    for name in ours:
        torch.testing.assert_close(theirs[name], ours[name], rtol=1e-4, atol=1e-6)
    record_one, record_two = (json.loads((c / "train.json").read_text()) for c in (one, two))
    assert (record_one["world_size"], record_two["world_size"]) == (1, 2)
    assert record_two["identity"] == record_one["identity"]  # reuse does not depend on the number of processes
    if method in ("gkd", "onpolicy_sd"):  # the log sums what every rank sampled
        assert record_two["tokens_this_run"] == record_one["tokens_this_run"]
    assert not list(two.glob(".*tmp*")) and not (two / "trainer").exists() and not (two / "state").exists()


def test_a_global_batch_the_processes_cannot_split_is_one_line(tiny_model_dir, fixture_data, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**CONFIG, "gradient_accumulation": 3}))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
                           "bench", "train", "sft", "--task", "gsm8k", "--model", str(tiny_model_dir), "--config",
                           str(config), "--data-dir", str(fixture_data), "--results-dir", str(tmp_path), "--dtype",
                           "float32"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode != 0
    assert "bench: error: 2 processes: gradient_accumulation 3 must be a multiple of the number of processes" \
        in done.stderr
    assert not (tmp_path / "checkpoints" / "sft-gsm8k" / "train.json").exists()


def rank_pid(launcher: subprocess.Popen, rank: int) -> int | None:
    """The pid of the launcher's worker process of `rank` (from its environment), once it has started."""
    for child in Path("/proc").glob("[0-9]*"):
        try:
            if int((child / "stat").read_text().split()[3]) != launcher.pid:
                continue
            env = (child / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if f"RANK={rank}".encode() in env:
            return int(child.name)
    return None


@pytest.mark.parametrize("method", ["sft", "gkd"])
def test_a_rank_killed_mid_training_resumes_to_the_same_adapter(method, tiny_model_dir, other_tiny_model_dir,
                                                                fixture_data, tmp_path):
    """SIGKILL of rank 1 after step 2 (a state saved every step) stops the job; the same command again resumes
    from the last complete state and ends with the adapter of a run never stopped."""
    import signal
    import time

    extra = ("--teacher", str(other_tiny_model_dir), "--max-new-tokens", "12") if method == "gkd" else ()
    values = {**CONFIG, "save_steps": 1}
    whole = train(2, method, tiny_model_dir, fixture_data, tmp_path / "whole", *extra, values=values)
    results = tmp_path / "killed"
    results.mkdir()
    (results / "config.json").write_text(json.dumps(values))
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "bench",
            "train", method, "--task", "gsm8k", "--model", str(tiny_model_dir), "--config",
            str(results / "config.json"), "--data-dir", str(fixture_data), "--results-dir", str(results), "--dtype",
            "float32", "--name", method, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log, deadline = results / "checkpoints" / method / "train_log.csv", time.monotonic() + 300
    while not (log.is_file() and len(log.read_text().splitlines()) > 2) and time.monotonic() < deadline:
        time.sleep(0.01)
    pid = rank_pid(launcher, 1)
    assert pid is not None and launcher.poll() is None, "the training finished before it could be killed"
    os.kill(pid, signal.SIGKILL)
    assert launcher.wait(timeout=120) != 0
    assert not (results / "checkpoints" / method / "train.json").exists()
    resumed = train(2, method, tiny_model_dir, fixture_data, results, *extra, values=values)
    record = json.loads((resumed / "train.json").read_text())
    assert record["resumed"] and losses(resumed) == pytest.approx(losses(whole), rel=1e-4, abs=1e-6)
    for name, tensor in adapter(whole).items():
        torch.testing.assert_close(adapter(resumed)[name], tensor, rtol=1e-4, atol=1e-6)


def test_accelerate_launch_with_the_cpu_example_config_trains_what_one_process_trains(tiny_model_dir, fixture_data,
                                                                                      tmp_path):
    one = train(1, "sft", tiny_model_dir, fixture_data, tmp_path / "one")
    results = tmp_path / "accelerate"
    results.mkdir()
    (results / "config.json").write_text(json.dumps(CONFIG))
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(ROOT / "examples" / "accelerate" / "cpu_ddp.yaml"), "-m", "bench", "train", "sft",
                           "--task", "gsm8k", "--model", str(tiny_model_dir), "--config", str(results / "config.json"),
                           "--data-dir", str(fixture_data), "--results-dir", str(results), "--dtype", "float32",
                           "--name", "sft"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    two = results / "checkpoints" / "sft"
    assert json.loads((two / "train.json").read_text())["world_size"] == 2
    assert losses(two) == pytest.approx(losses(one), rel=1e-4, abs=1e-6)
