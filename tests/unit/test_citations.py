"""The repository documents itself: nothing in it cites a design file that lives outside it.

Design decisions are cited as ``docs/architecture.md §N``. A citation of a note that is not in the
repository (the names below) sends a reader nowhere, so every text file under the checked roots
is scanned and each hit is reported as ``file:line``.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ("shardkit", "docs", "bench", "tests", "examples", "README.md")
SUFFIXES = {".py", ".md", ".toml", ".txt", ".json", ".cfg", ".ini", ".sh", ""}
# Spelled in pieces so that this file does not cite them itself.
OUTSIDE = re.compile(
    "|".join(re.escape(a + b) for a, b in (("DESIGN", ".md"), ("STYLE", ".md"), ("../", "shared")))
)


def _files() -> list[Path]:
    found: list[Path] = []
    for name in CHECKED:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        found += [
            p
            for p in candidates
            if p.is_file()
            and p.suffix in SUFFIXES
            and not {"__pycache__", ".shardkit"} & set(p.relative_to(ROOT).parts)
        ]
    return found


def outside_citations(files: list[Path]) -> list[str]:
    """``file:line: text`` for every line that cites a design file outside the repository."""
    hits = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return hits


def test_no_file_cites_a_design_file_outside_the_repository() -> None:
    files = _files()
    assert len(files) > 50  # the scan does see the repository
    hits = outside_citations(files)
    assert not hits, "cite docs/architecture.md §N instead:\n" + "\n".join(hits)


def test_the_scan_reports_file_and_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    note = tmp_path / "note.py"
    note.write_text('"""ok"""\n# see ' + "DESIGN" + ".md §4.3\nx = '../" + "shared/x'\n")
    assert outside_citations([note]) == [
        "note.py:2: # see " + "DESIGN" + ".md §4.3",
        "note.py:3: x = '../" + "shared/x'",
    ]


CITATION = re.compile(r"architecture\.md §(\d+(?:\.\d+)?)(?:[-\u2013]§?(\d+(?:\.\d+)?))?")


def test_every_architecture_citation_names_a_section_that_exists() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^#{2,3} §(\d+(?:\.\d+)?) ", text, re.M))
    assert {f"4.{n}" for n in range(1, 8)} <= sections  # the invariants, numbered as cited
    assert "4.8" not in sections
    cited = {
        f"{path.relative_to(ROOT)}:{number}: §{section}"
        for path in _files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        for match in CITATION.finditer(line)
        for section in match.groups()
        if section and section not in sections
    }
    assert not cited, "cited sections missing from docs/architecture.md:\n" + "\n".join(
        sorted(cited)
    )
