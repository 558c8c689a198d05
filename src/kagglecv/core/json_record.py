"""The JSON records one stage writes for another (prepared.json, kernel.json, a checkpoint's meta,
the TTA plan) as typed dataclasses,
read tolerantly: a record written by an older or a newer kagglecv still loads.

    info = from_json(PreparedInfo, data, "prepared.json", READERS)   # READERS: field -> reader
    data = to_json(info)

The policy every record shares: a field the file lacks (or holds null) gets the dataclass's default
(an older writer did not know it), and only a field without a default is required; a key the class
has no field for is kept, untouched, in the record's `extra` and written back after the fields (a
newer writer, or a user's tool, added it: reading must neither fail nor lose it); a known key holding
the wrong kind of value is a ValueError naming the file and the key.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import Any, ClassVar, TypeVar

T = TypeVar("T")
Reader = Callable[[Any, str], Any]  # (the JSON value, what it is for messages) -> the field's value


def from_json(cls: type[T], data: Any, what: str, readers: dict[str, Reader]) -> T:
    """`cls` from the JSON object `data` read from `what`: each field the object has through its
    reader, the others at their defaults, the keys `cls` has no field for in `extra`."""
    if not isinstance(data, dict):
        raise ValueError(f"{what} holds {type(data).__name__}, not a JSON object")
    declared = [f for f in fields(cls) if f.name != "extra"]
    assert {f.name for f in declared} == set(readers), f"{cls.__name__}: one reader per field"
    values = {k: readers[k](v, f"{what} {k}") for k, v in data.items() if k in readers and v is not None}
    for f in declared:
        if f.name not in values and f.default is MISSING and f.default_factory is MISSING:
            raise ValueError(f"{what} has no {f.name}")
    return cls(**values, extra={k: v for k, v in data.items() if k not in readers})


def to_json(record: Any) -> dict[str, Any]:
    """The JSON object of a record: every field under its own key, in the class's order (a nested
    record through its own to_json), then the `extra` keys it was read with."""
    out = {}
    for f in fields(record):
        if f.name != "extra":
            value = getattr(record, f.name)
            out[f.name] = value.to_json() if hasattr(value, "to_json") else copy.deepcopy(value)
    return {**out, **copy.deepcopy(record.extra)}


class JsonRecord:
    """What a record dataclass inherits: from_json / to_json by the rule above. A subclass names
    WHAT (the file, for messages) and READERS (one reader per field but `extra`).

        @dataclass(kw_only=True)
        class PreparedInfo(JsonRecord):
            WHAT: ClassVar[str] = "prepared.json"
            READERS: ClassVar[dict[str, Reader]] = {"classes": str_list, ...}
    """

    WHAT: ClassVar[str] = "record"
    READERS: ClassVar[dict[str, Reader]] = {}

    @classmethod
    def from_json(cls, data: Any, what: str | None = None):
        """The record of a parsed JSON object; ValueError when it is damaged. `what` names it in
        messages (a record nested in another's key), else WHAT."""
        return from_json(cls, data, what or cls.WHAT, cls.READERS)

    def to_json(self) -> dict[str, Any]:
        """Every field under its own key, in the class's order, then `extra`."""
        return to_json(self)


# --- readers: (JSON value, what) -> the field's value, or ValueError -------------------------------


def text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} is {value!r}, not a string")
    return value


def flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what} is {value!r}, not true or false")
    return value


def whole(value: Any, what: str) -> int:
    """A whole number (a bool or a fraction is refused)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
        raise ValueError(f"{what} is {value!r}, not a whole number")
    return int(value)


def number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} is {value!r}, not a number")
    return float(value)


def json_object(value: Any, what: str) -> dict[str, Any]:
    """A JSON object kept as it is (its shape is another module's: a competition file, a plan)."""
    if not isinstance(value, dict):
        raise ValueError(f"{what} is {type(value).__name__}, not a JSON object")
    return value


def str_list(value: Any, what: str) -> list[str]:
    """A list of names (class names, file names) as strings."""
    if not isinstance(value, list):
        raise ValueError(f"{what} is {type(value).__name__}, not a list")
    return [str(v) for v in value]


def counts(value: Any, what: str) -> dict[str, int]:
    """An object of class name -> image count."""
    return {str(k): whole(v, f"{what} {k}") for k, v in json_object(value, what).items()}


def floats(value: Any, what: str) -> list[float]:
    """A list of numbers (a mean, a std, scales)."""
    if not isinstance(value, list):
        raise ValueError(f"{what} is {type(value).__name__}, not a list")
    return [number(v, what) for v in value]


def wholes(value: Any, what: str) -> list[int]:
    """A list of whole numbers (image sizes)."""
    if not isinstance(value, list):
        raise ValueError(f"{what} is {type(value).__name__}, not a list")
    return [whole(v, what) for v in value]


def scores(value: Any, what: str) -> dict[str, float]:
    """An object of name -> number (each candidate's score)."""
    return {str(k): number(v, f"{what} {k}") for k, v in json_object(value, what).items()}
