"""The grid's trials handed to Ray Tune one at a time.

Tune's ``grid_search`` deep-copies the whole list of its values for every trial it makes,
so starting a grid costs the square of its size: 230 s before the first of 2,000 one-run
trials started on a 2-core machine, nearly all of it in ``copy.deepcopy``
(``_grid_search_generator`` in ``ray/tune/search/variant_generator.py``). Tune asks a
searcher for one config per trial instead.
"""

from __future__ import annotations

import pickle
from typing import Any

from ray.tune.search import Searcher


class TrialConfigs(Searcher):
    """Suggests the given trial configs in order, each once, then ``FINISHED``. Its saved
    state is how many it has handed out; on ``Tuner.restore`` the configs come back with
    the Tuner (which pickles its searcher once, when the experiment starts)."""

    def __init__(self, configs: list[dict[str, Any]]):
        super().__init__()
        self._configs = configs
        self._handed_out = 0

    def suggest(self, trial_id: str) -> dict[str, Any] | str:
        if self._handed_out == len(self._configs):
            return Searcher.FINISHED
        self._handed_out += 1
        return self._configs[self._handed_out - 1]

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Nothing to learn from a result: every config is handed out as it is."""

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as fh:
            pickle.dump({"handed_out": self._handed_out}, fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            self._handed_out = pickle.load(fh)["handed_out"]
