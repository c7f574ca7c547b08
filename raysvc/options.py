"""Typed options of every named part, validated where they enter.

Each strategy, learner, backbone and dataset declares its options as a frozen dataclass
derived from :class:`Options`: annotated fields with defaults, an optional ``help``
string per field (``option(default, "...")``) and range checks in :meth:`Options.check`.
Building one validates every value against its annotation in strict mode (pydantic's
type adapters: ``"0.2"`` is not a float and ``True`` is not an int) and names the
option in a one-line :class:`~raysvc.errors.ConfigError`. Nothing is coerced except
a list for a tuple field (YAML and JSON have no tuples), and an int for a float field.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import pydantic

from raysvc.errors import ConfigError

T = TypeVar("T", bound="Options")


def option(default: Any, help: str = "", **kwargs: Any) -> Any:  # noqa: A002 - argparse's word
    """A dataclass field with a ``help`` string for listings and ``--help``."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple or a default_factory for a mutable default")
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


@functools.lru_cache(maxsize=None)
def _adapter(annotation: Any) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(annotation)


@functools.lru_cache(maxsize=None)
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_tuple(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is tuple:
        return True
    return any(_is_tuple(arg) for arg in typing.get_args(annotation)) if origin is not None else False


def check_value(name: str, annotation: Any, value: Any) -> Any:
    """``value`` validated against ``annotation`` (strict); a ConfigError names the option."""
    if isinstance(value, list) and _is_tuple(annotation):
        value = tuple(value)
    try:
        return _adapter(annotation).validate_python(value, strict=True)
    except pydantic.ValidationError as exc:
        reason = exc.errors()[0]["msg"]
        raise ConfigError(f"option {name}={value!r}: {reason[0].lower()}{reason[1:]}") from None


def type_name(annotation: Any) -> str:
    """A short readable form of a field's type for listings: ``int``, ``float | None``, ``'a' | 'b'``."""
    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


@dataclasses.dataclass(frozen=True)
class Options:
    """Base of every named part's options; see the module docstring."""

    def __post_init__(self):
        hints = _field_types(type(self))
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, check_value(f.name, hints[f.name], getattr(self, f.name)))
        self.check()

    def check(self) -> None:
        """Range and consistency checks; raise ConfigError naming the option."""

    def fill_unset(self, defaults: Mapping[str, Any]) -> None:
        """Set every option still None to its value in ``defaults`` (a variant's settings); for a
        ``__post_init__``, before the values are validated."""
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)

    @classmethod
    def parse(cls: type[T], values: Mapping[str, Any] | None, owner: str) -> T:
        """Options from a plain mapping (a CLI ``KEY=VALUE`` list, a YAML block); unknown keys are
        refused. ``owner`` names the part in the error (``"strategy 'cb'"``)."""
        values = dict(values or {})
        known = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                listed = ", ".join(known) if known else "none"
                raise ConfigError(f"{owner}: unknown option {key!r}{hint}; options: {listed}")
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{owner}: {exc}") from None

    @classmethod
    def describe(cls) -> list[tuple[str, str, Any, str]]:
        """(name, type, default, help) of every option, in declaration order."""
        hints = _field_types(cls)
        return [(f.name, type_name(hints[f.name]), f.default, f.metadata.get("help", "")) for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class NoOptions(Options):
    """For parts that take no options."""
