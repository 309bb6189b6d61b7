"""Attribution of a behaviour direction to the training data: top rows, steps and sources, with p-values.

:class:`Attribution` reads the vector store (it writes nothing) and gives the report's ``top_rows``,
``top_steps``, ``top_sources`` and the blame's p-values for any direction (hidden size).

Example:
    >>> blame = Attribution(rows, store_dir, top_k=50, seed=0)   # doctest: +SKIP
    >>> blame.attribute(direction)["top_rows"][0]["row"]          # doctest: +SKIP
    17
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..capture.rows import RowIndex
from ..scoring.attribution import rank_rows
from ..scoring.blame import SourceBlame, top_sources, top_steps
from ..store.vectors import VectorStore


class Attribution:
    """Ranks the stored rows of ``store_dir`` (``rows``: the dataset's rows) along a direction."""

    def __init__(self, rows: RowIndex, store_dir: Path, top_k: int = 50, seed: int = 0) -> None:
        self.rows, self.store_dir, self.top_k, self.seed = rows, Path(store_dir), top_k, seed

    def attribute(self, direction: np.ndarray, draw_null: Callable[[int], np.ndarray] | None = None) -> dict[str, Any]:
        """Top rows, steps and sources for a behaviour direction (hidden size), with p-values.

        With ``draw_null`` (k -> (k, H) directions of random behaviours) the sources' blame is also
        tested against those (``blame_null_p_value``) and no p-value of it is reported below that.
        """
        try:
            store = VectorStore.open(self.store_dir)
        except FileNotFoundError:
            return {}
        if store.n_rows == 0:
            return {}
        ranking = rank_rows(store, direction, layer_pos=0, top_k=self.top_k, seed=self.seed)
        memberships = store.memberships()
        first_step = first_steps(memberships)
        rows = [self.row(int(r), float(s), first_step) for r, s in zip(ranking.rows, ranking.scores)]
        sources = [
            {**s.to_dict(), "share_in_top": s.score}
            for s in top_sources(ranking.all_scores, cast(Sequence[Any], self.rows.sources_array()))
        ]
        steps = [s.to_dict() for s in top_steps(ranking.all_scores, memberships)]
        # Bonferroni over the sources tested; without a source column, the ranking's own p-value.
        blame = min(1.0, sources[0]["p_value"] * len(sources)) if sources else ranking.p_value
        out = {
            "top_rows": rows,
            "top_steps": steps,
            "top_sources": sources,
            "ranking_p_value": ranking.p_value,
            "attribution_p_value": blame,
        }
        if draw_null is not None and sources:
            null_blame = SourceBlame(ranking, cast(Sequence[Any], self.rows.sources_array()), store.project)
            out["blame_null_p_value"] = null_blame.p_value(direction, draw_null)
            calibrate_blame(out)
        return out

    def row(self, row: int, score: float, first_step: dict[int, int]) -> dict[str, Any]:
        """A top row's report entry: its id and source, ``score``, first step and texts."""
        return {
            **self.rows.describe(row),
            "score": score,
            "step": first_step.get(row),
            "prompt": self.rows.text(row, "prompt"),
            "chosen": self.rows.text(row, "chosen"),
            "rejected": self.rows.text(row, "rejected"),
        }


def calibrate_blame(entry: dict[str, Any]) -> None:
    """A behaviour's blame (overall and per source) is only as confident as its null of random
    behaviours allows.

    Example:
        >>> entry = {"attribution_p_value": 1e-5, "blame_null_p_value": 0.01, "top_sources": [{"p_value": 1e-6}]}
        >>> calibrate_blame(entry)
        >>> entry["attribution_p_value"], entry["top_sources"]
        (0.01, [{'p_value': 0.01}])
    """
    floor = entry.get("blame_null_p_value")
    if floor is None or "attribution_p_value" not in entry:
        return
    entry["attribution_p_value"] = max(entry["attribution_p_value"], floor)
    entry["top_sources"] = [{**s, "p_value": max(s["p_value"], floor)} for s in entry["top_sources"]]


def first_steps(memberships: dict[str, np.ndarray]) -> dict[int, int]:
    """The first step whose batch held each row (records are appended in step order).

    Example:
        >>> first_steps({"row": np.array([3, 1, 3]), "step": np.array([1, 2, 5])})
        {1: 2, 3: 1}
    """
    rows, first = np.unique(memberships["row"], return_index=True)
    return dict(zip(rows.tolist(), memberships["step"][first].tolist()))
