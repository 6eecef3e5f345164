"""The code examples of README.md and docs/*.md, found and classified (shared by the unit and
the integration test of them; tests/unit/test_docs_examples.py says what each class means)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = ("sh", "console")
_BLOCK = re.compile(
    r"(?:^<!-- doc-test: (?P<mark>[^\n]*?) -->\n)?^```(?P<lang>[\w-]*)\n(?P<body>.*?)^```",
    re.S | re.M,
)
_MARKS = re.compile(r"^(local-cloud|parse-only|file \S+)(?: \(.+\))?$")
#: Steps of a shell example that need the network (a fresh venv and its packages): their syntax is
#: checked, they are not run.
INSTALL_STEPS = re.compile(r"^(python3 -m venv|\.venv/bin/pip install)\b")


@dataclass(frozen=True)
class Example:
    doc: Path
    line: int
    lang: str
    mark: str  # "" (run), "local-cloud", "parse-only" or "file PATH"
    body: str

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str:
        return self.mark.split(" ", 1)[0] if self.mark else "run"


def examples(doc: Path) -> list[Example]:
    text = doc.read_text("utf-8")
    found = []
    for m in _BLOCK.finditer(text):
        mark = m.group("mark") or ""
        assert not mark or _MARKS.match(mark), f"{doc.name}: unknown doc-test marker {mark!r}"
        line = text.count("\n", 0, m.start("lang")) + 1
        mark = mark.split(" (", 1)[0]
        found.append(Example(doc, line, m.group("lang"), mark, m.group("body")))
    return found


ALL = [e for doc in DOCS for e in examples(doc)]


# -- shell commands -------------------------------------------------------------------------------


Line = list[tuple[list[str], str]]  # simple commands, each with the operator after it


def shell_lines(example: Example) -> list[Line]:
    """A shell example's lines (a console block's ``$`` lines; continuations joined), each as
    its simple commands with the operator that follows each: ``&&``, ``||``, ``|``, ``;`` or
    ``""`` at the end of the line."""
    lines = example.body.replace("\\\n", " ").splitlines()
    if example.lang == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    out = []
    for line in lines:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        parsed: Line = []
        current: list[str] = []
        for token in lexer:
            if token in ("&&", "||", "|", ";"):
                parsed.append((current, token))
                current = []
            else:
                current.append(token)
        if current:
            parsed.append((current, ""))
        if parsed:
            out.append(parsed)
    return out


def shell_commands(example: Example) -> list[list[str]]:
    return [command for line in shell_lines(example) for command, _ in line if command]


def is_install_step(command: list[str]) -> bool:
    return bool(INSTALL_STEPS.match(" ".join(command)))


def runnable_script(example: Example) -> str:
    """The example as a script, one line per line, without its install steps."""
    script = []
    for line in shell_lines(example):
        parts = []
        for command, op in line:
            if is_install_step(command):
                continue  # and the operator after it: install steps lead their && chains
            parts.append(" ".join(map(shlex.quote, command)) + (f" {op}" if op else ""))
        if parts:
            script.append(" ".join(parts).removesuffix(" &&"))
    return "\n".join(script)


def shardkit_args(command: list[str]) -> list[str] | None:
    """The arguments of a ``shardkit`` (or ``.venv/bin/shardkit``) command, else None."""
    if command and command[0] in ("shardkit", ".venv/bin/shardkit"):
        return command[1:]
    return None
