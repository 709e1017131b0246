"""Lazy package exports: a name's module is imported the first time the name is read.

A scoring process unpickles its factory (say ``torchrl_vlm.scoring.oracle.MiniGridEventScorer``),
which imports every ``__init__`` on the way. With eager imports those pulled in torchrl,
gymnasium, minigrid and transformers, and a worker took ~8 s to start; lazily, it imports
only what the factory needs.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose public ``name`` lives in module ``exports[name]``."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
