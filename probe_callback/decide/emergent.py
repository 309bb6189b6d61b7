"""Decide on emergent clusters of watched prompts: screened by discovery, alarmed on their data blame.

:class:`EmergentClusters` updates the :class:`~probe_callback.scoring.discovery.EmergentTracker` at each
probe, keeps the drift map and the prompts' drift history, attributes each significant cluster and
links it to the learning patterns that share its words or its top rows (a cluster linked to a significant
pattern takes the pattern's rows and confidence).

Example:
    >>> clusters = EmergentClusters(book, blame, patterns, EmergentTracker())  # doctest: +SKIP
    >>> decided = clusters.decide(probe, watch)                                # doctest: +SKIP
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from ..scoring.discovery import EmergentBehaviour, EmergentTracker, prompt_drift, random_set_directions
from ..scoring.learning import normalise
from ..scoring.watch import Probe, Watch
from .blame_rows import Attribution
from .entries import Decided, Entries
from .patterns import PATTERN_ALPHA, LearningPatterns

SAMPLES = 3
LINK_AGREEMENT = 0.5  # a pattern that shares no word links when its rows are this share of the top rows


class EmergentClusters:
    """The emergent clusters' flow, decided into ``book``'s entries; ``patterns``: the learning patterns
    a cluster may be linked to."""

    def __init__(
        self, book: Entries, blame: Attribution, patterns: LearningPatterns, tracker: EmergentTracker, seed: int = 0
    ) -> None:
        self.book, self.blame, self.patterns, self.tracker, self.seed = book, blame, patterns, tracker, seed
        self.prompt_drift_history: list[dict[str, Any]] = []
        self.drift_map: dict[str, Any] | None = None

    def decide(self, probe: Probe, watch: Watch) -> Decided:
        """Update the clusters with this probe; decide each one seen now or reported before."""
        ok = np.flatnonzero(probe.valid)
        seen = self.tracker.update(
            probe.step,
            [watch.base_tokens()[i] for i in ok],
            [probe.cur_tokens[i] for i in ok],
            [probe.novelty[i] for i in ok],
            [probe.tokens[i] for i in ok],
        )
        vectors = self.tracker.vectors
        self._drift_map(vectors, watch, ok, seen, probe.step)
        drift = prompt_drift(probe.prompt_current[ok, 0], probe.prompt_reference[ok, 0])
        self.prompt_drift_history.append(
            {"step": probe.step, "median": drift.median, "p90": drift.p90, "max": drift.max, "outliers": drift.outliers}
        )
        out: Decided = []
        policy = self.book.policy
        for b in self.tracker.behaviours.values():
            name = f"emergent-{b.id}"
            if not (b.significant and b.step == probe.step):
                if name in self.book.behaviours:  # reported before, not significant now: its streak ends here
                    score = b.drift if b.step == probe.step else 0.0
                    decision = policy.update(name, "emergent", probe.step, score, None)
                    out.append((decision, self.book.directions.get(name, b.direction)))
                continue
            entry = self.book.entry(name, "emergent")
            entry["label"] = " ".join(t.strip() for t in b.tokens[:5] if t.strip())
            entry["members"] = [int(ok[i]) for i in b.members]
            entry["samples"] = self._samples(entry["members"], probe, watch)
            entry["score_history"].append([probe.step, b.drift])
            rng = np.random.default_rng(self.seed + b.step)
            draw_null = partial(random_set_directions, vectors, b.members, rng=rng)
            entry.update(self.blame.attribute(b.direction, draw_null))
            entry["links"] = self._links(b, entry)
            self.take_rows(entry)
            # Discovery only screens; an alarm needs the data blame to beat random sets of other watched prompts.
            p = entry.get("attribution_p_value", 1.0)
            out.append((policy.update(name, "emergent", probe.step, b.drift, p), b.direction))
        return out

    def _links(self, b: EmergentBehaviour, entry: dict[str, Any]) -> list[dict[str, Any]]:
        """Learning patterns linked to the cluster: those that share a word with its risen tokens, and
        those (of any kind, e.g. a datapoint-vector group that spells no word) whose rows are half or
        more of the cluster's own top rows by its activation direction; with how many of those top
        rows are the pattern's rows (``direction_agreement``)."""
        words = {normalise(t) for t in b.tokens} - {""}
        own = [r["row"] for r in entry.get("top_rows", [])]
        links = []
        for g in self.patterns.patterns:
            shared = sorted(words & set(g.words))
            k = min(len(g.rows), len(own))
            agree = len(set(own[:k]) & set(g.rows.tolist())) / k if k else None
            if shared or (agree is not None and agree >= LINK_AGREEMENT):
                link = {"pattern": g.name, "found_by": g.found_by, "shared_words": shared}
                links.append({**link, "pattern_p_value": g.p_value, "direction_agreement": agree})
        return _one_per_pattern(sorted(links, key=lambda link: link["pattern_p_value"]))

    def take_rows(self, entry: dict[str, Any]) -> None:
        """A cluster linked to a significant learning pattern takes the pattern's rows and confidence."""
        link = next((x for x in entry["links"] if x["pattern_p_value"] <= PATTERN_ALPHA), None)
        if link is None or link["pattern"] not in self.book.behaviours:
            return
        pattern = self.book.behaviours[link["pattern"]]
        entry.update({k: pattern[k] for k in ("top_rows", "top_steps", "top_sources")}, rows_from=link["pattern"])
        entry["lesson"] = pattern.get("lesson")
        entry["attribution_p_value"] = min(entry.get("attribution_p_value", 1.0), link["pattern_p_value"])

    def _samples(self, members: list[int], probe: Probe, watch: Watch) -> list[dict[str, str]]:
        r0 = watch.answers(watch.r0)
        return [{"prompt": watch.texts[i], "before": r0[i], "after": probe.responses[i]} for i in members[:SAMPLES]]

    def _drift_map(self, v: np.ndarray, watch: Watch, ok: np.ndarray, seen: list[EmergentBehaviour], step: int) -> None:
        labels = np.full(len(ok), -1)
        for b in seen:
            if b.significant:
                labels[b.members] = b.id
        centred = v - v.mean(axis=0)
        axes = np.linalg.svd(centred, full_matrices=False)[2][:2] if len(v) > 1 else np.eye(2, v.shape[1])
        self.drift_map = {
            "step": step,
            "points": (centred @ axes.T).tolist(),
            "labels": labels.tolist(),
            "prompts": [watch.texts[i] for i in ok],
        }


