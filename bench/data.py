"""Where examples come from: the offline mirror (`<data-dir>/<dataset>/<split>.jsonl`) or, with no mirror, the Hub."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from bench.types import BenchError, Example, Task

DATA_DIR_ENV = "BENCH_DATA_DIR"


@dataclass(frozen=True)
class LoadedData:
    examples: list[Example]
    source: str  # the file read, or hf://path@revision
    sha256: str  # of the file's bytes, or of the Hub records as JSON lines
    total: int  # examples in the dataset before --limit
    skipped: str | None = None  # why the task cannot run here (a Hub-only task offline)
    limit: int | None = None  # the --limit it was loaded with


def default_data_dir() -> Path | None:
    """`$BENCH_DATA_DIR`, else `../shared/data` beside the working directory or the checkout, when it exists."""
    if env := os.environ.get(DATA_DIR_ENV):
        return Path(env)
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None


def resolve_data_dir(option: str | None) -> Path | None:
    """The data directory to read, or None for the Hub. An explicit directory must exist."""
    path = Path(option) if option is not None else default_data_dir()
    if path is not None and not path.is_dir():
        origin = "--data-dir" if option is not None else f"${DATA_DIR_ENV}"
        raise BenchError(f"{origin} {path}: not a directory")
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) for every non-blank line; a malformed line is an error naming file and line."""
    records = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise BenchError(f"{path}:{lineno}: not UTF-8 ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise BenchError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise BenchError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            records.append((lineno, record))
    if not records:
        raise BenchError(f"{path}: no records (the file is empty)")
    return records


def _to_examples(task: Task, records: list[tuple[int, dict]], where: str) -> list[Example]:
    examples = []
    for index, (lineno, record) in enumerate(records):
        try:
            example = task.to_example(record, index)
            if not isinstance(example.input, str):
                raise TypeError(f"its prompt must be a string, got {type(example.input).__name__}")
            examples.append(example)
        except KeyError as e:
            raise BenchError(f"{where}:{lineno}: missing field {e} for task {task.name}") from None
        except (TypeError, ValueError) as e:
            raise BenchError(f"{where}:{lineno}: bad record for task {task.name} ({e})") from None
    ids = [ex.id for ex in examples]
    if len(set(ids)) != len(ids):
        raise BenchError(f"{where}: duplicate example ids for task {task.name}")
    return examples


def load_task_data(task: Task, data_dir: Path | None, limit: int | None = None) -> LoadedData:
    """The task's examples, the first `limit` of them when given (the same ones for every model)."""
    if data_dir is not None:
        path = data_dir / task.dataset
        if not path.is_file():
            raise BenchError(f"task {task.name}: dataset not found: {path}")
        examples = _to_examples(task, read_jsonl(path), str(path))
        loaded = LoadedData(examples, str(path), sha256_file(path), len(examples))
    else:
        loaded = _load_from_hub(task)
    if limit is not None:
        loaded = LoadedData(loaded.examples[:limit], loaded.source, loaded.sha256, loaded.total, limit=limit)
    return loaded


def _load_from_hub(task: Task) -> LoadedData:
    if task.hub is None:
        raise BenchError(f"task {task.name}: no data directory (set --data-dir or ${DATA_DIR_ENV}) and no Hub source")
    import datasets  # heavy, and only needed online

    hub = task.hub
    try:
        rows = datasets.load_dataset(hub.path, hub.name, split=hub.split, revision=hub.revision, data_files=hub.data_files)
    except Exception as e:  # the Hub client raises many types; all mean "could not load"
        raise BenchError(f"task {task.name}: could not load {hub.path} from the Hub ({type(e).__name__}); "
                         f"offline, pass --data-dir") from None
    records = [(i + 1, {hub.rename.get(k, k): v for k, v in row.items()}) for i, row in enumerate(rows)]
    where = f"hf://{hub.path}@{hub.revision or 'main'}"
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for _, r in records).encode()
    examples = _to_examples(task, records, where)
    return LoadedData(examples, where, hashlib.sha256(lines).hexdigest(), len(examples))
