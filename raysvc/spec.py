"""A run as a user writes it (:class:`RunSpec`: CLI flags, a job, a grid cell) and as it is
planned (:class:`RunPlan`, stage two of five).

A run goes entry -> plan -> experiment -> loop -> store: the entry builds a
:class:`RunSpec`; :meth:`RunSpec.resolve` (:func:`plan_run`) validates what the later
stages use: each named part's options (:class:`~raysvc.registry.Part`, parsed once), the
backbone reference the features are encoded with, the class descriptions, the run id,
and the destination the caller opened. It loads no weights and no images: a typo fails
in seconds, and every later stage takes the plan as it is, never re-parsing an option;
:func:`raysvc.run.execute` takes it from there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import posixpath
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from raysvc.backbones import BackboneRef
from raysvc.errors import ConfigError
from raysvc.options import Options, option
from raysvc.registry import BACKBONES, DATASETS, LEARNERS, STRATEGIES, Part

if TYPE_CHECKING:
    from raysvc.storage import ObjectStore

# Options added after results were first stored stay out of the run id while they hold
# their default, so rerunning an older configuration keeps its id and replaces its files.
_ID_OPTIONAL = {
    "initial_per_class": 0, "backbone_params": {}, "dataset_params": {}, "prompt_template": None,
    "class_descriptions": None, "feature_centering": "none", "pool_subsample": None, "base_to_novel": "off",
}  # fmt: skip
_NO_DEFAULT = object()
PARAM_FIELDS = ("strategy_params", "learner_params", "backbone_params", "dataset_params")


def _params(help: str) -> Any:  # noqa: A002
    return dataclasses.field(default_factory=dict, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class RunSpec(Options):
    """One active-learning run: a dataset, a strategy, a learner, a backbone, a seed.

    Every field is type-checked on construction (``test_fraction="0.2"`` is refused);
    :meth:`resolve` then turns it into a :class:`RunPlan`, the one value the later stages take.
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
    pool_subsample: int | None = option(
        None, "keep this many unlabeled pool images, drawn with the seed after the k-shot start (ActiveKD: 100000 "
              "on ImageNet); none: the whole pool")
    base_to_novel: Literal["off", "halves", "seeded"] = option(
        "off", "train on half the classes, evaluate on them and on the held-out half (test_acc_base, "
               "test_acc_novel, test_acc_hm): halves = CoOp's first half, seeded = drawn with split_seed")
    strategy_params: dict[str, Any] = _params("the strategy's options (raysvc strategies)")
    learner_params: dict[str, Any] = _params("the learner's options (raysvc learners)")
    backbone_params: dict[str, Any] = _params("the backbone's options (raysvc backbones)")
    dataset_params: dict[str, Any] = _params("the dataset's options (raysvc datasets)")

    def check(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"option rounds={self.rounds!r}: must be >= 1")
        if self.initial_per_class < 0:
            raise ConfigError(f"option initial_per_class={self.initial_per_class!r}: must be >= 0")
        for name in ("budget", "image_size", "per_class", "pool_subsample"):
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

    def resolve(self, dest: ObjectStore | None = None, *, store_probs: bool = False) -> RunPlan:
        """The run's plan: every part's name and options validated once, the backbone it
        encodes with, the class descriptions read, the run id checked; ``dest`` is where
        the run is stored (opened, and checked writable, by the caller), ``store_probs``
        whether each round's pool probabilities are stored with it. Cheap: loads no
        weights and no images, so a typo fails in seconds rather than after encoding."""
        return plan_run(self, dest, store_probs=store_probs)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunSpec:
        return cls.parse(values, "run")

    @property
    def run_id(self) -> str:
        """Deterministic: a rerun of the same cell gets the same id and replaces its results."""
        values = {k: v for k, v in self.to_dict().items() if _ID_OPTIONAL.get(k, _NO_DEFAULT) != v}
        blob = json.dumps(values, sort_keys=True, default=str)
        folder = Path(self.dataset).name
        # ':' of a family name (sq:coreset) cannot name a run's folder
        readable = f"{'' if folder == '..' else folder}-{self.strategy.replace(':', '+')}-{self.learner}-s{self.seed}"
        return f"{readable}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


