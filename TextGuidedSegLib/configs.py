"""Config dataclasses to and from JSON-like data: one place refuses unknown keys and lists the valid ones.

Every config the library reads (``ModelConfig``, the sections of a bundle's ``config.json``, the external
architectures' model sections, ``TrainConfig``) goes through :func:`check_keys`, so a misspelt key is named
with the valid keys beside it, worded the same everywhere; :func:`to_jsonable` writes any of them back.

Examples::

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Window:
    ...     size: tuple[int, int] = (96, 96)
    ...     overlap: float = 0.5
    >>> to_jsonable(Window())
    {'size': [96, 96], 'overlap': 0.5}
    >>> dataclass_from_dict(Window, {"overlap": 0.25}).overlap
    0.25
    >>> dataclass_from_dict(Window, {"overlab": 0.25}, where="config.json")
    Traceback (most recent call last):
    ...
    ValueError: config.json: unknown Window key 'overlab'; valid keys are: size, overlap
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

__all__ = ["check_keys", "dataclass_from_dict", "field_names", "to_jsonable", "unknown_keys_error"]

_T = TypeVar("_T")


def field_names(cls: type) -> list[str]:
    """The ``__init__`` fields of a dataclass, in declaration order (the keys its dict form may hold)."""
    return [f.name for f in dataclasses.fields(cls) if f.init]


def unknown_keys_error(
    unknown: Sequence[str],
    valid: Iterable[str],
    where: str = "",
    what: str = "",
    error: type[Exception] = ValueError,
) -> Exception:
    """The error for ``unknown`` keys: ``"<where>: unknown <what> key 'k'; valid keys are: a, b"``.

    Args:
        unknown: the offending keys (dotted for nested sections), in the order met.
        valid: every key that would have been accepted.
        where: the file, argument or source the data came from ("config.json", "--optim.lrr=1"); may be "".
        what: the section or class the keys belong to ("ModelConfig", "preprocessing"); may be "".
        error: the exception class to build (a ``ValueError`` subclass such as ``BundleError``).
    """
    names = ", ".join(repr(str(key)) for key in unknown)
    noun = " ".join(part for part in ("unknown", what, "key" if len(unknown) == 1 else "keys") if part)
    message = f"{noun} {names}; valid keys are: {', '.join(valid)}"
    return error(f"{where}: {message}" if where else message)


def check_keys(
    data: Mapping[str, Any],
    valid: Sequence[str],
    where: str = "",
    what: str = "",
    error: type[Exception] = ValueError,
) -> None:
    """Raise :func:`unknown_keys_error` when ``data`` holds a key outside ``valid``."""
    unknown = [key for key in data if key not in valid]
    if unknown:
        raise unknown_keys_error(unknown, valid, where, what, error)


def dataclass_from_dict(
    cls: type[_T],
    data: Mapping[str, Any],
    where: str = "",
    what: str | None = None,
    error: type[Exception] = ValueError,
) -> _T:
    """``cls(**data)`` once every key of ``data`` is one of its fields; missing keys take their defaults.

    Args:
        cls: a dataclass (its ``__post_init__`` checks the values).
        data: field name -> value.
        where: the file or source, for the message.
        what: the section's name in the message; None: the class name.
        error: the exception raised for an unknown key or a non-mapping.
    """
    what = cls.__name__ if what is None else what
    if not isinstance(data, Mapping):
        place = f"{where}: " if where else ""
        raise error(f"{place}{what or 'the section'} must be a mapping of keys, got {type(data).__name__}")
    check_keys(data, field_names(cls), where, what, error)
    return cls(**data)


def to_jsonable(value: Any) -> Any:
    """Dataclasses to dicts of their fields, tuples to lists, recursively: what ``json.dump`` writes and a
    reload reads back equal."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value