def _one_per_pattern(links: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One link per named pattern (its kinds of grouping, words and best agreement together), best first.

    Example:
        >>> a = {"pattern": "learning-0", "found_by": "peak words", "shared_words": ["sure"],
        ...      "pattern_p_value": 0.001, "direction_agreement": 0.9}
        >>> b = {**a, "found_by": "datapoint vectors", "shared_words": [], "direction_agreement": 1.0}
        >>> _one_per_pattern([a, b])
        [{'pattern': 'learning-0', 'found_by': 'peak words, datapoint vectors', 'shared_words': ['sure'], \
'pattern_p_value': 0.001, 'direction_agreement': 1.0}]
    """
    out: dict[str, dict[str, Any]] = {}
    for i, link in enumerate(links):
        key = link["pattern"] or f"#{i}"  # an unnamed pattern is not news: kept apart
        if key not in out:
            out[key] = dict(link)
            continue
        kept = out[key]
        if link["found_by"] not in kept["found_by"]:
            kept["found_by"] += f", {link['found_by']}"
        kept["shared_words"] = sorted(set(kept["shared_words"]) | set(link["shared_words"]))
        agreements = [x for x in (kept["direction_agreement"], link["direction_agreement"]) if x is not None]
        kept["direction_agreement"] = max(agreements, default=None)
    return list(out.values())