# 28-pixel images gain nothing from 224-pixel inputs (measured: same zero-shot accuracy
# on Animal-MNIST at 112) and cost seven times the encoding
SMALL_IMAGE_SIDE = 112


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a run does, resolved: the spec as given, and each part ready to build.

    ``descriptions``: class name -> sentences read from ``spec.class_descriptions``;
    ``dest``: where the run is stored (None: nowhere); ``store_probs``: each round's pool
    probabilities stored with it (an output setting: not part of the run id).
    """

    spec: RunSpec
    run_id: str
    dataset: Part
    strategy: Part
    learner: Part
    backbone: BackboneRef
    descriptions: Mapping[str, tuple[str, ...]] | None = None
    dest: ObjectStore | None = None
    store_probs: bool = False

    @property
    def options(self) -> dict[str, dict[str, Any]]:
        """Every part's options with defaults filled in (the manifest records them)."""
        parts = {"dataset": self.dataset, "strategy": self.strategy, "learner": self.learner,
                 "backbone": self.backbone.part}
        return {kind: part.options.to_dict() for kind, part in parts.items()}


def default_image_size(spec: RunSpec, dataset: Part) -> int | None:
    """The backbone's input side: the spec's, else SMALL_IMAGE_SIDE for a ConSE backbone on
    a dataset of small images, else the backbone's own (None)."""
    if spec.image_size is not None:
        return spec.image_size
    native = dataset.cls.native_size
    small = native is not None and native < 64
    return SMALL_IMAGE_SIDE if small and spec.backbone.startswith("conse-") else None


def dataset_path(name: str) -> str:
    """``name`` as a run records it (its id, its manifest's config): a dataset folder's path
    normalised lexically, so ``colors``, ``colors/``, ``./colors`` and ``x/../colors`` are one
    experiment; a registered name, or a folder that does not exist (refused later, as typed),
    unchanged.

    Lexical, not resolved against the file system: a run id must not depend on the machine,
    and the same relative path (or ``~/data/colors``) names the same experiment on a laptop
    and on a cluster node where the folder sits under another absolute path or behind
    another symbolic link. So ``~`` stays as written, symbolic links are not followed, and a
    relative path stays relative (it and the absolute path of one folder are two spellings).
    Where a ``..`` follows a symbolic link, the lexical form names another folder than the
    file system does: that is refused (ConfigError) rather than stored under a wrong name.
    """
    if "path" not in DATASETS.resolve(name).preset or not Path(name).expanduser().is_dir():
        return name
    if name.startswith("~"):  # ~ or ~user is a root of its own: "~/.." is not "."
        home, _, rest = name.partition("/")
        rest = posixpath.normpath(rest) if rest else "."
        lexical = home if rest == "." else f"{home}/{rest}"
    else:
        lexical = posixpath.normpath(name)
    if lexical == name:
        return name
    try:
        same = os.path.samefile(Path(name).expanduser(), Path(lexical).expanduser())
    except OSError:
        same = False
    if not same:
        raise ConfigError(f"dataset {name!r}: '..' after a symbolic link names another folder than {lexical!r}; "
                          "give the folder's path without '..'")
    if "path" not in DATASETS.resolve(lexical).preset:  # "emoji/" is a folder, not the registered emoji
        lexical = f"./{lexical}"
    return lexical


def plan_run(spec: RunSpec, dest: ObjectStore | None = None, *, store_probs: bool = False) -> RunPlan:
    """:meth:`RunSpec.resolve`: see the module docstring. The plan's spec is the one given with
    its dataset path normalised (:func:`dataset_path`), so that the run id and the manifest's
    config agree."""
    from raysvc.prompts import read_descriptions
    from raysvc.storage import check_run_id

    if (dataset_name := dataset_path(spec.dataset)) != spec.dataset:
        spec = dataclasses.replace(spec, dataset=dataset_name)
    run_id = check_run_id(spec.run_id)
    dataset_values = dict(spec.dataset_params)
    if spec.split_file is not None:
        dataset_values["split_file"] = spec.split_file
    dataset = DATASETS.part(spec.dataset, dataset_values)
    backbone = BACKBONES.part(spec.backbone, spec.backbone_params)
    learner = LEARNERS.part(spec.learner, spec.learner_params)
    if spec.base_to_novel != "off" and not learner.cls.transfers_to_new_classes(learner.options):
        raise ConfigError(f"base_to_novel={spec.base_to_novel!r} needs a learner whose prompts carry over to unseen "
                          f"class names (coop with prompt=unified), not {spec.learner!r} with these options")
    return RunPlan(
        spec=spec,
        run_id=run_id,
        dataset=dataset,
        strategy=STRATEGIES.part(spec.strategy, spec.strategy_params),
        learner=learner,
        backbone=BackboneRef(backbone, default_image_size(spec, dataset)),
        descriptions=read_descriptions(spec.class_descriptions) if spec.class_descriptions is not None else None,
        dest=dest,
        store_probs=store_probs,
    )
