"""``@record``: frozen for the type checker, a plain (fast) dataclass at run time, compared and hashed by value."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

from mypy import api as mypy_api

from syndicate.delivery import Receipt
from syndicate.record import record


@record
class _Point:
    x: int
    y: int = 0
    tags: tuple[str, ...] = dataclasses.field(default=())


def test_a_record_compares_hashes_and_replaces_by_value() -> None:
    p = _Point(1, 2)
    assert p == _Point(1, 2) and p != _Point(1, 3)
    assert hash(p) == hash(_Point(1, 2))
    assert dataclasses.replace(p, y=5) == _Point(1, 5)
    assert _Point(1).tags == ()


def test_the_type_checker_refuses_an_assignment_to_a_records_field(tmp_path: Path) -> None:
    source = tmp_path / "assigns.py"
    source.write_text(
        textwrap.dedent(
            """
            from syndicate.delivery import Receipt

            receipt = Receipt(remote_id="1")
            receipt.remote_id = "2"
            """
        )
    )
    out, _, status = mypy_api.run([str(source), "--no-incremental", "--follow-imports=silent"])
    assert status == 1, out
    assert 'Property "remote_id" defined in "Receipt" is read-only' in out
    assert Receipt(remote_id="1") == Receipt(remote_id="1")
