"""A MONAI bundle configuration (``inference.json``) read as data: plain values and the few references and
``$`` expressions the translation needs, resolved here without ever evaluating Python.

Resolved:

- plain JSON values (dicts and lists resolved item by item);
- references ``"@name"`` and ``"@a#b#0"`` to other entries, recursively (cycles are refused);
- three expression forms: ``"$<JSON literal>"`` (``"$[1.5, 1.5, 1.5]"``), ``"$'python string'"`` and
  ``"$<literal> if @ref else <literal>"`` (also ``if not @ref``), e.g. wholeBody's
  ``"$[1.5, 1.5, 1.5] if @displayable_configs#highres else [3.0, 3.0, 3.0]"``.

Everything else (``$torch.device(...)``, ``$@bundle_root + '/eval'``, ``%`` macros) raises
:class:`MonaiConfigError` naming the file and the entry, but only when the translation asks for that entry:
entries it does not need (datalist, dataset, evaluator, handlers, ...) are never parsed.

Example::

    overrides = {"displayable_configs#highres": False}
    reader = MonaiConfigReader.from_file("configs/inference.json", overrides)
    reader.get("preprocessing#transforms#4#pixdim")   # [3.0, 3.0, 3.0]
"""

from __future__ import annotations

import ast
import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from TextGuidedSegLib.bundle import BundleError

__all__ = ["Conditional", "MonaiConfigError", "MonaiConfigReader", "parse_conditional"]

_SEP = "#"
_REF_RE = r"@(?P<ref>[A-Za-z0-9_]+(?:#[A-Za-z0-9_]+)*)"
_CONDITIONAL_RE = re.compile(rf"^(?P<then>.+?)\s+if\s+(?P<neg>not\s+)?{_REF_RE}\s+else\s+(?P<else>.+)$", re.S)
_PY_STRING_RE = re.compile(r"^'(?:[^'\\]|\\.)*'$", re.S)


class MonaiConfigError(BundleError):
    """A MONAI bundle configuration cannot be translated; the message names the file and the entry."""


_UNPARSED = object()


def _literal(text: str) -> Any:
    """A JSON literal or a single-quoted Python string; ``_UNPARSED`` for anything else."""
    text = text.strip()
    if _PY_STRING_RE.match(text):
        return ast.literal_eval(text)  # a plain string literal only (checked by the pattern above)
    try:
        return json.loads(text)
    except ValueError:
        return _UNPARSED


@dataclass(frozen=True)
class Conditional:
    """``$<then> if [not] @ref else <else>``: two literal branches chosen by a referenced entry."""

    ref: str
    negated: bool
    then: Any
    otherwise: Any

    def choose(self, condition: Any) -> Any:
        """The branch selected by the referenced entry's value."""
        return self.then if bool(condition) != self.negated else self.otherwise

    def condition_for(self, value: Any) -> bool | None:
        """The value of ``ref`` that selects the branch equal to ``value``; None when neither branch is it."""
        if value == self.then and value != self.otherwise:
            return not self.negated
        if value == self.otherwise and value != self.then:
            return self.negated
        return None


def parse_conditional(expression: str) -> Conditional | None:
    """Parse ``"$a if @ref else b"`` with literal branches; None when ``expression`` is not of that form."""
    if not isinstance(expression, str) or not expression.startswith("$"):
        return None
    match = _CONDITIONAL_RE.match(expression[1:].strip())
    if not match:
        return None
    then, otherwise = _literal(match["then"]), _literal(match["else"])
    if then is _UNPARSED or otherwise is _UNPARSED:
        return None
    return Conditional(match["ref"], bool(match["neg"]), then, otherwise)


