"""The named parts and their typed options, as ``raysvc datasets | strategies | learners |
backbones`` and ``raysvc run --help`` list them (generated from the registries)."""

from __future__ import annotations

from raysvc.options import Options
from raysvc.registry import Registry

KINDS = ("datasets", "strategies", "learners", "backbones")


def registries() -> dict[str, Registry]:
    from raysvc.backbones import BACKBONES
    from raysvc.datasets import DATASETS
    from raysvc.learners import LEARNERS
    from raysvc.strategies import STRATEGIES

    return {"datasets": DATASETS, "strategies": STRATEGIES, "learners": LEARNERS, "backbones": BACKBONES}


def option_keys_epilog() -> str:
    """The option keys of every named part, for ``--help``."""
    lines = ["option keys of the named parts (--<part>-opt KEY=VALUE; details: raysvc <parts>):"]
    for kind, registry in registries().items():
        by_keys: dict[tuple[str, ...], list[str]] = {}
        for entry in registry.entries() + registry.families():
            keys = tuple(name for name, *_ in entry.options_type.describe() if name not in entry.fixed)
            by_keys.setdefault(keys, []).append(entry.name)
        for keys, names in by_keys.items():
            lines.append(f"  {registry.kind} {', '.join(names)}: {', '.join(keys) or '(none)'}")
    return "\n".join(lines)


def describe_part(name: str, summary: str, options_type: type[Options], extra: str = "") -> str:
    lines = [f"{name}{extra}: {summary}" if summary else f"{name}{extra}"]
    for option, kind, default, help_text in options_type.describe():
        lines.append(f"    {option} ({kind}, default {default!r}){': ' + help_text if help_text else ''}")
    return "\n".join(lines)


def list_parts(kind: str) -> str:
    """Every part of ``kind`` (one of :data:`KINDS`) with its summary and options."""
    registry = registries()[kind]
    blocks = []
    for entry in registry.entries():
        extra = f" [needs {', '.join(sorted(entry.cls.requires)) or '-'}]" if kind == "strategies" else ""
        preset = ", ".join(f"{k}={v}" for k, v in entry.preset.items())
        blocks.append(describe_part(entry.name + (f" ({preset})" if preset else ""), entry.summary,
                                    entry.options_type, extra))
    blocks += [describe_part(f.name, f.summary, f.options_type) for f in registry.families()]
    return "\n".join(blocks)
