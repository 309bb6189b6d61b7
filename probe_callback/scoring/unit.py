"""Unit vectors for cosine scores: rows divided by their norm, guarded so a zero row stays zero.

Example:
    >>> import numpy as np
    >>> np.round(unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]])), 6).tolist()
    [[0.6, 0.8], [0.0, 0.0]]
"""

from __future__ import annotations

import numpy as np

EPS = 1e-12  # added to norms and spreads that may be zero


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row of ``x`` (n, d) divided by its norm plus :data:`EPS`."""
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + EPS)
