"""The typed specification of one run, as a user writes it (CLI flags, a job, a grid cell).

A run goes entry -> plan -> experiment -> loop -> store: the entry builds a
:class:`RunSpec`, :meth:`RunSpec.resolve` makes the :class:`~raysvc.plan.RunPlan`
(:mod:`raysvc.plan`), and :func:`raysvc.run.execute` takes it from there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from raysvc.errors import ConfigError
from raysvc.options import Options, option

if TYPE_CHECKING:
    from raysvc.plan import RunPlan
    from raysvc.storage import ObjectStore

# Options added after results were first stored stay out of the run id while they hold
# their default, so rerunning an older configuration keeps its id and replaces its files.
_ID_OPTIONAL = {
    "initial_per_class": 0, "backbone_params": {}, "dataset_params": {}, "prompt_template": None,
    "class_descriptions": None, "feature_centering": "none",
}  # fmt: skip
_NO_DEFAULT = object()
PARAM_FIELDS = ("strategy_params", "learner_params", "backbone_params", "dataset_params")


def _params(help: str) -> Any:  # noqa: A002
    return dataclasses.field(default_factory=dict, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class RunSpec(Options):
    """One active-learning run: a dataset, a strategy, a learner, a backbone, a seed.

    Every field is type-checked on construction (``test_fraction="0.2"`` is refused);
    :meth:`resolve` then turns it into a :class:`~raysvc.plan.RunPlan`, the one value the
    later stages take.
    """

    dataset: str = option("animal-mnist", "registered dataset name or image-folder path")
    strategy: str = option("cbsq", "query strategy (raysvc strategies)")
    learner: str = option("coop", "learner trained each round (raysvc learners)")
    backbone: str = option("conse-lite0", "VLM backbone (raysvc backbones)")
    rounds: int = option(8, "active-learning rounds")
    budget: int | None = option(None, "oracle queries per round; none: one per class")
    seed: int = option(0, "seeds the strategy and the learner")
    image_size: int | None = option(None, "input side for the backbone; none: its own (112 for 28-px images)")
    test_fraction: float = option(0.2, "share of each class held out for testing (datasets without their own split)")
    per_class: int | None = option(None, "keep at most this many images per class")
    initial_per_class: int = option(0, "random labeled images per class before round 1, trained on in round 0 (ActiveKD: 1)")
    split_seed: int = option(0, "seeds the pool/test split and subsampling, shared by all seeds of a study")
    split_file: str | None = option(None, "CoOp-style split JSON for an image folder")
    prompt_template: str | None = option(None, "class prompt template with one {}; none: the dataset's")
    class_descriptions: str | None = option(None, "JSON file: class name -> list of sentences, averaged per class")
    feature_centering: Literal["none", "pool"] = option(
        "none", "pool: subtract the unlabeled pool's mean image embedding (no labels used), then renormalise")
    strategy_params: dict[str, Any] = _params("the strategy's options (raysvc strategies)")
    learner_params: dict[str, Any] = _params("the learner's options (raysvc learners)")
    backbone_params: dict[str, Any] = _params("the backbone's options (raysvc backbones)")
    dataset_params: dict[str, Any] = _params("the dataset's options (raysvc datasets)")

    def check(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"option rounds={self.rounds!r}: must be >= 1")
        if self.initial_per_class < 0:
            raise ConfigError(f"option initial_per_class={self.initial_per_class!r}: must be >= 0")
        for name in ("budget", "image_size", "per_class"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"option {name}={value!r}: must be a positive integer")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"option test_fraction={self.test_fraction!r}: must be in (0, 1)")
        if self.prompt_template is not None and self.prompt_template.count("{}") != 1:
            raise ConfigError(f"option prompt_template={self.prompt_template!r}: needs exactly one {{}} for the class name")
        for name in ("dataset", "strategy", "learner", "backbone"):
            if not getattr(self, name):
                raise ConfigError(f"option {name}: must be a non-empty string")

    def resolve(self, dest: ObjectStore | None = None) -> RunPlan:
        """The run's plan: every part's name and options validated once, the backbone it
        encodes with, the class descriptions read, the run id checked; ``dest`` is where
        the run is stored (opened, and checked writable, by the caller). Cheap: loads no
        weights and no images, so a typo fails in seconds rather than after encoding."""
        from raysvc.plan import plan_run

        return plan_run(self, dest)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunSpec:
        return cls.parse(values, "run")

    @property
    def run_id(self) -> str:
        """Deterministic: a rerun of the same cell gets the same id and replaces its results."""
        values = {k: v for k, v in self.to_dict().items() if _ID_OPTIONAL.get(k, _NO_DEFAULT) != v}
        blob = json.dumps(values, sort_keys=True, default=str)
        readable = f"{Path(self.dataset).name}-{self.strategy}-{self.learner}-s{self.seed}"
        return f"{readable}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"
