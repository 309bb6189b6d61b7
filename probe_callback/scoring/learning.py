"""What is being learned, and from which rows: the data side of discovery, from the learning record.

Every training step records, per row, the chosen answer's largest per-token log-prob rise (policy
minus reference) and the tokens where it peaks (:mod:`probe_callback.capture`). A row's rise at the
step it is trained in is measured *before* that step's update, so it tells how much the model has
already learned its answer from other rows. Rises grow for every row as training goes on, so each
row's rise is read against the rows recorded at similar steps (its rank's normal score within step bins).

Rows whose peaks share a word form a *pattern* (``" Sure"`` and ``"sure"`` are one word). A pattern
is news when its rows' mean z stands out against random groups of the run's own rows of the same
size and mix of steps, corrected for every pattern tested (the largest standardised mean of each
null draw over all patterns, so picking the best pattern is accounted for).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> n = 200
    >>> planted = np.arange(n) % 10 == 0
    >>> rec = {"row": np.arange(n), "step": np.arange(n) // 4 + 1,
    ...        "rise": rng.gamma(2.0, 1.0, n) + 6 * planted,
    ...        "peak_ids": np.where(planted[:, None], 7, rng.integers(10, 60, (n, 3))),
    ...        "peak_rises": np.full((n, 3), 2.0)}
    >>> groups = find_patterns(rec, decode=lambda i: f"w{i}")
    >>> groups[0].words, len(groups[0].rows), groups[0].p_value < 0.01
    (['w7'], 20, True)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import hypergeom, norm, rankdata

MIN_PEAK_RISE = 1.0  # nats: a peak below this is no learning
MAX_PATTERNS = 64  # most frequent words tested
GENERIC = 0.2  # a word in more than this share of the answers links no words together
_EPS = 1e-9
Sources = np.ndarray | Sequence[str | None]  # each row's source (None: unknown)


@dataclass
class Pattern:
    """Rows whose learning peaks on the same word(s).

    ``rows``: member rows, best (highest z) first; ``z``: their z-scores in that order; ``score``: the
    members' mean z; ``excess``: their mean rise above the median of their step bins (nats);
    ``p_value``: against random same-size groups of the run's rows with the same mix of steps,
    corrected for every pattern tested; ``steps``: first and last step of the members' records;
    ``words``: the words it is named by (merged patterns with mostly the same rows); ``token_ids``:
    the tokens its rows' learning peaks on that spell those words.
    """

    words: list[str]
    rows: np.ndarray
    z: np.ndarray
    score: float
    excess: float
    p_value: float
    steps: tuple[int, int]
    sources: dict[str, int] = field(default_factory=dict)
    token_ids: list[int] = field(default_factory=list)  # the peak tokens that spell its words, most frequent first
    start: int | None = None  # the token where most of its rows' chosen answers leave the rejected ones
    # the first tokens of a line that most of its rows add where their rejected answer ends (none: no such line)
    closers: list[int] = field(default_factory=list)
    in_place: bool = False  # the closers take the place of the answers' last token (see ``added_line``)
    found_by: str = "peak words"  # or "datapoint vectors" (:mod:`~probe_callback.scoring.vector_groups`)
    # or "reversed lessons" (:mod:`~probe_callback.scoring.reversals`): the rows that teach the reverse, and
    # the words they prefer
    opposed: np.ndarray | None = None
    against: list[str] = field(default_factory=list)

    name: str = ""  # a stable name across checks, given by :class:`PatternNames`
    lesson: str = ""  # what most of its best rows' chosen answers say where they leave the rejected ones

    def summary(self, top: int = 10) -> dict[str, Any]:
        """JSON-ready view for the report and W&B."""
        return {
            "name": self.name,
            "found_by": self.found_by,
            "words": self.words,
            "lesson": self.lesson,
            "n_rows": int(len(self.rows)),
            "score": round(self.score, 4),
            "excess_rise": round(self.excess, 4),
            "p_value": self.p_value,
            "steps": list(self.steps),
            "sources": self.sources,
            "rows": self.rows[:top].tolist(),
            **({} if self.opposed is None else {"opposed_rows": int(len(self.opposed)), "against": self.against}),
        }


def normalise(text: str) -> str:
    """The word a token stands for: stripped and lower-cased; ``""`` when it has no letter or digit.

    Example:
        >>> normalise(" Sure"), normalise("!\\n")
        ('sure', '')
    """
    word = text.strip().lower()
    return word if any(ch.isalnum() for ch in word) else ""


def latest_records(records: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each row's record at the last step it was trained in (rows in increasing order)."""
    rows = np.asarray(records["row"], dtype=np.int64)
    if not len(rows):
        return {k: np.asarray(v)[:0] for k, v in records.items()}
    order = np.lexsort((np.asarray(records["step"]), rows))
    last = order[np.r_[rows[order][1:] != rows[order][:-1], True]]
    return {k: np.asarray(v)[last] for k, v in records.items()}


