"""The results store: `RESULTS_DIR/runs/NAME/{run.json, TASK/predictions.jsonl, TASK/metrics.json}` (and a judged
task's `model_outputs.json`, in alpaca_eval's format).

Every file is written to a temporary name and renamed, so a reader sees a whole file or none. `run.json` is
written first with `"complete": false` and rewritten with `"complete": true` only after every task's files are
in place: a run that says complete is whole, and it is never changed afterwards.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from bench.types import BenchError

RUN_FILE = "run.json"
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; results are meant to be shared like any file
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def check_plain_name(name: str, what: str) -> None:
    """A `--name` is one directory under runs/ or reports/: never empty, a path, or hidden."""
    if not name or "/" in name or name.startswith("."):
        raise BenchError(f"--name {name!r}: {what} must be a plain directory name")


class RunStore:
    """One run directory. `identity` is what makes two invocations the same run (model, data, settings)."""

    def __init__(self, results_dir: Path, name: str):
        check_plain_name(name, "a run name")
        self.results_dir = results_dir
        self.dir = results_dir / "runs" / name
        self.name = name

    def check_writable(self) -> None:
        """Probes runs/, not the run's own directory: a run that fails before it begins leaves nothing behind."""
        try:
            self.dir.parent.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=self.dir.parent, prefix=".probe-", delete=True)
            probe.close()
        except OSError as e:
            raise BenchError(f"--results-dir {self.results_dir}: not writable ({e.strerror})") from None

    def read_run(self) -> dict[str, Any] | None:
        path = self.dir / RUN_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def finished_with(self, identity: dict[str, Any], earlier: list[dict[str, Any]] = ()) -> bool:
        """True when a complete run with this identity (or an `earlier` form of the same one) exists; a complete
        run with another identity is an error."""
        run = self.read_run()
        if run is None or not run.get("complete"):
            return False
        if run["identity"] != identity and run["identity"] not in earlier:
            changed = sorted(k for k in identity.keys() | run["identity"].keys()
                             if identity.get(k) != run["identity"].get(k))
            raise BenchError(f"run {self.name} in {self.dir} is complete with other settings "
                             f"({', '.join(changed)} differ); choose another --name")
        return True

    def begin(self, record: dict[str, Any]) -> None:
        run = self.read_run()
        if run is not None and run.get("complete"):
            raise BenchError(f"run {self.name} in {self.dir} is complete and immutable; choose another --name")
        write_json(self.dir / RUN_FILE, {**record, "complete": False})

    def write_task(self, task: str, predictions: list[dict[str, Any]], metrics: dict[str, Any]) -> None:
        write_jsonl(self.dir / task / "predictions.jsonl", predictions)
        write_json(self.dir / task / "metrics.json", metrics)

    def write_json_file(self, task: str, name: str, obj: Any) -> None:
        write_json(self.dir / task / name, obj)

    def finish(self, record: dict[str, Any]) -> None:
        write_json(self.dir / RUN_FILE, {**record, "complete": True})
