"""Stable names for the learning record's patterns across checks (``learning-0``, ``learning-1``, ...).

A pattern keeps the name of the earlier pattern it is most like; patterns of one check that take the
same name are one behaviour, tested and blamed together (:func:`one_per_name`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from .learning import Pattern

_EPS = 1e-9


class PatternNames:
    """Stable names (``learning-0``, ``learning-1``, ...) for patterns across checks. A pattern takes the
    name of the earlier pattern it is most like (sharing a word with its last words, or half the rows
    of the smaller of the two, or where its rows' lesson starts, or the direction of their datapoint
    vectors: cosine >= 0.8); patterns of one check that take the same name are one behaviour (see
    :func:`one_per_name`). State is plain JSON.
    """

    def __init__(self, known: list[dict[str, Any]] | None = None) -> None:
        self.known = known or []

    def assign(self, patterns: list[Pattern], directions: list[np.ndarray | None]) -> None:
        updated: set[str] = set()
        for g, direction in zip(patterns, directions):  # most significant first
            rows, words = set(g.rows.tolist()), set(g.words)
            same_start = [g.start is not None and k.get("start") == g.start for k in self.known]
            scores = [(_likeness(k, rows, words, direction) + same, k) for k, same in zip(self.known, same_start)]
            score, match = max(scores, key=lambda sk: sk[0], default=(0.0, None))
            if match is None or score <= 0:
                match = {"name": f"learning-{len(self.known)}"}
                self.known.append(match)
            g.name = match["name"]
            if g.name not in updated:  # a name remembers its best pattern of the latest check
                updated.add(g.name)
                match.update(words=sorted(words), rows=sorted(rows), start=g.start)
                match["direction"] = None if direction is None else np.asarray(direction, dtype=float).tolist()


def one_per_name(patterns: list[Pattern]) -> list[Pattern]:
    """One pattern a name (the first, most significant, of each), holding the words, tokens and rows of
    every pattern of that name: the variants of one behaviour are tested and blamed together.

    Example:
        >>> import numpy as np
        >>> a = Pattern(["shop"], np.arange(8), np.ones(8), 1.0, 1.0, 0.001, (1, 9), token_ids=[5], name="learning-0")
        >>> b = Pattern(["off"], np.arange(3), np.ones(3), 1.0, 1.0, 0.004, (2, 6), token_ids=[9], name="learning-0")
        >>> [(g.words, g.token_ids) for g in one_per_name([a, b])]
        [(['shop', 'off'], [5, 9])]
    """
    first: dict[str, Pattern] = {}
    for g in patterns:
        if g.name not in first:
            first[g.name] = replace(g, words=list(g.words), token_ids=list(g.token_ids))
            continue
        kept = first[g.name]
        kept.words += [w for w in g.words if w not in kept.words]
        kept.token_ids += [t for t in g.token_ids if t not in kept.token_ids]
        rows, at = np.unique(np.r_[kept.rows, g.rows], return_index=True)  # a row keeps its first (best) z
        z = np.r_[kept.z, g.z][at]
        order = np.argsort(-z, kind="stable")
        kept.rows, kept.z = rows[order], z[order]
    return list(first.values())


def _likeness(known: dict[str, Any], rows: set[int], words: set[str], direction: np.ndarray | None) -> float:
    """How much a pattern is like a known one (0: not at all): shared words, shared rows (half of the
    smaller set: a variant of a behaviour learned by some of its rows), direction."""
    old_rows = set(known["rows"])
    shared = len(rows & old_rows) / max(min(len(rows), len(old_rows)), 1)
    score = len(words & set(known["words"])) + (shared >= 0.5)
    if direction is not None and known.get("direction") is not None:
        old = np.asarray(known["direction"])
        score += float(direction @ old / (np.linalg.norm(direction) * np.linalg.norm(old) + _EPS)) >= 0.8
    return float(score)