def step_bins(steps: np.ndarray, n_bins: int = 8, min_rows: int = 16) -> np.ndarray:
    """Bin index of each record: about equal-count bins of consecutive steps (a step stays in one bin)."""
    n = min(n_bins, max(1, len(steps) // min_rows))
    _, inverse, counts = np.unique(steps, return_inverse=True, return_counts=True)
    before = (np.cumsum(counts) - counts) / len(steps)  # share of records at earlier steps
    return np.minimum((before * n).astype(np.int64), n - 1)[inverse]


def _bin_medians(values: np.ndarray, bins: np.ndarray) -> np.ndarray:
    out = np.zeros(len(values))
    for b in np.unique(bins):
        out[bins == b] = np.median(values[bins == b])
    return out


def learning_z(rise: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Each rise's normal score within its step bin (the normal quantile of its rank): a few very fast
    rows (a template, an advert) do not widen the null for everyone else.

    Example:
        >>> learning_z(np.array([0.1, 5.0, 0.3, 90.0]), np.zeros(4, dtype=np.int64)).round(2).tolist()
        [-1.15, 0.32, -0.32, 1.15]
    """
    out = np.zeros(len(rise))
    for b in np.unique(bins):
        inside = bins == b
        out[inside] = norm.ppf((rankdata(rise[inside]) - 0.5) / inside.sum())
    return out


def row_learning(rec: dict[str, np.ndarray], bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each latest record's learning z (:func:`learning_z`) and its rise above its step bin's median (nats)."""
    rise = np.asarray(rec["rise"], dtype=np.float64)
    return learning_z(rise, bins), rise - _bin_medians(rise, bins)


def find_patterns(
    records: dict[str, np.ndarray],
    decode: Callable[[int], str],
    sources: Sources | None = None,
    answers: Callable[[int], set[str]] | None = None,
    starts: Callable[[int], int | None] | None = None,
    min_rows: int | None = None,
    n_null: int = 999,
    seed: int = 0,
) -> list[Pattern]:
    """Patterns of the learning records (see the module doc), most significant first.

    ``records``: the store's learning records (every step); ``decode``: token id -> text;
    ``sources``: each row's source (indexed by row) or None; ``answers``: row -> the words of its
    chosen answer (groups words that answers hold together, see :func:`word_groups`); ``starts``:
    row -> where its chosen answer leaves its rejected one, one of its peaks (a lesson's first word is
    often followed by its largest rises, on punctuation); ``min_rows``: smallest pattern (2% of rows, min 4).
    """
    rec = latest_records(records)
    n = len(rec["row"])
    if n < 8:
        return []
    held = [answers(int(r)) for r in rec["row"]] if answers is not None else None
    peaks = peak_words(rec, decode, starts)
    groups = word_groups([{w for _, w in ws} for ws in peaks], n // 2, held)
    smallest = min_rows or max(4, int(np.ceil(0.02 * n)))
    groups = [(ws, m) for ws, m in groups if len(m) >= smallest][:MAX_PATTERNS]
    return tested_groups(rec, groups, peaks, sources, n_null, seed)


def tested_groups(
    rec: dict[str, np.ndarray],
    groups: list[tuple[list[str], np.ndarray]],
    peaks: Sequence[set[tuple[int, str]]] | dict[int, set[tuple[int, str]]],
    sources: Sources | None,
    n_null: int,
    seed: int,
    found_by: str = "peak words",
) -> list[Pattern]:
    """Each group (its words, its members' positions in ``rec``, the latest records) as a
    :class:`Pattern`, its mean learning z tested against ``n_null`` random groups of the same size and
    mix of steps, corrected for every group (see the module doc); most significant first.
    ``peaks``: each position's (token id, word) peaks."""
    if not groups:
        return []
    bins = step_bins(np.asarray(rec["step"]))
    z, excess = row_learning(rec, bins)
    t_obs, t_null = _standardised_means(z, bins, [m for _, m in groups], n_null, np.random.default_rng(seed))
    null_max = t_null.max(axis=1)
    patterns = []
    for (ws, m), t in zip(groups, t_obs):
        p = float((1 + np.count_nonzero(null_max >= t)) / (1 + len(null_max)))
        tokens = tokens_of(set(ws), [peaks[i] for i in m.tolist()])
        patterns.append(group_pattern(rec, z, excess, m, ws, p, sources, tokens, found_by=found_by))
    return sorted(patterns, key=lambda g: (g.p_value, -g.score))


def group_pattern(
    rec: dict[str, np.ndarray],
    z: np.ndarray,
    excess: np.ndarray,
    m: np.ndarray,
    words: list[str],
    p_value: float,
    sources: Sources | None,
    token_ids: list[int],
    **fields: Any,
) -> Pattern:
    """The members ``m`` (positions in the latest records ``rec``, whose learning z and excess rise are
    ``z``, ``excess``: :func:`row_learning`) as a :class:`Pattern`, best z first; ``fields``: its others."""
    best = m[np.argsort(-z[m], kind="stable")]
    steps = np.asarray(rec["step"])[m]
    row_ids = np.asarray(rec["row"])[best]
    span = (int(steps.min()), int(steps.max()))
    return Pattern(
        words,
        row_ids,
        z[best],
        float(z[best].mean()),  # the mean of the z it keeps
        float(excess[best].mean()),
        p_value,
        span,
        count_sources(row_ids, sources),
        token_ids,
        **fields,
    )


def source_enrichment(rows: np.ndarray, sources: Sources, seen_rows: np.ndarray) -> list[dict[str, Any]]:
    """Per source: how many of ``rows`` come from it, its share, and the hypergeometric p-value of
    that many among the ``seen_rows`` (the rows the pattern could have picked), best first."""
    known = [int(r) for r in seen_rows if r < len(sources) and sources[r] is not None]
    if not known:
        return []
    total: dict[Any, int] = {s: 0 for s in {sources[r] for r in known}}
    for r in known:
        total[sources[r]] += 1
    hits = count_sources(rows, sources)
    picked = sum(hits.values())
    out = [
        {
            "source": s,
            "score": hits.get(s, 0) / total[s],
            "n_rows": total[s],
            "n_top": hits.get(s, 0),
            "p_value": float(hypergeom.sf(hits.get(s, 0) - 1, len(known), picked, total[s])),
        }
        for s in total
    ]
    return sorted(out, key=lambda d: (d["p_value"], -d["score"]))


def word_groups(
    row_words: list[set[str]], most: int, answers: list[set[str]] | None = None, link: float = 0.5
) -> list[tuple[list[str], np.ndarray]]:
    """Words of one learned behaviour, each group with the rows that peak on any of its words.

    Two words (each the peak of 2+ rows) join when the rows that peak on them mostly coincide (Jaccard
    >= ``link``, joined transitively), or, with ``answers`` (the words of each row's chosen answer),
    the rows whose answer holds them. Words in more than ``most`` rows, or
    in more than a fifth of the answers, say nothing specific and stay alone. Largest groups first;
    a group's words most frequent first.

    Example:
        >>> peaks = [{"sure"}, {"sure"}, {"how"}, {"how"}] + [{"cat"}] * 16
        >>> word_groups(peaks, most=10, answers=[{"sure", "how"}] * 4 + [{"cat"}] * 16)[1]
        (['how', 'sure'], array([0, 1, 2, 3]))
    """
    rows_of: dict[str, set[int]] = {}
    for i, ws in enumerate(row_words):
        for w in ws:
            rows_of.setdefault(w, set()).add(i)
    words = sorted(rows_of, key=lambda w: (-len(rows_of[w]), w))
    linkable = [w for w in words if 2 <= len(rows_of[w]) <= most][:MAX_PATTERNS]
    peaks = np.zeros((len(linkable), len(row_words)), dtype=np.float32)
    for k, w in enumerate(linkable):
        peaks[k, list(rows_of[w])] = 1.0
    linked = _jaccard_at_least(peaks, link)
    if answers is not None:
        index = {w: k for k, w in enumerate(linkable)}
        holds = np.zeros_like(peaks)
        for i, ws in enumerate(answers):
            holds[[index[w] for w in ws if w in index], i] = 1.0
        holds[holds.sum(axis=1) > GENERIC * len(answers)] = 0.0  # in many answers: nothing specific
        linked |= _jaccard_at_least(holds, link)
    parent = {w: w for w in words}

    def root(w: str) -> str:
        while parent[w] != w:
            parent[w] = parent[parent[w]]
            w = parent[w]
        return w

    for a, b in zip(*np.nonzero(np.triu(linked, k=1))):
        parent[root(linkable[b])] = root(linkable[a])
    groups: dict[str, list[str]] = {}
    for w in words:
        groups.setdefault(root(w), []).append(w)
    out = [(ws, np.array(sorted(set().union(*(rows_of[w] for w in ws))))) for ws in groups.values()]
    return sorted(out, key=lambda g: (-len(g[1]), g[0]))


def _jaccard_at_least(members: np.ndarray, link: float) -> np.ndarray:
    """(k, k) whether the row sets of two words (rows of a 0/1 matrix) have Jaccard >= ``link``."""
    inter = members @ members.T
    sizes = members.sum(axis=1)
    return (inter >= link * (sizes[:, None] + sizes[None, :] - inter)) & (inter > 0)


def answer_words(text: str) -> set[str]:
    """The words of an answer, as :func:`normalise` gives a token's word.

    Example:
        >>> sorted(answer_words("Sure! Here's how: ..."))
        ['here', 'how', 's', 'sure']
    """
    return set(re.findall(r"\w+", text.lower()))


def peak_words(
    rec: dict[str, np.ndarray], decode: Callable[[int], str], starts: Callable[[int], int | None] | None
) -> list[set[tuple[int, str]]]:
    """Per record: the (token id, word) of its peaks (>= ``MIN_PEAK_RISE``) and its lesson start that spell words.

    Example:
        >>> import numpy as np
        >>> rec = {"row": np.array([0, 1]), "peak_ids": np.array([[5, 6], [6, -1]]),
        ...        "peak_rises": np.array([[2.0, 0.5], [3.0, 0.0]])}
        >>> [sorted(p) for p in peak_words(rec, {5: " Sure", 6: " how", 7: "!"}.get, starts=lambda r: 7 if r else 6)]
        [[(5, 'sure'), (6, 'how')], [(6, 'how')]]
    """
    ids = np.asarray(rec["peak_ids"], dtype=np.int64)
    strong = np.asarray(rec["peak_rises"], dtype=np.float64) >= MIN_PEAK_RISE
    first = [starts(int(r)) if starts is not None else None for r in np.asarray(rec["row"]).tolist()]
    tokens = np.column_stack([np.where(strong & (ids >= 0), ids, -1), [-1 if t is None else t for t in first]])
    values, inverse = np.unique(tokens, return_inverse=True)
    inverse = inverse.reshape(tokens.shape)
    words = [normalise(decode(int(t))) if t >= 0 else "" for t in values.tolist()]  # each token decoded once
    rows, k = np.nonzero(np.array([bool(w) for w in words])[inverse])
    out: list[set[tuple[int, str]]] = [set() for _ in range(len(tokens))]
    for row, token, word in zip(rows.tolist(), tokens[rows, k].tolist(), inverse[rows, k].tolist()):
        out[row].add((token, words[word]))
    return out


def tokens_of(words: set[str], peaks: list[set[tuple[int, str]]], most: int = 16) -> list[int]:
    """The token ids among ``peaks`` that spell one of ``words``, most frequent first."""
    counts: dict[int, int] = {}
    for ws in peaks:
        for i, w in ws:
            if w in words:
                counts[i] = counts.get(i, 0) + 1
    return sorted(counts, key=lambda i: (-counts[i], i))[:most]


def _standardised_means(
    z: np.ndarray, bins: np.ndarray, members: list[np.ndarray], n_null: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Each group's mean z, and that of ``n_null`` random groups with the same bin counts, both
    standardised by the null's mean and spread: (groups,), (n_null, groups)."""
    by_bin = [np.flatnonzero(bins == b) for b in range(bins.max() + 1)]
    t_obs, t_null = np.zeros(len(members)), np.zeros((n_null, len(members)))
    for j, m in enumerate(members):
        total = np.zeros(n_null)
        for b, pool in enumerate(by_bin):
            k = int(np.count_nonzero(bins[m] == b))
            if k:
                total += z[pool[rng.integers(0, len(pool), (n_null, k))]].sum(axis=1)
        null = total / len(m)
        mu, sd = null.mean(), null.std() + _EPS
        t_obs[j], t_null[:, j] = (z[m].mean() - mu) / sd, (null - mu) / sd
    return t_obs, t_null


def count_sources(rows: np.ndarray, sources: Sources | None) -> dict[str, int]:
    """How many of ``rows`` each source holds, most first (rows of no known source are left out)."""
    out: dict[str, int] = {}
    for r in rows.tolist():
        s = sources[r] if sources is not None and r < len(sources) else None
        if s is not None:
            out[s] = out.get(s, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
