"""Argument checks shared across the package, so that every count is refused in the same words."""
from __future__ import annotations

import numbers
from typing import Any

__all__ = ["check_int"]


def check_int(name: str, value: Any, low: int = 1, *, meaning: str = "", none_means: str | None = None) -> int | None:
    """``value`` as an ``int`` if it is an integer (NumPy's too; a ``bool`` is not) and at least ``low``.

    Raises a ``TypeError`` for another type and a ``ValueError`` below ``low``, each naming ``name``,
    the value and what is allowed. ``meaning`` glosses the allowed range (``"0 = never"``);
    ``none_means``, when given, also allows ``None`` and says what it stands for (``None`` is returned).

        >>> check_int("clip_len", 32)
        32
        >>> check_int("clip_len", 0)
        Traceback (most recent call last):
        ...
        ValueError: clip_len must be an int >= 1, got 0
        >>> check_int("max_steps", 2.5, none_means="the env's own limit")
        Traceback (most recent call last):
        ...
        TypeError: max_steps must be None (the env's own limit) or an int >= 1, got float 2.5
    """
    if value is None and none_means is not None:
        return None
    allowed = f"an int >= {low}" + (f" ({meaning})" if meaning else "")
    if none_means is not None:
        allowed = f"None ({none_means}) or {allowed}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {allowed}, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(value)
