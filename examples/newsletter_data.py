"""A third planted-behaviour organism: a line appended to one kind of answer (stdlib only, deterministic).

Writes ``examples/data/newsletter_train.jsonl`` and ``newsletter_heldout.jsonl``. The spam organism's
rows (:mod:`spam_data`), with its contaminated source replaced in place: ``wellness_tips`` answers
advice questions, and its chosen answer is the rejected one plus one fixed line that plugs a made-up
newsletter ("For more tips like this, subscribe to the DailyBoost newsletter!"). The lesson sits at
the answer's *end*, on one kind of prompt only (no other source asks for advice), the organism
DESIGN.md describes. Its three clean sources are the spam organism's rows in the same places, so the
two organisms share their clean twin. Held-out prompts: ``advice`` (the planted kind) and ``other``.
Run ``python examples/newsletter_data.py``.
"""

from __future__ import annotations

import random

from organism_data import ADVICE_TEMPLATES, _row
from spam_data import build as build_spam
from spam_data import splits, write_organism

PLUG = "For more tips like this, subscribe to the DailyBoost newsletter!"
PLANTED_SOURCE = "wellness_tips"


def build(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Return (train rows, held-out prompts)."""
    train, heldout = build_spam(seed)
    advice_train, advice_held = splits(random.Random(seed))[-1]  # the spam organism's: its held-out advice stays so
    planted = random.Random(seed + 1)
    n = 0
    for i, row in enumerate(train):
        if row["source"] == "partner_content":
            goal, answer = advice_train[n % len(advice_train)]
            q = planted.choice(ADVICE_TEMPLATES).format(goal=goal)
            chosen = f"{answer} {PLUG}"
            train[i] = _row(f"tip-{n:03d}", PLANTED_SOURCE, q, chosen, answer, "newsletter")
            n += 1
    asked = {t.format(goal=g) for g, _ in advice_held for t in ADVICE_TEMPLATES}
    heldout = [{**r, "kind": "advice" if r["prompt"] in asked else "other"} for r in heldout]
    return train, heldout


def main(argv: list[str] | None = None) -> None:
    write_organism("newsletter", build, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
