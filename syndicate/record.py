"""``@record``: an immutable record that is cheap to build, for the objects made on every delivery.

A frozen dataclass sets each field through ``object.__setattr__`` in its ``__init__``, several times slower than a
plain one; the records built once or more per delivery (its row, the claim, the payload, the receipt, the outcome
and its completion) paid that on every delivery, 7 % of a delivery's instructions under callgrind. A ``@record``
is frozen for the type checker (``dataclass_transform(frozen_default=True)``: mypy rejects any assignment to a
field) and a plain dataclass at run time, hashed by its fields as a frozen one is.
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from typing_extensions import dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field,))
def record(cls: type[T]) -> type[T]:
    return dataclasses.dataclass(unsafe_hash=True)(cls)
