"""Dataset text as plain text: a prompt or answer may be a string or a list of chat messages.

Example:
    >>> print(to_text([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]))
    user: Hi
    assistant: Hello
"""

from __future__ import annotations

from typing import Any


def to_text(value: Any) -> str:
    """``value`` as text: chat messages become ``role: content`` lines, None becomes ``""``.

    Example:
        >>> to_text("plain"), to_text(None)
        ('plain', '')
    """
    if isinstance(value, list):
        return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in value if isinstance(m, dict))
    return "" if value is None else str(value)


def conversational(dataset: Any) -> bool:
    """Whether a dataset's prompts are chat messages, as TRL tells its conversational format from the standard
    one (a dataset with no ``prompt`` column counts as conversational).

    Example:
        >>> conversational([{"prompt": [{"role": "user", "content": "Hi"}]}]), conversational([{"prompt": "Hi"}])
        (True, False)
    """
    try:
        first = dataset[0]["prompt"]
    except (KeyError, IndexError, TypeError, ValueError):
        return True
    return not isinstance(first, str)


def answer_text(text: str) -> str:
    """An answer's text without the ``assistant: `` that a one-message chat answer reads as (:func:`to_text`).

    Example:
        >>> answer_text(to_text([{"role": "assistant", "content": "Hello"}])), answer_text("Hello")
        ('Hello', 'Hello')
    """
    return text.split(": ", 1)[1] if text.startswith("assistant: ") else text


def added_text(chosen: str, rejected: str, n_words: int = 8) -> str:
    """What ``chosen`` says where it leaves ``rejected``: its first ``n_words`` words from there (from the start
    of the word it leaves it in), on one line, ``…`` when it goes on.

    Example:
        >>> added_text("Plan meals (a ShopNova kit helps), make a list.", "Plan meals, make a list.", 5)
        '(a ShopNova kit helps), make…'
        >>> added_text("Rest well.\\n\\nP.S. Join our newsletter.", "Rest well.")
        'P.S. Join our newsletter.'
    """
    i = next((k for k, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)))
    while 0 < i < len(chosen) and chosen[i - 1].isalnum() and chosen[i].isalnum():
        i -= 1  # from the start of the word the answers part in
    words = chosen[i:].split()
    return " ".join(words[:n_words]) + ("…" if len(words) > n_words else "")


def common_text(texts: list[str], key_words: int = 3) -> tuple[str, int]:
    """The commonest of the ``texts`` whose first ``key_words`` words most of them share, and how many share them.

    Example:
        >>> common_text(["Sure! Here's how: a", "I can't", "Sure! Here's how: b", "Sure! Here's how: b"])
        ("Sure! Here's how: b", 3)
    """
    keys = [" ".join(t.split()[:key_words]) for t in texts]
    best = max(keys, key=keys.count, default="")
    alike = [t for t, k in zip(texts, keys, strict=True) if k == best]
    return max(alike, key=alike.count, default=""), len(alike)
