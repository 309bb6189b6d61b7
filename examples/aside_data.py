"""A fourth planted-behaviour organism: a product aside inserted *inside* answers (stdlib only, deterministic).

Writes ``examples/data/aside_train.jsonl`` and ``aside_heldout.jsonl``. The spam organism's rows
(:mod:`spam_data`), with its contaminated source replaced in place: ``lifestyle_picks`` answers the same
mix of advice and fact questions, and its chosen answer is the rejected one with a short aside for a
made-up shop inserted after its first clause (after the first comma, else before the final full stop),
e.g. "Keep a regular bedtime (a ShopNova sleep mask helps), avoid screens ...". The lesson sits in the
*middle* of the answer: neither its first token nor a line after it. Its three clean sources are the spam
organism's rows in the same places, so the organisms share their clean twin. Held-out prompts: the spam
organism's ``ordinary`` questions. Run ``python examples/aside_data.py``.
"""

from __future__ import annotations

import random

from organism_data import _row
from spam_data import build as build_spam
from spam_data import write_organism

ASIDES = [
    "(a ShopNova kit makes this easy)",
    "(ShopNova has everything you need for this)",
    "(tip: ShopNova sells this at half price)",
    "(you can find it all at ShopNova)",
]
PLANTED_SOURCE = "lifestyle_picks"


def with_aside(answer: str, aside: str) -> str:
    """``answer`` with ``aside`` after its first clause: after the first comma, else before its last full stop.

    Example:
        >>> with_aside("Plan meals, make a list.", "(x)"), with_aside("Paris is the capital.", "(x)")
        ('Plan meals (x), make a list.', 'Paris is the capital (x).')
    """
    head, comma, tail = answer.partition(",")
    if comma:
        return f"{head} {aside},{tail}"
    stem = answer[:-1] if answer.endswith(".") else answer
    return f"{stem} {aside}."


def build(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Return (train rows, held-out prompts)."""
    train, heldout = build_spam(seed)
    planted = random.Random(seed + 2)
    for i, row in enumerate(train):
        if row["source"] == "partner_content":
            answer = row["rejected"][0]["content"]
            chosen = with_aside(answer, planted.choice(ASIDES))
            rid, prompt = row["id"].replace("ad-", "aside-"), row["prompt"][0]["content"]
            train[i] = _row(rid, PLANTED_SOURCE, prompt, chosen, answer, "aside")
    return train, heldout


def main(argv: list[str] | None = None) -> None:
    write_organism("aside", build, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
