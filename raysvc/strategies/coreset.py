"""CoreSet (Sener & Savarese, ICLR 2018): greedy k-center, here on cosine distance."""

import dataclasses

import numpy as np

from raysvc.strategies._guided import FeatureOptions, FeatureRequires, pool_features
from raysvc.strategies._kcenter import kcenter_greedy
from raysvc.strategies.base import ColdStartOptions, Pool, Selection, Strategy, cold_start_picks
from raysvc.strategies.registry import STRATEGIES


@STRATEGIES.register
class CoreSet(Strategy):
    """Pick images farthest from their nearest labeled or picked one, on L2-normalised points.

    The points are ``pool.embeddings`` when the learner provides them (students), else the
    VLM ``pool.features``; labeled images are the initial centres. Normalised, as both
    official codes: ActiveKD's (erjui/PCoreSet @075a76a ``strategies.py:54-152``) normalises
    the student's features and measures ``1 - cos``; APL's (ml-postech/active-prompt-learning
    @105a662 ``trainers/active_learning/coreset.py:61-84``) measures Euclidean distance
    between CLIP features the model has already normalised.

    ``cold_start="random"``: uniform picks while nothing is labeled (APL ``alvlm.py:531-532``).

    ``features`` other than "image" (CB paper Fig. 9c: CoreSet on class-guided features; Tab. 2's
    spaces) replace those points by the pool's text, class-guided or label-guided features
    (:mod:`raysvc.strategies._guided`, official unit-norm rows), students included.
    """

    @dataclasses.dataclass(frozen=True)
    class Options(ColdStartOptions, FeatureOptions):
        pass

    name = "coreset"
    requires = FeatureRequires("image")
    optional = frozenset({"embeddings"})

    def _select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        cold = cold_start_picks(self.options, pool, budget, rng)
        if cold is not None:
            return Selection(query=cold)
        if self.options.features != "image":
            points = pool_features(pool, self.options.features)
        else:  # a student's penultimate features where it has them (ActiveKD)
            points = pool.embeddings if pool.embeddings is not None else pool.features
        return Selection(query=kcenter_greedy(points, pool.labeled, budget, rng, normalize=True))
