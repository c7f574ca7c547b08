"""One registry style for every named part: strategies, learners, backbones, datasets.

A registry maps a name to a class that declares its typed options as a nested
``Options`` dataclass (:class:`raysvc.options.Options`). Parts register themselves with
``@REGISTRY.register("name")`` in their own module; the registry imports every module of
its package on first use (one file per part: adding one touches nothing else).

A name may carry preset options (``conse-lite1`` is the ConSE backbone with
``variant="lite1"``), and a *family* accepts every name its predicate matches and
turns it into options (``open_clip:ViT-B-32:laion2b_s34b_b79k``, a dataset folder path). :meth:`Registry.options`
validates a part's options without building anything expensive: this is what every
entry point calls before encoding.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import sys
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from raysvc.errors import ConfigError, UnknownNameError
from raysvc.options import Options

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered name: the class, preset option values, and a one-line summary."""

    name: str
    cls: type[T]
    preset: Mapping[str, Any]
    summary: str

    @property
    def options_type(self) -> type[Options]:
        return self.cls.Options


@dataclasses.dataclass(frozen=True)
class Family(Generic[T]):
    """Names that ``matches`` accepts (``open_clip:<model>``, a folder path); ``parse(name)``
    gives the preset options of one of them; ``pattern`` is how listings show the family."""

    pattern: str
    cls: type[T]
    matches: Callable[[str], bool]
    parse: Callable[[str], dict[str, Any]]
    summary: str
    fixed: tuple[str, ...]  # the options the name sets


class Registry(Generic[T]):
    """Named parts of one kind (``kind`` appears in errors: "unknown strategy 'x'")."""

    def __init__(self, kind: str, package: str):
        self.kind = kind
        self._package = package
        self._entries: dict[str, Entry[T]] = {}
        self._families: list[Family[T]] = []
        self._loaded = False

    def register(self, *names: str, preset: Mapping[str, Any] | None = None, summary: str = "") -> Callable[[type[T]], type[T]]:
        """Class decorator: register the class under each of ``names`` (with ``preset`` options)."""

        def add(cls: type[T]) -> type[T]:
            if not (isinstance(getattr(cls, "Options", None), type) and issubclass(cls.Options, Options)):
                raise TypeError(f"{cls.__name__} needs a nested Options dataclass")
            for name in names:
                old = self._entries.get(name)
                if old is not None and old.cls is not cls:
                    raise RuntimeError(f"{self.kind} {name!r} registered twice")
                self._entries[name] = Entry(name, cls, dict(preset or {}), summary or _first_line(cls))
            return cls

        return add

    def register_family(self, pattern: str, matches: Callable[[str], bool], parse: Callable[[str], dict[str, Any]],
                        fixed: tuple[str, ...] = (), summary: str = "") -> Callable[[type[T]], type[T]]:
        """Class decorator: every name ``matches`` accepts builds the class with options ``parse(name)``.

        Registered names win over families; families are tried in registration order.
        """

        def add(cls: type[T]) -> type[T]:
            if all(f.pattern != pattern for f in self._families):
                self._families.append(Family(pattern, cls, matches, parse, summary or _first_line(cls), fixed))
            return cls

        return add

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
        return sorted(self._entries) + [f.pattern for f in self._families]

    def entries(self) -> list[Entry[T]]:
        self._load()
        return [self._entries[n] for n in sorted(self._entries)]

    def families(self) -> list[Family[T]]:
        self._load()
        return list(self._families)

    def resolve(self, name: str) -> Entry[T]:
        """The entry for ``name``; a family member gets an entry of its own."""
        self._load()
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{self.kind} must be a non-empty string, got {name!r}")
        if name in self._entries:
            return self._entries[name]
        family = next((f for f in self._families if f.matches(name)), None)
        if family is None:
            raise UnknownNameError(self.kind, name, self.names())
        return Entry(name, family.cls, family.parse(name), family.summary)

    def options(self, name: str, values: Mapping[str, Any] | None = None) -> Options:
        """The validated options of ``name`` (presets first, then ``values``): cheap, loads nothing."""
        entry = self.resolve(name)
        owner = f"{self.kind} {name!r}"
        clash = sorted(set(entry.preset) & set(values or {}))
        if clash:
            raise ConfigError(f"{owner}: option {clash[0]!r} is fixed by the name")
        return entry.options_type.parse({**entry.preset, **dict(values or {})}, owner)

    def __contains__(self, name: str) -> bool:
        try:
            self.resolve(name)
        except ConfigError:
            return False
        return True


def _first_line(cls: type) -> str:
    """The first paragraph of the class's docstring (else of its module's), as one line."""
    doc = cls.__doc__ or getattr(sys.modules.get(cls.__module__), "__doc__", None) or ""
    return " ".join(doc.strip().split("\n\n")[0].split())
