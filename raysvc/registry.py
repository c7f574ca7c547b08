"""One registry style for every named part: strategies, learners, backbones, datasets.

A registry maps a name to a class that declares its typed options as a nested
``Options`` dataclass (:class:`raysvc.options.Options`). Every part registers itself
the same way, in its own module: the bare decorator ``@REGISTRY.register`` reads the
class's ``name`` (and its ``preset`` options, when the name fixes some: ``conse-lite1``
is the ConSE backbone with ``variant="lite1"``). A class with a ``from_name``
classmethod is a *family*: its ``name`` is the pattern listings show
(``open_clip:<model>[:<weights>]``), and ``from_name(name)`` turns every name it accepts
into the options that name fixes (``None`` for names it does not accept); ``fixed``
lists those options. The registry imports every module of its package on first use
(one file per part: adding one touches nothing else).

:meth:`Registry.part` validates a part's options without building anything expensive:
a run resolves each of its parts once (:meth:`raysvc.spec.RunSpec.resolve`) and hands
the resulting :class:`Part` on. The four registries are defined here, beside the class,
so resolving a name imports no part (each package re-exports its own).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import sys
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from raysvc.errors import ConfigError, UnknownNameError
from raysvc.options import Options

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered name (or a family's pattern): the class, the options the name fixes,
    and a one-line summary."""

    name: str
    cls: type[T]
    preset: Mapping[str, Any]
    summary: str
    family: bool = False

    @property
    def options_type(self) -> type[Options]:
        return self.cls.Options

    @property
    def fixed(self) -> tuple[str, ...]:
        """The options the name sets, which a user may not set again."""
        return tuple(getattr(self.cls, "fixed", ())) if self.family else tuple(self.preset)

    def matches(self, name: str) -> bool:
        return self.family and self.cls.from_name(name) is not None


@dataclasses.dataclass(frozen=True)
class Part(Generic[T]):
    """A named part as a run uses it: the name given, its class and its validated options.
    Small and picklable: it travels to Tune trials and Ray Train workers as it is."""

    kind: str
    name: str
    cls: type[T]
    options: Options


class Registry(Generic[T]):
    """Named parts of one kind (``kind`` appears in errors: "unknown strategy 'x'")."""

    def __init__(self, kind: str, package: str):
        self.kind = kind
        self._package = package
        self._entries: dict[str, Entry[T]] = {}
        self._families: list[Entry[T]] = []
        self._loaded = False

    def register(self, cls: type[T]) -> type[T]:
        """Class decorator: register ``cls`` under its own ``name`` (see the module docstring)."""
        if not (isinstance(getattr(cls, "Options", None), type) and issubclass(cls.Options, Options)):
            raise TypeError(f"{cls.__name__} needs a nested Options dataclass")
        name = cls.__dict__.get("name")  # its own: a subclass must not inherit its parent's name
        if not isinstance(name, str) or not name:
            raise TypeError(f"{cls.__name__} needs a class attribute name")
        if callable(getattr(cls, "from_name", None)):
            if all(f.name != name for f in self._families):
                self._families.append(Entry(name, cls, {}, _summary(cls), family=True))
            return cls
        old = self._entries.get(name)
        if old is not None and old.cls is not cls:
            raise RuntimeError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = Entry(name, cls, dict(getattr(cls, "preset", {})), _summary(cls))
        return cls

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        package = importlib.import_module(self._package)
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_") and info.name not in {"base", "registry"}:
                importlib.import_module(f"{self._package}.{info.name}")

    def names(self) -> list[str]:
        """Registered names, then family patterns (``open_clip:<model>[:<weights>]``)."""
        self._load()
        return sorted(self._entries) + [f.name for f in self._families]

    def entries(self) -> list[Entry[T]]:
        self._load()
        return [self._entries[n] for n in sorted(self._entries)]

    def families(self) -> list[Entry[T]]:
        self._load()
        return list(self._families)

    def resolve(self, name: str) -> Entry[T]:
        """The entry for ``name``; a family member gets an entry of its own. Registered
        names win over families; families are tried in registration order."""
        self._load()
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{self.kind} must be a non-empty string, got {name!r}")
        if name in self._entries:
            return self._entries[name]
        for family in self._families:
            preset = family.cls.from_name(name)
            if preset is not None:
                return Entry(name, family.cls, preset, family.summary)
        raise UnknownNameError(self.kind, name, self.names())

    def part(self, name: str, values: Mapping[str, Any] | None = None) -> Part[T]:
        """``name`` with its validated options (presets first, then ``values``): cheap, loads nothing."""
        entry = self.resolve(name)
        owner = f"{self.kind} {name!r}"
        clash = sorted(set(entry.preset) & set(values or {}))
        if clash:
            raise ConfigError(f"{owner}: option {clash[0]!r} is fixed by the name")
        options = entry.options_type.parse({**entry.preset, **dict(values or {})}, owner)
        return Part(self.kind, name, entry.cls, options)

    def __contains__(self, name: str) -> bool:
        try:
            self.resolve(name)
        except ConfigError:
            return False
        return True


def _summary(cls: type) -> str:
    """The first paragraph of the class's docstring (else of its module's), as one line."""
    doc = cls.__doc__ or getattr(sys.modules.get(cls.__module__), "__doc__", None) or ""
    return " ".join(doc.strip().split("\n\n")[0].split())


# one registry per kind of part; each package's modules register into its own
DATASETS = Registry("dataset", "raysvc.datasets")
STRATEGIES = Registry("strategy", "raysvc.strategies")
LEARNERS = Registry("learner", "raysvc.learners")
BACKBONES = Registry("backbone", "raysvc.backbones")
