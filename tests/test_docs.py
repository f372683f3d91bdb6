"""README.md and docs/: the guide builds strictly (no broken page or link), and every `bench` command line they show
parses with today's options and runs, page by page in order, on the tiny model, so an example cannot name an option
that no longer exists or a flow that no longer works."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from bench.cli import build_parser
from conftest import MIRROR, ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_guide_builds_strictly(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "site" / "results" / "index.html").is_file()


def command_lines() -> list[tuple[str, str]]:
    """(page, command) for every line of a fenced block that runs `bench` or `.venv/bin/bench`."""
    found = []
    for page in PAGES:
        block = False
        for line in page.read_text().splitlines():
            if line.startswith("```"):
                block = not block
                continue
            command = re.sub(r"\s+#.*$", "", line.strip())
            if block and re.match(r"(\.venv/bin/)?bench ", command):
                found.append((page.name, command))
    return found


def test_there_are_examples_to_check():
    assert len(command_lines()) >= 8


@pytest.mark.parametrize("page, command", command_lines())
def test_every_example_parses(page, command):
    argv = shlex.split(command)[1:]
    try:
        build_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"{page}: `{command}` does not parse (exit {e.code})")


def runnable(command: str, model_dir, data_dir) -> list[str]:
    """An example as the test runs it: the tiny model for `default`, two examples for any --limit, the data mirror
    (the suites need every file: 57 MMLU subjects), float32; the gate's `candidate` is the example's own fine-tune."""
    argv = [str(model_dir) if word == "default" else word for word in shlex.split(command)[1:]]
    argv = [("2" if i and argv[i - 1] == "--limit" else word) for i, word in enumerate(argv)]
    if argv[0] in ("eval", "train"):
        argv += ["--data-dir", str(data_dir), "--dtype", "float32"]
    if argv[0] == "train" and "--model" not in argv:  # its default model is `default` too
        argv += ["--model", str(model_dir)]
    if argv[:2] == ["gate", "candidate"]:
        argv[1] = "sdft"
    return argv


@pytest.mark.slow
@pytest.mark.parametrize("page", sorted({page for page, _ in command_lines()}))
def test_every_example_runs_in_order(page, tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Each page's examples, one after the other as a reader types them (the README's flow: evaluate the seed,
    train SDFT, evaluate it, compare, save a baseline, gate), on the tiny model: each exits as documented (the gate
    0 or 1: both are verdicts) and leaves what the next one reads."""
    from bench.cli import main

    if MIRROR is None:
        pytest.skip("no data mirror (../shared/data or $BENCH_DATA_DIR): the examples' suites read all of it")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # HellaSwag, Hub only, is skipped at once
    monkeypatch.chdir(tmp_path)
    for example_page, command in command_lines():
        if example_page != page:
            continue
        argv = runnable(command, tiny_model_dir, MIRROR)
        code = main(argv)
        out, err = capsys.readouterr()
        assert code in ((0, 1) if argv[0] == "gate" else (0,)), f"{page}: `{command}` exited {code}: {err[-2000:]}"
    if page == "README.md":
        assert (tmp_path / "results" / "reports" / "seed-vs-sdft" / "report.md").is_file()
        assert (tmp_path / "baselines" / "seed" / "baseline.json").is_file()
        assert "forgetbench gate" in (tmp_path / "gate.md").read_text() and "<testsuite" in (tmp_path / "gate.xml").read_text()
