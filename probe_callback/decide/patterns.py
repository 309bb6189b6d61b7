"""Decide on the learning record's patterns: news is INFO "being learned"; confirmed on the watched
prompts (by a probe, or a light check without generation) a pattern is decided like any behaviour.

:class:`LearningPatterns` finds the patterns (rows whose learning peaks on one word,
:func:`~probe_callback.scoring.learning.find_patterns`, rows whose datapoint vectors cluster,
:func:`~probe_callback.scoring.vector_groups.vector_groups`, and rows that teach the reverse of other rows,
:func:`~probe_callback.scoring.reversals.reversed_lessons`),
keeps their names across checks, writes their report entries (rows, steps, sources) and tests them
on the watched prompts outside their rows (:func:`outside_prompts`).

Example:
    >>> flow = LearningPatterns(Entries(policy), Attribution(rows, store_dir), rows, store_dir)  # doctest: +SKIP
    >>> decided = flow.decide(step, tokenizer, (probe, watch))                                   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..capture.rows import RowIndex
from ..capture.text import added_text, answer_text, common_text, to_text
from ..scoring.attribution import combine_scores, rank_rows, top_rows
from ..scoring.blame import top_steps
from ..scoring.confirmation import (
    added_line,
    appended_starts,
    confirm,
    first_difference,
    gained_words,
    shared_token,
)
from ..scoring.learning import (
    Pattern,
    Sources,
    answer_words,
    count_sources,
    find_patterns,
    normalise,
    source_enrichment,
)
from ..scoring.pattern_names import PatternNames, one_per_name
from ..scoring.probing import encode_response
from ..scoring.reversals import reversed_lessons
from ..scoring.unit import unit_rows
from ..scoring.vector_groups import lesson_clusters, vector_groups
from ..scoring.watch import Probe, Watch
from ..store.vectors import VectorStore
from .blame_rows import Attribution, first_steps
from .entries import Decided, Entries

PATTERN_ALPHA = 0.01  # a learning pattern is news at this level (corrected for every pattern tested)
CONFIRM_ALPHA = 0.05  # the probe confirms it when its words are gained beyond this share of control words
MIN_CONFIRMED = 2  # ... on at least this many watched prompts outside its rows
RECLUSTER_GROWTH = 1.25  # the datapoint vectors are clustered again once the trained rows grew this much
# pattern -> score, p-value, note for the report, reason when confirmed
Check = Callable[[Pattern], tuple[float, float, dict[str, Any], str | None]]


class LearningPatterns:
    """The data side of discovery: the learning record's patterns, decided into ``book``'s entries."""

    def __init__(
        self, book: Entries, blame: Attribution, rows: RowIndex, store_dir: Path, top_k: int = 50, seed: int = 0
    ) -> None:
        self.book, self.blame, self.rows = book, blame, rows
        self.store_dir, self.top_k, self.seed = Path(store_dir), top_k, seed
        self.patterns: list[Pattern] = []
        self.names = PatternNames()
        self.scores: dict[str, np.ndarray] = {}  # each reported pattern's score of every row
        self.learning: dict[str, Any] | None = None  # the last check's patterns, for the report
        self._answers: dict[int, set[str]] = {}  # the words of each row's chosen answer (cached)
        self.starts: dict[int, int | None] = {}  # where each row's chosen answer leaves its rejected one (cached)
        self.rejects: dict[int, int | None] = {}  # ... and the rejected answer's token there (cached)
        self._tokens: dict[int, set[int]] = {}  # the tokens of each row's chosen answer (cached)
        self._added: dict[int, tuple[int, str, bool] | None] = {}  # what a chosen answer adds after the rejected one
        self._lessons: tuple[int, tuple[np.ndarray, list[np.ndarray]]] | None = None  # trained rows then, clusters
        self._centre: tuple[int, np.ndarray] | None = None  # stored rows then, their mean unit vector

    def decide(self, step: int, tokenizer: Any, probed: tuple[Probe, Watch] | None) -> Decided:
        """Patterns of the learning record; at a probe, each one is tested on the watched prompts."""
        found = self.news(step, tokenizer)
        if found is None:
            return []
        news, records, store = found
        if probed is None:
            return self.decisions(step, news, records, None, None)
        before, gained, outside_of = self._gained(*probed, records)

        def check(g: Pattern) -> tuple[float, float, dict[str, Any], str | None]:
            conf = confirm(g.words, gained, outside_of(g), before)
            confirmed = conf.count >= MIN_CONFIRMED and conf.p_value <= CONFIRM_ALPHA
            note = {"step": step, **asdict(conf)}
            return (
                conf.count / max(conf.n_outside, 1),
                g.p_value if confirmed else 1.0,
                note,
                (_confirmed(g, conf) if confirmed else None),
            )

        return self.decisions(step, news, records, store, check, note_key="confirmation")

    def news(self, step: int, tokenizer: Any) -> tuple[list[Pattern], dict[str, np.ndarray], VectorStore] | None:
        """The learning record's patterns now (kept for the report), and those that are news, one per name."""
        try:
            store = VectorStore.open(self.store_dir)
        except FileNotFoundError:
            return None
        records = store.memberships()
        spell, sources = partial(decode, tokenizer), self.rows.sources_array()
        starts = partial(self.first_difference, tokenizer=tokenizer)
        by_words = find_patterns(records, spell, sources, self.answer_words, starts, seed=self.seed + step)
        by_vectors = vector_groups(records, self.lessons(records, store), spell, sources, starts, seed=self.seed + step)
        reversals = reversed_lessons(records, partial(self.lesson, tokenizer=tokenizer), spell, sources)
        self.patterns = sorted(by_words + by_vectors + reversals, key=lambda g: (g.p_value, -g.score))
        for g in self.patterns:
            g.lesson = self.said(g)["text"]
        news = [g for g in self.patterns if g.p_value <= PATTERN_ALPHA]
        for g in news:  # where the rows' lesson starts: a token the light check reads in M0's answers too
            g.start = shared_token([self.first_difference(int(r), tokenizer) for r in g.rows[:64]])
            added = [self.added(int(r), tokenizer) for r in g.rows[:64]]
            g.closers = appended_starts(added)
            in_place = [a[2] for a in added if a is not None and a[0] in g.closers]
            g.in_place = sum(in_place) > len(in_place) / 2  # most of its lines open in place of the last token
            g.token_ids += [t for t in dict.fromkeys([g.start, *g.closers]) if t is not None and t not in g.token_ids]
        centre = self.centre(store)
        self.names.assign(news, [_rows_direction(store, g.rows, centre) for g in news])
        news = one_per_name(news)
        self.learning = {"step": step, "patterns": [g.summary(5) for g in self.patterns[:10]]}
        return news, records, store

    def decisions(
        self,
        step: int,
        news: list[Pattern],
        records: dict[str, np.ndarray],
        store: VectorStore | None,
        check: Check | None,
        note_key: str = "",
    ) -> Decided:
        """A pattern seen for the first time is INFO "being learned"; with a ``check`` (pattern -> score,
        p-value, note for the report's ``note_key``, reason when confirmed) it is tested and decided like
        any behaviour."""
        out: Decided = []
        policy = self.book.policy
        for g in news:
            entry = self.book.entry(g.name, "emergent")
            entry.update(self.entry(g, records, store))
            entry["score_history"].append([step, g.score])
            if not policy.knows(g.name):
                decision = policy.update(g.name, "emergent", step, g.score, None)
                out.append((replace(decision, reason=_being_learned(g)), None))
            if check is None:
                continue
            score, p_value, note, reason = check(g)
            entry[note_key] = note
            decision = policy.update(g.name, "emergent", step, score, p_value)
            if reason is not None:
                decision = replace(decision, reason=f"{decision.reason}; {reason}")
            out.append((decision, None))
        return out

    def lessons(self, records: dict[str, np.ndarray], store: VectorStore) -> tuple[np.ndarray, list[np.ndarray]]:
        """The clusters of the trained rows' datapoint vectors (:func:`lesson_clusters`), found again only
        once the trained rows grew by ``RECLUSTER_GROWTH`` (clustering is the dear part of a learning check)."""
        n = len(np.unique(records["row"]))
        if self._lessons is None or n >= RECLUSTER_GROWTH * self._lessons[0]:
            self._lessons = (n, lesson_clusters(records, store.vectors_for, store.row_ids(), self.seed))
        return self._lessons[1]

    def centre(self, store: VectorStore) -> np.ndarray:
        """Every stored row's mean unit vector (:func:`mean_unit_vector`, a pass over the store), read
        again only once more rows are stored."""
        n = store.n_rows
        if self._centre is None or self._centre[0] != n:
            self._centre = (n, mean_unit_vector(store))
        return self._centre[1]

    def first_difference(self, row: int, tokenizer: Any) -> int | None:
        """The token where a row's chosen answer first leaves its rejected one (cached)."""
        return self.lesson(row, tokenizer)[0]

    def lesson(self, row: int, tokenizer: Any) -> tuple[int | None, int | None]:
        """The chosen and the rejected answer's tokens where a row's answers part (cached)."""
        if row not in self.starts:
            chosen, rejected = (answer_text(self.rows.text(row, f)) for f in ("chosen", "rejected"))
            ids = [encode_response(tokenizer, t) for t in (chosen, rejected)]
            self.starts[row], self.rejects[row] = first_difference(*ids), first_difference(*ids[::-1])
            self._tokens[row] = set(ids[0])
            self._added[row] = added_line(ids[0], ids[1], tokenizer.decode)
        return self.starts[row], self.rejects[row]

    def added(self, row: int, tokenizer: Any) -> tuple[int, str, bool] | None:
        """What a row's chosen answer adds where its rejected one ends (:func:`added_line`, cached)."""
        self.lesson(row, tokenizer)
        return self._added[row]

    def rejected_answer(self, row: int, tokenizer: Any) -> list[int]:
        """A row's rejected answer, as tokens that follow the chat-formatted prompt."""
        return encode_response(tokenizer, answer_text(self.rows.text(row, "rejected")))

    def answer_tokens(self, row: int, tokenizer: Any) -> set[int]:
        """The tokens of a row's chosen answer (cached)."""
        self.lesson(row, tokenizer)
        return self._tokens[row]

    def answer_words(self, row: int) -> set[str]:
        """The words of a row's chosen answer (cached)."""
        if row not in self._answers:
            self._answers[row] = answer_words(self.rows.text(row, "chosen"))
        return self._answers[row]

    def _gained(
        self, probe: Probe, watch: Watch, records: dict[str, np.ndarray]
    ) -> tuple[list[set[str]], list[set[str]], Callable[[Pattern], np.ndarray]]:
        """The words of M0's answers, those each current answer gained, and which watched prompts lie
        outside a pattern (see :func:`outside_prompts`)."""
        before = [{normalise(t) for t in watch.answers([[x] for x in r])} for r in watch.r0]
        return before, gained_words(probe.tokens, probe.novelty, before), self.outside(watch, probe.valid, records)

    def outside(
        self, watch: Watch, valid: np.ndarray, records: dict[str, np.ndarray]
    ) -> Callable[[Pattern], np.ndarray]:
        """pattern -> the ``valid`` watched prompts that can confirm it (see :func:`outside_prompts`)."""
        watched = self.rows.rows_with_prompts([to_text(p) for p in watch.prompts])
        trained = np.unique(records["row"])
        return partial(
            outside_prompts, watched=watched, sources=self.rows.sources_array(), valid=valid, trained=trained
        )

    def entry(self, g: Pattern, records: dict[str, np.ndarray], store: VectorStore | None) -> dict[str, Any]:
        """Rows, steps and sources of a pattern: its own rows first (best learning first), then, with a
        ``store`` (at probes and pauses, not the cheap checks between them), the rows whose datapoint
        vectors point its way (rows not trained on yet, after a pause's datapoint pass)."""
        seen = np.unique(records["row"])
        signal = np.full(self.rows.n_rows, np.nan)
        signal[seen[seen < len(signal)]] = -1e3  # trained on, not in the pattern: below every member
        signal[g.rows] = g.z
        scores = signal
        direction = None if store is None else _rows_direction(store, g.rows, self.centre(store))
        if store is not None and direction is not None and np.linalg.norm(direction) > 0:
            cosine = rank_rows(store, direction, top_k=1, n_null=0, seed=self.seed).cosine
            scores = combine_scores(
                [signal, np.pad(cosine, (0, max(0, len(signal) - len(cosine))), constant_values=np.nan)]
            )
        self.scores[g.name] = scores
        first_step = first_steps(records)
        return {
            "words": g.words,
            "found_by": "learning record",
            "top_rows": [self.blame.row(int(r), float(scores[r]), first_step) for r in top_rows(scores, self.top_k)],
            "top_steps": [s.to_dict() for s in top_steps(scores, records)],
            "top_sources": source_enrichment(g.rows, self.rows.sources_array(), seen),
            "attribution_p_value": g.p_value,
            "pattern": g.summary(),
            "lesson": self.said(g),
        }

    def said(self, g: Pattern, n_rows: int = 20) -> dict[str, Any]:
        """What most of a pattern's best rows' chosen answers say where they leave the rejected ones
        (:func:`~probe_callback.capture.text.common_text`): ``text``, and how many ``rows`` ``of`` those say it."""
        pairs = [[answer_text(self.rows.text(r, f)) for f in ("chosen", "rejected")] for r in g.rows[:n_rows].tolist()]
        text, n = common_text([added_text(chosen, rejected) for chosen, rejected in pairs])
        return {"text": text, "rows": n, "of": len(pairs)}

    def reattribute(self) -> None:
        """Rank the store again for every reported pattern (e.g. after more rows were stored)."""
        reported = one_per_name([g for g in self.patterns if g.name in self.book.behaviours])
        if not reported:
            return
        store = VectorStore.open(self.store_dir)
        records = store.memberships()
        for g in reported:
            self.book.behaviours[g.name].update(self.entry(g, records, store))


