"""Every relative link of the repository's documentation leads somewhere: the file exists inside
the repository, and the heading an anchor names exists in it. Pages move between README.md,
SECURITY.md and docs/; a link left pointing at the old place would send a newcomer nowhere.
Nothing here needs the database."""

import os
import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted(
    [ROOT / "README.md", ROOT / "SECURITY.md", ROOT / "CHANGELOG.md", ROOT / "bench" / "README.md"]
    + list((ROOT / "docs").glob("*.md"))
)

# Text files a reader or a reviewer reads: the docs, the code and its comments, the templates.
TEXT_SUFFIXES = {".py", ".md", ".html", ".txt"}
SKIPPED_DIRS = {".git", ".venv", "staticfiles", "node_modules", "__pycache__", ".pytest_cache", ".ruff_cache"}
# Another repository's files (the design notes this one started from) and tracker numbers: a
# newcomer with this repository alone can follow neither, so the text says the thing itself.
OUTSIDE_REFERENCE = re.compile(r"\.\./shared|\b(?:DESIGN|STYLE)\.md|(?i:\b(?:issues?|items?) ?#?\d+)")

FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def prose(text: str) -> str:
    """The page without its code blocks and inline code (a `[x](y)` in code is not a link)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\*|_(?=\W)|(?<=\W)_", "", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text).strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a markdown page's headings, numbered the way GitHub numbers repeats."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(page: Path) -> list[str]:
    """What is wrong with each relative link of ``page``, in words."""
    problems = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.is_relative_to(ROOT):
            problems.append(f"{target}: outside the repository")
        elif not linked.exists():
            problems.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{target}: no heading #{anchor} in {linked.relative_to(ROOT)}")
    return problems


@pytest.mark.parametrize("page", [p for p in PAGES if p.exists()], ids=lambda p: str(p.relative_to(ROOT)))
def test_it_resolves_every_relative_link_and_anchor(page):
    assert broken_links(page) == []


def test_it_finds_the_pages_it_checks():
    for name in ("README.md", "SECURITY.md", "CHANGELOG.md", "docs/security-model.md", "docs/design.md"):
        assert (ROOT / name).exists(), name


def test_it_reads_anchors_as_github_does():
    assert slug("The app's database role") == "the-apps-database-role"
    assert slug("Background work (Celery)") == "background-work-celery"
    assert slug("Invariant 1: no patient plaintext without an audit record") == (
        "invariant-1-no-patient-plaintext-without-an-audit-record"
    )
    assert slug("`SMS_BACKEND` and `FIELD_ENCRYPTION_KEY`") == "sms_backend-and-field_encryption_key"


def test_it_reports_a_missing_file_and_a_missing_anchor(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    (tmp_path / "other.md").write_text("# Keys\n\n## Rotation\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#rotation) [gone](missing.md) [no anchor](other.md#nothing) [self](#here)\n"
        "`[code](not-a-link.md)` [web](https://example.org) [out](../elsewhere.md)\n\n## Here\n"
    )
    assert broken_links(page) == [
        "missing.md: no such file",
        "other.md#nothing: no heading #nothing in other.md",
        "../elsewhere.md: outside the repository",
    ]


def text_files() -> list[Path]:
    """The repository's text files, outside virtualenvs, caches and collected static files."""
    found = []
    for folder, subfolders, names in os.walk(ROOT):
        subfolders[:] = [name for name in subfolders if name not in SKIPPED_DIRS]
        for name in names:
            path = Path(folder) / name
            if path.suffix in TEXT_SUFFIXES or name == "Makefile" or path.relative_to(ROOT) == Path(".ci/run"):
                found.append(path)
    return sorted(found)


def test_it_names_nothing_outside_the_repository():
    """No text points at files outside the repository or at tracker numbers (this file excepted:
    it spells the patterns)."""
    offending = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in text_files()
        if path != Path(__file__).resolve()
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if OUTSIDE_REFERENCE.search(line)
    ]
    assert offending == []
