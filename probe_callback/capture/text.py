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
