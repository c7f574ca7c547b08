"""An (N, M) array whose rows are computed when they are read.

At ImageNet size a pool's class probabilities (1.28M x 1000 float32 = 5.1 GB) or its
class-guided features (1.28M x 2D) would each outweigh the pool itself. Strategies read
such arrays in row chunks anyway (``x[start:stop]``, ``x[rows]``), so a learner or a
feature builder can hand out a :class:`LazyRows` instead: rows are computed chunk by
chunk when indexed, and no whole-pool copy is ever made unless someone asks for one
(``np.asarray(view)``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from raysvc.chunks import COMPUTE_ROWS


class LazyRows:
    """``compute(rows)`` -> the (len(rows), M) float32 rows at the int64 positions ``rows``."""

    ndim = 2
    dtype = np.dtype(np.float32)

    def __init__(self, n_rows: int, n_cols: int, compute: Callable[[np.ndarray], np.ndarray]):
        self.shape = (int(n_rows), int(n_cols))
        self._compute = compute

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty((len(positions), self.shape[1]), dtype=np.float32)
        for start in range(0, len(positions), COMPUTE_ROWS):
            part = positions[start : start + COMPUTE_ROWS]
            out[start : start + len(part)] = self._compute(part)
        return out

    def __getitem__(self, key):
        columns = slice(None)
        if isinstance(key, tuple):
            key, columns = key
        if isinstance(key, (int, np.integer)):
            return self.rows(np.array([key]))[0, columns]
        if isinstance(key, slice):
            positions = np.arange(*key.indices(self.shape[0]))
        else:
            key = np.asarray(key)
            positions = np.flatnonzero(key) if key.dtype == bool else key
        if isinstance(columns, slice):
            return self.rows(positions)[:, columns]
        return self.rows(positions)[np.arange(len(positions)), np.asarray(columns)]

    def __array__(self, dtype=None, copy=None):
        whole = self.rows(np.arange(self.shape[0]))
        return whole if dtype is None else whole.astype(dtype)
