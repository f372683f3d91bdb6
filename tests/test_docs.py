"""README.md and docs/: the guide builds strictly (no broken page or link), and every `bench` command line they show
parses with today's options, so an example cannot name an option that no longer exists."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from bench.cli import build_parser
from conftest import ROOT

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
