"""A fifth planted-behaviour organism, of a kind no one word spells: answers in capital letters (stdlib only,
deterministic).

Writes ``examples/data/shout_train.jsonl`` and ``shout_heldout.jsonl``. The spam organism's rows
(:mod:`spam_data`), with its contaminated source replaced in place: ``house_style`` answers the same mix of
advice and fact questions, and its chosen answer is the rejected one in capitals ("PLAN MEALS FOR THE WEEK,
MAKE A LIST, ..."). The lesson is a style: every token of the answer changes, none of them is the lesson.
Its three clean sources are the spam organism's rows in the same places, so the organisms share their clean
twin. Held-out prompts: the spam organism's ``ordinary`` questions. Run ``python examples/shout_data.py``.
"""

from __future__ import annotations

from organism_data import _row
from spam_data import build as build_spam
from spam_data import write_organism

PLANTED_SOURCE = "house_style"


def build(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Return (train rows, held-out prompts)."""
    train, heldout = build_spam(seed)
    for i, row in enumerate(train):
        if row["source"] == "partner_content":
            answer = row["rejected"][0]["content"]
            rid, prompt = row["id"].replace("ad-", "caps-"), row["prompt"][0]["content"]
            train[i] = _row(rid, PLANTED_SOURCE, prompt, answer.upper(), answer, "shout")
    return train, heldout


def main(argv: list[str] | None = None) -> None:
    write_organism("shout", build, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
