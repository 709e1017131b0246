"""COVR's LoRA adapters on disk: weights-only files, checksummed, swapped in atomically.

A fine-tune writes version ``v`` of the adapter as a folder ``<root>/v000v/`` holding what peft's
``save_pretrained`` writes (``adapter_config.json`` and ``adapter_model.safetensors``: JSON and tensors, no
code) and ``manifest.json`` with each file's SHA-256. The folder is written under a temporary name and
renamed into place, so a reader sees a whole version or none. Every reader (the learner, before it switches
the prior to a version; the prior, before it loads one) checks the manifest first: a damaged or partial
adapter is refused with :class:`AdapterError`, never loaded.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torchrl_vlm.training.checkpoints import file_sha256

__all__ = ["ADAPTER_FILES", "AdapterError", "adapter_path", "verify_adapter", "write_adapter"]

#: The files of an adapter version besides its manifest.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MANIFEST = "manifest.json"


class AdapterError(RuntimeError):
    """An adapter version that is missing, incomplete or damaged on disk."""


def adapter_path(root: str | os.PathLike, version: int) -> Path:
    """The folder of adapter ``version`` under ``root``."""
    return Path(root) / f"v{int(version):04d}"


def write_adapter(peft_model, root: str | os.PathLike, version: int, info: dict[str, Any] | None = None) -> Path:
    """Saves ``peft_model``'s adapter as ``version`` under ``root`` (atomically) and returns its folder."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".v{int(version):04d}.tmp-", dir=root))
    try:
        peft_model.save_pretrained(tmp, safe_serialization=True)
        files = {name: file_sha256(tmp / name) for name in ADAPTER_FILES}
        manifest = {"version": int(version), "sha256": files, **(info or {})}
        (tmp / MANIFEST).write_text(json.dumps(manifest, sort_keys=True, indent=1))
        final = adapter_path(root, version)
        if final.exists():  # an earlier attempt at this version (a fine-tune restarted after a crash)
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def verify_adapter(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the adapter folder ``path`` once every file matches its checksum; else :class:`AdapterError`."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        expected = manifest["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise AdapterError(f"adapter {str(path)!r} has no readable {MANIFEST}: {type(err).__name__}: {err}") from None
    for name in ADAPTER_FILES:
        if name not in expected:
            raise AdapterError(f"adapter {str(path)!r}: its manifest lists no checksum for {name}")
        try:
            found = file_sha256(path / name)
        except OSError as err:
            raise AdapterError(f"adapter {str(path)!r}: {name} cannot be read ({err})") from None
        if found != expected[name]:
            raise AdapterError(f"adapter {str(path)!r}: {name} does not match its checksum (damaged on disk)")
    return manifest