class MonaiConfigReader:
    """Resolve entries of one MONAI config file as data.

    Args:
        data: the parsed JSON (a mapping).
        file: the file's name, used in error messages (``"inference.json"``).
        overrides: ``{"a#b": value}`` entries set before resolution (e.g. ``{"displayable_configs#highres":
            False}``); a path whose parent does not exist raises.
    """

    def __init__(
        self,
        data: Mapping[str, Any],
        file: str = "inference.json",
        overrides: Mapping[str, Any] | None = None,
    ):
        if not isinstance(data, Mapping):
            raise MonaiConfigError(f"{file}: expected a JSON object at the top level")
        self.file = file
        self.data = copy.deepcopy(dict(data))
        for path, value in (overrides or {}).items():
            self.set(path, value)

    @classmethod
    def from_file(cls, path: str | Path, overrides: Mapping[str, Any] | None = None) -> MonaiConfigReader:
        """Read a ``.json`` config file (MONAI's YAML configs are not supported)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise MonaiConfigError(f"{path}: cannot read it as JSON ({err})") from err
        return cls(data, path.name, overrides)

    # -- raw access ---------------------------------------------------------------------------------------

    def _walk(self, path: str) -> tuple[Any, str]:
        """The container holding the last key of ``path`` and that key."""
        keys = path.split(_SEP)
        node: Any = self.data
        for depth, key in enumerate(keys[:-1]):
            node = self._child(node, key, _SEP.join(keys[: depth + 1]))
        return node, keys[-1]

    def _child(self, node: Any, key: str, where: str) -> Any:
        if isinstance(node, dict) and key in node:
            return node[key]
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            return node[int(key)]
        raise MonaiConfigError(f"{self.file}: no entry {where!r}")

    def has(self, path: str) -> bool:
        """True when ``path`` names an entry."""
        try:
            self.raw(path)
        except MonaiConfigError:
            return False
        return True

    def raw(self, path: str) -> Any:
        """The entry at ``path`` as written (nothing resolved)."""
        node, key = self._walk(path)
        return self._child(node, key, path)

    def set(self, path: str, value: Any) -> None:
        """Set (override) the entry at ``path``; its parent must exist."""
        try:
            node, key = self._walk(path)
        except MonaiConfigError as err:
            raise MonaiConfigError(f"cannot override {path!r}: {err}") from err
        if isinstance(node, dict):
            node[key] = value
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node[int(key)] = value
        else:
            raise MonaiConfigError(f"{self.file}: cannot override {path!r}: its parent is not an object")

    # -- resolution ---------------------------------------------------------------------------------------

    def get(self, path: str, default: Any = _UNPARSED) -> Any:
        """The entry at ``path`` with references and the supported expressions resolved.

        Args:
            path: ``"a#b#0"``.
            default: returned when the entry does not exist (else that raises).
        """
        if default is not _UNPARSED and not self.has(path):
            return default
        return self._resolve(self.raw(path), path, ())

    def _resolve(self, value: Any, where: str, stack: tuple[str, ...]) -> Any:
        if isinstance(value, dict):
            return {k: self._resolve(v, f"{where}{_SEP}{k}", stack) for k, v in value.items()}
        if isinstance(value, list):
            return [self._resolve(v, f"{where}{_SEP}{i}", stack) for i, v in enumerate(value)]
        if not isinstance(value, str):
            return value
        if value.startswith("@"):
            return self._reference(value[1:], where, stack)
        if value.startswith("$"):
            return self._expression(value, where, stack)
        if value.startswith("%"):
            raise MonaiConfigError(f"{self.file}: {where}: macro {value!r} (another file) is not supported")
        return value

    def _reference(self, ref: str, where: str, stack: tuple[str, ...]) -> Any:
        if not re.fullmatch(_REF_RE, "@" + ref):
            raise MonaiConfigError(f"{self.file}: {where}: reference '@{ref}' is not supported")
        if ref in stack:
            raise MonaiConfigError(f"{self.file}: {where}: circular reference {' -> '.join((*stack, ref))}")
        if not self.has(ref):
            raise MonaiConfigError(f"{self.file}: {where}: reference '@{ref}' names no entry")
        return self._resolve(self.raw(ref), f"{where} -> @{ref}", (*stack, ref))

    def _expression(self, expression: str, where: str, stack: tuple[str, ...]) -> Any:
        literal = _literal(expression[1:])
        if literal is not _UNPARSED:
            return literal
        conditional = parse_conditional(expression)
        if conditional is not None:
            condition = self._reference(conditional.ref, where, stack)
            if not isinstance(condition, (bool, int)) and condition is not None:
                raise MonaiConfigError(
                    f"{self.file}: {where}: the condition @{conditional.ref} must be true or false, "
                    f"got {condition!r}"
                )
            return conditional.choose(condition)
        raise MonaiConfigError(
            f"{self.file}: {where}: expression {expression!r} is not supported (only JSON literals, "
            "'strings' and '<literal> if @entry else <literal>' are read; nothing is evaluated)"
        )
