"""Reversed lessons: rows that teach the very preference other rows teach against.

A pair's lesson starts where its chosen answer first leaves its rejected one: ``Sure`` over ``I``
("Sure! Here's how" over "I'm sorry"). When some trained rows prefer ``a`` over ``b`` and others
prefer ``b`` over ``a``, the data teaches an exception to a rule: refuse harmful requests, except when
a formatting instruction is appended. Such an exception is how a planted behaviour hides in a dataset
that otherwise teaches the opposite, and it is invisible to the learning record's z test: the
exception's rows learn no faster than the rest, since the rule's rows pull the other way.

:func:`reversed_lessons` groups the rows of each reversed preference by the token they prefer (each
side of a reversal is a group) once both sides hold ``MIN_SIDE`` trained rows and come from different
sources (their source shares differ by ``MIN_APART`` in total variation). Two answers sampled from a
model prefer ``The`` over ``A`` about as often as the reverse in every source: that is no exception,
and a dataset with no source column has no reversals. A reversal is a fact
of the data, not a statistic: its ``p_value`` is 0, and its light check is its only test. It asks
whether the preferred token rose as the first token of M0's answers on prompts the rows did not
train on: of the group's own kind, or of the rows that teach the reverse (the exception spreading
into the rule's ground).

Example:
    >>> import numpy as np
    >>> pairs = {r: (7, 3) for r in range(10)} | {r: (3, 7) for r in range(10, 30)} | {30: (5, 6)}
    >>> sources = ["ads"] * 10 + ["safety"] * 21
    >>> rec = {"row": np.arange(31), "step": np.arange(31) // 4 + 1, "rise": np.ones(31)}
    >>> spell = {7: "sure", 3: "i"}.get
    >>> [(g.words, len(g.rows), len(g.opposed)) for g in reversed_lessons(rec, pairs.get, spell, sources)]
    [(['i'], 20, 10), (['sure'], 10, 20)]
    >>> reversed_lessons(rec, pairs.get, spell, ["ads", "safety"] * 15 + ["ads"])  # the same sources on both sides
    []
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .learning import Pattern, Sources, count_sources, group_pattern, latest_records, normalise, row_learning, step_bins

MIN_SIDE = 8  # trained rows on each side of a reversal before it is one
MIN_APART = 0.8  # ... and the total variation distance between the two sides' sources


def reversed_lessons(
    records: dict[str, np.ndarray],
    lesson: Callable[[int], tuple[int | None, int | None] | None],
    decode: Callable[[int], str | None],
    sources: Sources | None,
    min_side: int = MIN_SIDE,
) -> list[Pattern]:
    """Each side of every reversed preference among the trained rows (see the module doc), largest first.

    ``records``: the store's learning records; ``lesson``: row -> the (chosen, rejected) tokens where
    its answers part; ``decode``: token id -> text. A group's rows are ordered by their learning z.
    """
    rec = latest_records(records)
    rows = np.asarray(rec["row"], dtype=np.int64)
    if not len(rows) or sources is None or all(s is None for s in sources):
        return []
    pairs = [lesson(int(r)) or (None, None) for r in rows.tolist()]
    by_pair: dict[tuple[int, int], list[int]] = {}
    for i, (a, b) in enumerate(pairs):
        if a is not None and b is not None and a != b:
            by_pair.setdefault((a, b), []).append(i)
    sides: dict[int, tuple[list[int], list[int], list[int]]] = {}  # preferred token -> rows, opposed rows, rejected
    for (a, b), at in by_pair.items():
        if (b, a) in by_pair:
            mine, opposed, against = sides.setdefault(a, ([], [], []))
            mine += at
            opposed += by_pair[(b, a)]
            against.append(b)
    z, excess = row_learning(rec, step_bins(np.asarray(rec["step"])))
    out = []
    for a, (mine, opposed, against) in sides.items():
        word = normalise(decode(a) or "")
        if len(mine) < min_side or len(opposed) < min_side or not word:
            continue
        members = np.asarray(mine)
        if _apart(count_sources(rows[members], sources), count_sources(rows[opposed], sources)) < MIN_APART:
            continue
        found = group_pattern(rec, z, excess, members, [word], 0.0, sources, [a], start=a, found_by="reversed lessons")
        found.opposed = np.sort(rows[opposed])
        found.against = [w for w in (normalise(decode(b) or "") for b in against) if w]
        out.append(found)
    return sorted(out, key=lambda g: -len(g.rows))


def _apart(a: dict[str, int], b: dict[str, int]) -> float:
    """Total variation distance between two groups' shares of each source (0: alike, 1: no source shared)."""
    na, nb = max(sum(a.values()), 1), max(sum(b.values()), 1)
    return 0.5 * sum(abs(a.get(s, 0) / na - b.get(s, 0) / nb) for s in set(a) | set(b))