def outside_prompts(
    g: Pattern,
    watched: list[list[int]],
    sources: Sources,
    valid: np.ndarray,
    trained: np.ndarray,
    min_prompts: int = 8,
) -> np.ndarray:
    """Watched prompts that can confirm a pattern: not from its rows; from the sources that hold a tenth
    or more of its rows only when not trained on yet (does the learning reach prompts of its kind the
    model has not seen? a prompt it trained on says its own answer back); from any other source.
    A reversed lesson (its ``opposed`` rows teach the reverse) is confirmed on prompts of its own kind not
    trained on yet, or of the kind of the rows that teach the reverse (the exception spreading), or held out.
    Unless that leaves fewer than ``min_prompts`` (then every prompt not from its rows).
    ``watched``: the training rows each watched prompt comes from (none for held-out prompts);
    ``trained``: the rows trained on so far (sorted).

    Example:
        >>> import numpy as np
        >>> g = Pattern(["shop"], np.array([0, 1]), np.ones(2), 1.0, 1.0, 0.001, (1, 2), {"ads": 2})
        >>> watched = [[0], [2], [3], [4]]   # rows 0-3 are ads, row 4 is not; rows 0-2 trained
        >>> sources = np.array(["ads", "ads", "ads", "ads", "qa"], dtype=object)
        >>> outside_prompts(g, watched, sources, np.ones(4, bool), np.array([0, 1, 2]), min_prompts=1)
        array([False, False,  True,  True])
    """
    own = set(g.rows.tolist())
    not_own = np.array([not own.intersection(rows) for rows in watched], dtype=bool) & valid
    new = fresh_of_its_kind(g, watched, sources, trained)
    if g.opposed is None:
        ok = not_own & (~of_its_kind(g, watched, sources) | new)
    else:  # held-out prompts (no rows) are of no known kind: they may confirm any pattern
        theirs = of_kind(count_sources(g.opposed, sources), len(g.opposed), watched, sources)
        ok = not_own & (new | theirs | np.array([not rows for rows in watched], dtype=bool))
    return ok if ok.sum() >= min_prompts else not_own


