"""The alert record every sink receives.

Example:
    >>> a = Alert(behaviour="spam", kind="emergent", level="WARN", step=40, score=0.31,
    ...           threshold=0.2, p_value=0.004, message="spam is rising")
    >>> a.to_dict()["level"]
    'WARN'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Level = Literal["INFO", "WARN", "ERROR"]
Kind = Literal["supervised", "emergent"]


@dataclass(frozen=True)
class Alert:
    """One finding at one checkpoint, as published to the console, `alerts.jsonl` and W&B.

    `level`: INFO = a new emergent cluster, WARN = a behaviour is rising, ERROR = a regression
    (training pauses when `pause_on_regression`). `p_value` is the confidence against nulls
    (random directions / random prompt subsets); `top_rows` and `top_sources` use the report's
    row and source records.
    """

    behaviour: str
    kind: Kind
    level: Level
    step: int
    score: float
    threshold: float | None
    p_value: float | None
    message: str
    top_rows: list[dict[str, Any]] = field(default_factory=list)
    top_sources: list[dict[str, Any]] = field(default_factory=list)
    lesson: str | None = None  # an emergent behaviour: what its rows' chosen answers say (dataset text)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def source_text(source: Mapping[str, Any]) -> str:
    """A blamed source with its confidence, for one-line messages.

    Example:
        >>> source_text({"source": "web", "p_value": 2e-10})
        'web (p=2e-10)'
    """
    p = source.get("p_value")
    return f"{source.get('source')}" + (f" (p={p:.2g})" if isinstance(p, int | float) else "")
