"""Story documents as `publish` and `preview` read them: files, JSON arrays, JSON Lines, - for stdin, each document
named by file and line for its error messages."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape

from syndicate.cli.common import err
from syndicate.story import parse_json_int


@dataclass(frozen=True)
class Document:
    """One story document read from a file or stdin; ``where`` names it for error messages (file:line).

    ``raw`` is the document's own text when it is the whole file or one JSON line (sent as is by ``publish --url``).
    """

    where: str
    obj: Any | None
    error: str | None = None
    raw: str | None = None


def read_documents(name: str, text: str) -> Iterator[Document]:
    """A JSON document, a JSON array of documents, or JSON Lines (one document per line)."""
    try:
        whole = json.loads(text, parse_int=parse_json_int)
    except json.JSONDecodeError as exc:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if len(lines) <= 1 or not _looks_like_json_lines(lines):
            yield Document(f"{name}:{exc.lineno}", None, f"malformed JSON: {exc.msg} (column {exc.colno})")
            return
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield Document(f"{name}:{number}", json.loads(line, parse_int=parse_json_int), raw=line)
            except json.JSONDecodeError as line_exc:
                yield Document(f"{name}:{number}", None, f"malformed JSON: {line_exc.msg} (column {line_exc.colno})")
        return
    if isinstance(whole, list):
        for index, obj in enumerate(whole):
            yield Document(f"{name}[{index}]", obj)
    else:
        yield Document(name, whole, raw=text)


def _looks_like_json_lines(lines: list[str]) -> bool:
    """After the whole text failed to parse: JSON Lines if its first or second line is an object on its own.

    Otherwise it is one (e.g. pretty-printed) document with a syntax error, reported once where it is, rather
    than as one bogus error per line.
    """
    for line in lines[:2]:
        try:
            if isinstance(json.loads(line, parse_int=parse_json_int), dict):
                return True
        except json.JSONDecodeError:
            continue
    return False


def read_files(files: Sequence[str]) -> list[Document]:
    docs: list[Document] = []
    for name in files:
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            docs.append(Document(name, None, f"cannot read: {exc}"))
            continue
        docs.extend(read_documents("<stdin>" if name == "-" else name, text))
    return docs


def print_bad(source: str, problems: Iterable[str]) -> None:
    for problem in problems:
        err.print(f"[red]bad[/]  {escape(source)}: {escape(problem)}", highlight=False)
