"""Every reference in the code and the docs points at something in this repository.

A newcomer who follows a comment, a docstring or a page must land somewhere: a file that
exists, a link whose file and anchor exist, a section that is there under the title quoted, a
module attribute the code still defines, a migration that was written. Citations of documents
or trackers that are not in the repository ("DESIGN.md", "issue 19, item 2", "defect 13") are
refused: state the fact where it is needed, or point at the page that explains it.

Pure: reads files, imports nothing of the project, needs no database.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# This file quotes what it refuses; it is the one file the checks leave out.
THIS_FILE = Path(__file__).resolve()
SKIPPED_DIRS = {
    ".git",
    ".venv",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    "build",
    "dist",
    "node_modules",
}
HASH_COMMENTED = {".sh", ".yaml", ".yml", ".toml", ".env", ".cfg", ".ini"}
HASH_COMMENTED_NAMES = {"Dockerfile", "crontab", "run", ".gitignore"}
TEXT_SUFFIXES = {".md", ".py", ".sql", ".json"} | HASH_COMMENTED

# Applied migrations never change (`crm-sync migrate` refuses an edited one), so citations in
# their comments stay; each is listed with the page that now explains it, which must exist.
FROZEN_CITATIONS = {
    ("sync_worker/migrations/0003_credits.sql", 'DESIGN.md, "The credit rules"'): (
        "docs/SCHEMA.md#credits"
    ),
    ("sync_worker/migrations/0003_credits.sql", "Defect 13"): "docs/SCHEMA.md#credits",
    ("sync_worker/migrations/0006_operations.sql", "defect 20"): "docs/SCHEMA.md#credits",
}
# Files of other projects that comments name as their source; none of them is ours.
EXTERNAL_FILES = {
    "prometheus.yml",  # Prometheus's own configuration, which loads our rules
    "docker/volumes/api/kong.yml",  # supabase/supabase: the gateway's routes
    "migrations/tenant/20211202183645_update_auth_uid.up.sql",  # supabase/auth
    "20220224000811_update_auth_functions.up.sql",  # supabase/auth
    "00_init_auth_schema.up.sql",  # supabase/auth
    "psycopg.sql",  # a module, not a file
}

CITATION = re.compile(
    r"\b(?:DESIGN|PITFALLS)\.md\b|ORIGINAL-DEFECTS|(?<![a-z])(?:issue|defect|ticket)s?[ _#-]?\d+",
    re.IGNORECASE,
)
URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
FILE_REFERENCE = re.compile(
    r"(?<![\w/.$<-])"
    r"((?:\.{1,2}/)*[\w*-][\w.*-]*(?:/[\w.*-]+)*\.(?:md|py|sql|sh|ya?ml|toml|env|json|cfg|ini))"
    r"(?:::(\w+))?"
    r"(?![\w/-])"
)
MARKDOWN_LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")
# `README, "Which PostgreSQL"`, `docs/OPERATIONS.md, "Shutdown"`, `"Shutdown" above`.
SECTION_IN_FILE = re.compile(r"\b(README(?:\.md)?|[\w./-]+\.md),? (?:section )?\"([^\"]+)\"")
SECTION_HERE = re.compile(r"\"([^\"]+)\" (?:above|below)\b")
MIGRATION = re.compile(r"\bmigrations? (\d{4}(?:(?:, | and )\d{4})*)\b")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
ATTRIBUTE = re.compile(r"(?<![\w.])(?:sync_worker\.)?([a-z_]+)\.(\w+)(?:\.(\w+))?")


@dataclass(frozen=True)
class Prose:
    """A piece of a file a reader follows: a comment, a docstring, a page."""

    path: Path
    line: int
    text: str

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


@cache
def repository_files() -> tuple[Path, ...]:
    found = []
    for path in sorted(ROOT.rglob("*")):
        parts = path.relative_to(ROOT).parts
        if any(p in SKIPPED_DIRS or p.endswith(".egg-info") for p in parts):
            continue
        if path.is_file():
            found.append(path)
    return tuple(found)


def text_files() -> Iterator[Path]:
    for path in repository_files():
        if path == THIS_FILE:
            continue
        if path.suffix in TEXT_SUFFIXES or path.name in HASH_COMMENTED_NAMES:
            yield path


@cache
def prose_of(path: Path) -> tuple[Prose, ...]:
    """The prose of one file (read and parsed once for every test)."""
    return tuple(_prose(path))


def _prose(path: Path) -> Iterator[Prose]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".md":
        yield Prose(path, 1, text)
    elif path.suffix == ".py":
        yield from _python_prose(path, text)
    elif path.suffix == ".sql":
        for number, line in enumerate(text.splitlines(), 1):
            if "--" in line:
                yield Prose(path, number, line.split("--", 1)[1])
    elif path.suffix in HASH_COMMENTED or path.name in HASH_COMMENTED_NAMES:
        for number, line in enumerate(text.splitlines(), 1):
            match = re.search(r"(?:^|\s)#(.*)$", line)
            if match:
                yield Prose(path, number, match.group(1))


def _python_prose(path: Path, text: str) -> Iterator[Prose]:
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            yield Prose(path, token.start[0], token.string)
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                value = body[0].value.value
                if isinstance(value, str):
                    yield Prose(path, body[0].lineno, value)


def line_of(prose: Prose, offset: int) -> Prose:
    """The same prose, placed at the line of `offset` (for a page or a docstring)."""
    return Prose(prose.path, prose.line + prose.text.count("\n", 0, offset), prose.text)


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# --- citations ---------------------------------------------------------------------------


def frozen(path: Path, line: str) -> bool:
    """The line holds one of the citations applied migrations keep."""
    return any(
        relative(path) == frozen_path and quoted in line for frozen_path, quoted in FROZEN_CITATIONS
    )


def test_nothing_cites_a_document_or_tracker_outside_the_repository() -> None:
    """Whole files, code included: a test named after a defect number cites it too."""
    found = []
    for path in text_files():
        text = path.read_text(encoding="utf-8")
        for match in CITATION.finditer(text):
            line_start = text.rfind("\n", 0, match.start()) + 1
            line_end = text.find("\n", match.end())
            line = text[line_start : line_end if line_end >= 0 else None]
            if frozen(path, line):
                continue
            number = text.count("\n", 0, match.start()) + 1
            found.append(f"{relative(path)}:{number}: {match.group(0)!r} in {line.strip()!r}")
    assert not found, (
        "citations of documents or trackers that are not in this repository; state the fact "
        "or point at the page of docs/ that explains it:\n" + "\n".join(found)
    )


def test_frozen_citations_are_in_applied_migrations_and_explained() -> None:
    for (path, quoted), explained_in in FROZEN_CITATIONS.items():
        assert path.startswith("sync_worker/migrations/"), path
        assert quoted in (ROOT / path).read_text(encoding="utf-8"), (path, quoted)
        target, _, anchor = explained_in.partition("#")
        assert anchor in anchors_of(ROOT / target), explained_in


# --- files ---------------------------------------------------------------------------------


@cache
def basenames() -> frozenset[str]:
    return frozenset(p.name for p in repository_files())


@cache
def posix_paths() -> tuple[str, ...]:
    return tuple(relative(p) for p in repository_files())


def resolves(reference: str, base: Path) -> Path | None:
    """The file `reference` names, seen from a file in `base`: a path from the repository's
    root or from `base`, the tail of a path (`supabase_sandbox/auth_api.py`), a name of a file
    anywhere (`fakes.py`), or a glob that matches something."""
    reference = reference.removeprefix("./")
    if "*" in reference:
        seen_from = relative(base) + "/" if base != ROOT else ""
        for pattern in (reference, seen_from + reference, "*/" + reference):
            match = next((p for p in posix_paths() if fnmatch(p, pattern)), None)
            if match is not None:
                return ROOT / match
        return None
    for candidate in (ROOT / reference, base / reference):
        if candidate.exists():
            return candidate.resolve()
    if "/" in reference:
        tail = "/" + reference.lstrip("./")
        match = next((p for p in posix_paths() if p.endswith(tail)), None)
        return ROOT / match if match else None
    if reference in basenames():
        return next(p for p in repository_files() if p.name == reference)
    return None


@cache
def top_level_path() -> re.Pattern[str]:
    """A path under one of the repository's top-level directories (`config/crontab`,
    `sync_worker/migrations/`), whatever its file name ends with."""
    tops = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and p.name not in SKIPPED_DIRS)
    alternatives = "|".join(re.escape(top) for top in tops if not top.endswith(".egg-info"))
    return re.compile(rf"(?<![\w/.$<-])((?:{alternatives})/[\w.*/-]*[\w*])(?![\w/-])")


def test_every_file_a_comment_or_a_page_names_exists() -> None:
    missing = []
    for path in text_files():
        if path.suffix == ".json":
            continue
        for prose in prose_of(path):
            text = URL.sub(lambda url: " " * len(url.group(0)), prose.text)
            for match in FILE_REFERENCE.finditer(text):
                reference, test_name = match.group(1), match.group(2)
                if reference in EXTERNAL_FILES or frozen(path, prose.text):
                    continue
                where = line_of(prose, match.start()).where()
                target = resolves(reference, path.parent)
                if target is None:
                    missing.append(f"{where}: {reference}")
                    continue
                if test_name and not re.search(
                    rf"def {test_name}\b", target.read_text(encoding="utf-8")
                ):
                    missing.append(f"{where}: {reference}::{test_name} (no such test)")
            for match in top_level_path().finditer(text):
                reference = match.group(1)
                found = (
                    any(fnmatch(p, reference) for p in posix_paths())
                    if "*" in reference
                    else (ROOT / reference).exists()
                )
                if not found and not frozen(path, prose.text):
                    missing.append(f"{line_of(prose, match.start()).where()}: {reference}")
    assert not missing, "references to files that are not in the repository:\n" + "\n".join(
        sorted(set(missing))
    )


# --- markdown links, anchors and section titles -------------------------------------------


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def headings_of(path: Path) -> tuple[str, ...]:
    found, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"#{1,6} (.+?)#*\s*$", line)):
            found.append(match.group(1).strip())
    return tuple(found)


@cache
def anchors_of(path: Path) -> frozenset[str]:
    anchors: set[str] = set()
    for heading in headings_of(path):
        anchor, n = slug(heading), 1
        while anchor in anchors:
            anchor, n = f"{slug(heading)}-{n}", n + 1
        anchors.add(anchor)
    return frozenset(anchors)


def title_of(heading: str) -> str:
    return heading.replace("`", "").strip()


def markdown_files() -> Iterator[Path]:
    return (p for p in repository_files() if p.suffix == ".md")


def test_every_markdown_link_and_anchor_resolves() -> None:
    broken = []
    for path in markdown_files():
        text = path.read_text(encoding="utf-8")
        for match in MARKDOWN_LINK.finditer(text):
            target = match.group(2)
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
                continue  # https:, mailto:
            where = line_of(Prose(path, 1, text), match.start()).where()
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists() or ROOT not in (linked, *linked.parents):
                broken.append(f"{where}: {target} (no such file in the repository)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors_of(linked):
                broken.append(f"{where}: {target} (no such heading in {relative(linked)})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_section_named_by_its_title_is_there() -> None:
    """`README, "Which PostgreSQL"` or `"Shutdown" below`: the page has that heading."""
    missing = []
    for path in text_files():
        for prose in prose_of(path):
            for match in SECTION_IN_FILE.finditer(prose.text):
                name, title = match.group(1), " ".join(match.group(2).split())
                page = ROOT / "README.md" if name.startswith("README") else None
                page = page or resolves(name, path.parent)
                if page is None or name.endswith(("DESIGN.md", "PITFALLS.md")):
                    continue  # a missing file, or a citation: the tests above say so
                if title not in {title_of(h) for h in headings_of(page)}:
                    where = line_of(prose, match.start()).where()
                    missing.append(f"{where}: {name}, {title!r} (no such heading)")
            if path.suffix == ".md":
                here = {title_of(h) for h in headings_of(path)}
                for match in SECTION_HERE.finditer(prose.text):
                    if " ".join(match.group(1).split()) not in here:
                        where = line_of(prose, match.start()).where()
                        missing.append(f"{where}: {match.group(0)!r} (no such heading here)")
    assert not missing, "sections named by a title they do not have:\n" + "\n".join(missing)


def test_slugs_follow_github() -> None:
    assert slug("Several workers: shards") == "several-workers-shards"
    assert slug('"Forgot password?"') == "forgot-password"
    assert slug("The app's side") == "the-apps-side"
    assert slug("Row-level security and privileges") == "row-level-security-and-privileges"
    assert slug("`public.profiles`") == "publicprofiles"


# --- migrations and module attributes ------------------------------------------------------


def test_every_migration_named_by_number_exists() -> None:
    versions = {p.name[:4] for p in (ROOT / "sync_worker" / "migrations").glob("*.sql")}
    missing = []
    for path in text_files():
        for prose in prose_of(path):
            for match in MIGRATION.finditer(prose.text):
                for version in re.findall(r"\d{4}", match.group(1)):
                    if version not in versions:
                        where = line_of(prose, match.start()).where()
                        missing.append(f"{where}: migration {version}")
    assert not missing, "migrations that do not exist:\n" + "\n".join(missing)


@cache
def module_names(module: str) -> dict[str, frozenset[str]]:
    """A sync_worker module's top-level names, each with the names its class defines."""
    tree = ast.parse((ROOT / "sync_worker" / f"{module}.py").read_text(encoding="utf-8"))
    names: dict[str, frozenset[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            members = set()
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    members.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members.add(item.target.id)
                elif isinstance(item, ast.Assign):
                    members.update(t.id for t in item.targets if isinstance(t, ast.Name))
            names[node.name] = frozenset(members)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names[node.name] = frozenset()
        elif isinstance(node, ast.Assign):
            names.update({t.id: frozenset() for t in node.targets if isinstance(t, ast.Name)})
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = frozenset()
        elif isinstance(node, ast.ImportFrom):
            names.update({(a.asname or a.name): frozenset() for a in node.names})
    return names


def test_every_module_attribute_a_page_names_exists() -> None:
    """`plan.PlanBuilder`, `record.SupabaseStore.enrol`, `sync_worker.errors.ExitCode`: the
    module defines the name (and its class the member) the page says."""
    modules = {p.stem for p in (ROOT / "sync_worker").glob("*.py")} - {"__init__", "__main__"}
    missing = []
    for path in markdown_files():
        text = path.read_text(encoding="utf-8")
        for span in CODE_SPAN.finditer(text):
            for match in ATTRIBUTE.finditer(span[1]):
                module, name, member = match.groups()
                if module not in modules or name in {"py", "sql", "md"}:
                    continue  # not one of ours, or a file name (the file check covers it)
                names = module_names(module)
                if name not in names or (member and names[name] and member not in names[name]):
                    where = line_of(Prose(path, 1, text), span.start()).where()
                    missing.append(f"{where}: {match.group(0)}")
    assert not missing, "names the code does not define:\n" + "\n".join(missing)


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("see DESIGN.md", True),
        ("(issue 19, item 2)", True),
        ("def test_defect_13_x", True),
        ("Defect 13: doubled", True),
        ("an issue with 3 workers", False),
        ("the tissue 12", False),
    ],
)
def test_the_citation_pattern(text: str, found: bool) -> None:
    assert bool(CITATION.search(text)) is found
