from __future__ import annotations

import pytest

from bench.data import load_task_data, resolve_data_dir
from bench.types import BenchError
from tasks import TASKS


def test_limit_takes_the_first_examples_and_keeps_the_file_hash(fixture_data):
    full = load_task_data(TASKS["gsm8k"], fixture_data)
    first = load_task_data(TASKS["gsm8k"], fixture_data, limit=2)
    assert [e.id for e in first.examples] == [e.id for e in full.examples[:2]]
    assert first.sha256 == full.sha256 and first.total == full.total == 12


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    with pytest.raises(BenchError, match="--data-dir .*not a directory"):
        resolve_data_dir(str(tmp_path / "missing"))
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(BenchError, match="BENCH_DATA_DIR"):
        resolve_data_dir(None)


def test_task_without_hub_source_needs_a_data_dir():
    with pytest.raises(BenchError, match="no data directory"):
        load_task_data(TASKS["harmbench"], None)


@pytest.mark.parametrize("content, message", [
    (b'{"question": "caf\xe9", "answer": "The answer is 1."}\n', r"test.jsonl:2: not UTF-8 \(invalid continuation"),
    (b'{"question": 123, "answer": "The answer is 1."}\n', r"test.jsonl:2: bad record for task gsm8k \(its prompt "
                                                          r"must be a string, got int\)"),
    (None, r"test.jsonl: no records \(the file is empty\)"),
])
def test_a_mirror_file_that_is_not_utf8_wrongly_typed_or_empty_is_one_line_naming_it(tmp_path, fixture_data,
                                                                                     content, message):
    """Before, these ended in a UnicodeDecodeError, a jinja TypeError at the first prompt, or an interval of no
    values after the run had begun."""
    path = tmp_path / "gsm8k" / "test.jsonl"
    path.parent.mkdir()
    first = (fixture_data / "gsm8k" / "test.jsonl").read_bytes().splitlines(keepends=True)[0]
    path.write_bytes(b"" if content is None else first + content)
    with pytest.raises(BenchError, match=message):
        load_task_data(TASKS["gsm8k"], tmp_path)
