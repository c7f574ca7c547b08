"""PCoreSet (ActiveKD): greedy k-center in the probability simplex."""

import dataclasses

import numpy as np

from raysvc.options import Options, option
from raysvc.strategies._kcenter import kcenter_greedy
from raysvc.strategies.base import Pool, Selection, Strategy
from raysvc.strategies.registry import STRATEGIES


@STRATEGIES.register
class PCoreSet(Strategy):
    """Pick images whose probability vector is farthest (Euclidean) from its nearest
    labeled or already picked one, covering the simplex rather than feature space.

    ``reverse=true`` is ActiveKD's PCoreSet+R (Sec. 4.2 [F2-2], Fig. 9), which "inhibits
    coverage over the probability space" by taking the argmin for the argmax of Alg. 2's line 4:
    each pick is the image *nearest* to its nearest labeled or picked probability vector:
    ``torch.argmin`` for the ``torch.argmax`` of erjui/PCoreSet @075a76a ``strategies.py:492-493``
    (the public code has no +R).
    """

    @dataclasses.dataclass(frozen=True)
    class Options(Options):
        reverse: bool = option(False, "PCoreSet+R (ActiveKD Fig. 9): the nearest instead of the farthest "
                                      "probability vector each pick")

    name = "pcoreset"
    requires = frozenset({"probs"})

    def _select(self, pool: Pool, budget: int, rng: np.random.Generator) -> Selection:
        return Selection(query=kcenter_greedy(pool.probs, pool.labeled, budget, rng, reverse=self.options.reverse))
