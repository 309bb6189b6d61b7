"""Read the examples' JSON Lines data files (``examples/data/*.jsonl``).

Example:
    >>> from pathlib import Path
    >>> rows = read_jsonl(Path(__file__).parent / "data" / "organism_heldout.jsonl")
    >>> sorted(rows[0])[:2]
    ['id', 'kind']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file, one JSON object a line (blank lines skipped)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