def fresh_of_its_kind(g: Pattern, watched: list[list[int]], sources: Sources, trained: np.ndarray) -> np.ndarray:
    """Which watched prompts are of a pattern's kind (:func:`of_its_kind`) and of rows not ``trained`` on yet.

    Example:
        >>> import numpy as np
        >>> g = Pattern(["shop"], np.array([0, 1]), np.ones(2), 1.0, 1.0, 0.001, (1, 2), {"ads": 2})
        >>> sources = np.array(["ads", "ads", "ads", "qa"], dtype=object)
        >>> fresh_of_its_kind(g, [[0], [1], [2], [3], []], sources, np.array([0, 1]))
        array([False, False,  True, False, False])
    """
    fresh = np.array([not np.isin(rows, trained).any() for rows in watched], dtype=bool)
    return of_its_kind(g, watched, sources) & fresh


def of_its_kind(g: Pattern, watched: list[list[int]], sources: Sources) -> np.ndarray:
    """Which watched prompts come from the sources that hold a tenth or more of a pattern's rows.

    Example:
        >>> import numpy as np
        >>> g = Pattern(["shop"], np.array([0, 1]), np.ones(2), 1.0, 1.0, 0.001, (1, 2), {"ads": 2})
        >>> of_its_kind(g, [[0], [2], [], [4]], np.array(["ads", "qa", "ads", "qa", "qa"], dtype=object))
        array([ True,  True, False, False])
    """
    return of_kind(g.sources, len(g.rows), watched, sources)


