"""The report's behaviour entries, the policy that decides them and the directions they are attributed along.

One :class:`Entries` is shared by the monitor and the flows it delegates to (learning patterns,
emergent clusters), so each writes the same report entries and the same policy decides them all.

Example:
    >>> book = Entries(RegressionPolicy())
    >>> book.entry("spam", "emergent")["level"] is None, list(book.behaviours)
    (True, ['spam'])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .policy import Decision, RegressionPolicy

# What a flow decides: each decision, with the behaviour's direction when it has one (for re-attribution).
Decided = list[tuple[Decision, np.ndarray | None]]


@dataclass
class Entries:
    """Report entries by behaviour name, the policy, and each attributed behaviour's direction."""

    policy: RegressionPolicy
    behaviours: dict[str, dict[str, Any]] = field(default_factory=dict)
    directions: dict[str, np.ndarray] = field(default_factory=dict)

    def entry(self, name: str, kind: str) -> dict[str, Any]:
        """The entry of behaviour ``name`` (an empty one the first time)."""
        return self.behaviours.setdefault(
            name,
            {
                "name": name,
                "kind": kind,
                "flagged_at_step": None,
                "level": None,
                "p_value": None,
                "threshold": None,
                "score_history": [],
                "top_rows": [],
                "top_steps": [],
                "top_sources": [],
                "samples": [],
            },
        )
