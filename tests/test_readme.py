"""The README stays a newcomer's page: short, and its two commands are the ones that work
(the test command is the one CI runs)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_readme_is_at_most_200_lines() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= 200, f"README.md has {lines} lines: move the detail to a page of docs/"


def test_the_two_commands_are_the_demo_and_the_tests_and_ci_runs_the_tests() -> None:
    [block] = re.findall(r"```sh\n(.*?)```", section("Two commands"), re.S)
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    for command in commands:
        assert (ROOT / command.split()[1]).is_file(), command
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert "bash scripts/test.sh" in ci


def test_the_readme_points_at_every_page_of_docs() -> None:
    where_to_read = section("Where to read on")
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page.name != "README.md":
            assert f"(docs/{page.name})" in where_to_read, page.name