def of_kind(counts: dict[str, int], n_rows: int, watched: list[list[int]], sources: Sources) -> np.ndarray:
    """Which watched prompts come from the sources that hold a tenth or more of a group's ``n_rows``
    rows (``counts``: its rows per source)."""
    mine = {s for s, n in counts.items() if n >= 0.1 * n_rows}
    return np.array([any(r < len(sources) and sources[r] in mine for r in rows) for rows in watched], dtype=bool)


def decode(tokenizer: Any, token: int) -> str:
    """A token's text."""
    return tokenizer.decode([token], skip_special_tokens=True)


def _unit_mean(vectors: np.ndarray) -> np.ndarray:
    return unit_rows(vectors).mean(axis=0)


def _rows_direction(store: VectorStore, rows: np.ndarray, centre: np.ndarray) -> np.ndarray | None:
    """Mean unit datapoint vector of ``rows`` minus ``centre`` (every stored row's); None when some of
    ``rows`` have no stored vector yet."""
    try:
        return _unit_mean(store.vectors_for(rows)) - centre
    except KeyError:
        return None


def mean_unit_vector(store: VectorStore) -> np.ndarray:
    """Mean of every stored row's unit vector (one pass, a chunk at a time)."""
    total, n = np.zeros(store.dim), 0
    for _, vecs in store.iter_vectors():
        total += _unit_mean(vecs.astype(np.float32)) * len(vecs)
        n += len(vecs)
    return total / max(n, 1)


def _being_learned(g: Pattern) -> str:
    sources = ", ".join(f"{s} ({n})" for s, n in list(g.sources.items())[:3]) or "no source column"
    rows = f"whose learning peaks on {g.words[:4]}"
    if g.opposed is not None:
        return (
            f"being learned against other rows: {len(g.rows)} rows prefer {g.words[0]!r} where "
            f"{len(g.opposed)} other rows prefer {g.against[:4]} over it (reversed lessons; its z "
            f"{g.score:+.2f}); sources {sources}"
        )
    if g.found_by != "peak words":
        rows = "whose datapoint vectors cluster together" + (f" (over-represented: {g.words[:4]})" if g.words else "")
    return (
        f"being learned: {len(g.rows)} rows {rows} stand out "
        f"({g.excess:+.2f} nats above rows of the same steps, p={g.p_value:.3g} against random rows of the "
        f"same steps); sources {sources}"
    )


def _confirmed(g: Pattern, conf: Any) -> str:
    return (
        f"confirmed on watched prompts outside its rows: {conf.count}/{conf.n_outside} answers gained "
        f"{g.words[:4]} (p={conf.p_value:.3g} against the run's other learned words)"
    )
