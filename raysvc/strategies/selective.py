"""Selective querying on the picks of any strategy (Kim et al. 2024, Sec. 4.3; Fig. 5a/b: SQ on
CoreSet, Entropy, PCB): the family ``sq:<strategy>``.

``sq:coreset`` queries what ``coreset`` picks, except the picks the current model is sure
of, which get their predicted class as a free pseudo-label: CB+SQ's rule and thresholds
(:func:`raysvc.strategies.cbsq.selective_querying`, ``variant`` choosing the threshold as
cbsq's does). The base strategy draws from the same seeded generator as it would alone, so
its picks are exactly its own.

A registered wrapper rather than a ``selective`` option on every strategy: the records name
the method (``strategy = "sq:coreset"``), so tables and figures keep CoreSet and CoreSet+SQ
apart without reading manifests; no strategy's code or options change; and ``cbsq`` stays
the paper's CB+SQ with its own K (``sq:cb`` is CB's K with SQ). The base strategy's own
options are ``base_options`` (``--strategy-opt 'base_options={"cold_start": "prior"}'``),
validated against the base's options once, when these options are (with the plan).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from raysvc.errors import ConfigError
from raysvc.options import Options, option
from raysvc.registry import Part
from raysvc.strategies.base import Pool, Selection, Strategy, Variant
from raysvc.strategies.cbsq import MAX_PSEUDO_HELP, ClusterBalancedSelectiveQuery, check_max_pseudo, selective_querying
from raysvc.strategies.registry import STRATEGIES

PREFIX = "sq:"


class _BaseFields:
    """``requires`` / ``optional`` of the wrapper: read on an instance, its base strategy's
    (``probs`` added: the thresholds read them); on the class, ``extra`` alone."""

    def __init__(self, field: str, extra: frozenset[str] = frozenset()):
        self.field, self.extra = field, frozenset(extra)

    def __get__(self, obj, owner=None) -> frozenset[str]:
        return self.extra if obj is None else frozenset(getattr(obj.base, self.field)) | self.extra


@STRATEGIES.register
class SelectiveQuerying(Strategy):
    """A strategy's picks with selective querying (CB+SQ's thresholds): sq:coreset, sq:entropy, sq:pcb, ..."""

    name = "sq:<strategy>"
    fixed = ("base",)
    requires = _BaseFields("requires", frozenset({"probs"}))
    optional = _BaseFields("optional")

    @dataclasses.dataclass(frozen=True)
    class Options(Options):
        base: str = option("", "the strategy whose picks are filtered (set by the name)")
        base_options: dict[str, Any] | None = option(None, "the base strategy's options, as a mapping (none: its defaults)")
        variant: Variant = option(
            "official", "official: tau_c = mean max-probability (APL cbsq.py:104-108); "
                        "paper: tau_c = mean p(c|x) (eq. 11)")
        max_pseudo: int | None = option(None, MAX_PSEUDO_HELP)

        def __post_init__(self):
            super().__post_init__()
            # the base's options parsed here, once, with these: a run never parses them again
            object.__setattr__(self, "base_part", STRATEGIES.part(self.base, self.base_options))

        def check(self):
            check_max_pseudo(self.max_pseudo)

    @classmethod
    def from_name(cls, name: str) -> dict[str, str] | None:
        """``sq:<strategy>`` for a registered strategy that does not pseudo-label already."""
        if not name.startswith(PREFIX):
            return None
        base = name[len(PREFIX):]
        entry = STRATEGIES.resolve(base)
        if entry.cls is cls or entry.cls is ClusterBalancedSelectiveQuery:
            raise ConfigError(f"strategy {name!r}: {base!r} already queries selectively")
        return {"base": base}

    def __init__(self, options: Options | None = None):
        super().__init__(options)
        part: Part = self.options.base_part
        self.base: Strategy = part.cls(part.options)
        self.name = PREFIX + self.options.base

    @property
    def oracle(self) -> bool:
        return self.base.oracle

    def _select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        picks = self.base._select(pool, budget, rng)
        return selective_querying(picks.query, pool, self.options.variant, self.options.max_pseudo,
                                  scores=picks.query_scores)
