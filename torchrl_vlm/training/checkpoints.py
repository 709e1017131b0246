"""The checkpoint format: one ``checkpoint.pt`` (tensors and numbers: it loads with ``weights_only``), a
replay-buffer folder, and a manifest of SHA-256 checksums checked before anything is read."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


def restore_optimizer(optimizer: torch.optim.Optimizer, state: Mapping[str, Any], lr: float) -> None:
    """Loads an optimiser's saved state but keeps the configured learning rate.

    ``Optimizer.load_state_dict`` also restores the saved param groups, so a
    resumed run would otherwise silently keep the old learning rate.
    """
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group["lr"] = lr


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted: a file missing, truncated or altered since it was saved."""


_MANIFEST = "manifest.json"
#: What a checkpoint may hold: tensors (read with weights_only=True), JSON, memory-mapped arrays.
_SAFE_SUFFIXES = (".pt", ".json", ".memmap")


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks (checkpoint manifests, saved clip sets)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_manifest(folder: Path) -> None:
    """Sizes and SHA-256 of every file of ``folder``, each file fsynced on the way."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != _MANIFEST):
        _fsync(path)
        files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    with open(folder / _MANIFEST, "w") as f:
        json.dump({"format": 1, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    for path in sorted({p.parent for p in folder.rglob("*")} | {folder}):
        _fsync(path)  # the directory entries too: a crash must not lose a file's name


def verify_checkpoint(folder: str | os.PathLike) -> None:
    """Checks a checkpoint folder against the manifest written at save time.

    Raises :class:`CheckpointError` naming the first file that is missing, has another
    size or other bytes, was added after the save, or is of a kind that could hold a
    pickle (only ``.pt``, ``.json`` and ``.memmap`` files are allowed). A forged manifest
    passes the checksums, but not the kinds: nothing that can run code is ever read.
    """
    folder = Path(folder)
    manifest = folder / _MANIFEST
    if not manifest.exists():
        raise CheckpointError(f"{manifest} is missing: not a checkpoint of this version, or an incomplete one")
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{manifest} is unreadable ({type(err).__name__}: {err})") from None
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != _MANIFEST}
    for name in sorted(on_disk - set(files)):
        raise CheckpointError(f"{folder / name} is not in the checkpoint's manifest: a file added after the save")
    for name in sorted(files):
        if Path(name).suffix not in _SAFE_SUFFIXES:
            raise CheckpointError(
                f"{folder / name}: a checkpoint holds only {', '.join(_SAFE_SUFFIXES)} files (tensors read with "
                "weights_only, JSON, memory maps); anything else could hold a pickle, which is never read"
            )
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing from the checkpoint")
        size = path.stat().st_size
        if size != expected["size"]:
            raise CheckpointError(f"{path} has {size} bytes; the checkpoint saved {expected['size']}")
        if file_sha256(path) != expected["sha256"]:
            raise CheckpointError(f"{path} was altered since it was saved (SHA-256 mismatch)")


def save_checkpoint(folder: str | os.PathLike, state: Mapping[str, Any], replay_buffer=None) -> Path:
    """Writes a run's state and its replay buffer as a checkpoint folder; returns it.

    - ``state`` (state dicts, counters, random state: tensors, numbers, strings and
      containers of them) goes to ``checkpoint.pt``, which :func:`load_checkpoint` reads
      with ``weights_only=True``: no code is ever unpickled. ``state["config"]`` (a plain
      dict) goes to ``config.json``.
    - The replay buffer goes to ``replay_buffer/`` through its ``dumps`` (memory maps and
      JSON; the sampler and the VLM buffer's own state as ``weights_only`` files).
    - ``manifest.json`` lists every file's size and SHA-256, checked at load.

    Durable and atomic: everything is written to ``<folder>.writing`` and fsynced, files
    and directories, then the previous checkpoint becomes ``<folder>.prev`` and the new one
    takes its place. A crash at any moment leaves a loadable checkpoint behind, and a
    corrupt one falls back to the previous (:func:`load_checkpoint`). ``folder`` belongs to
    the checkpoint: it is replaced as a whole.
    """
    folder = Path(folder)
    staging, previous = folder.with_name(folder.name + ".writing"), folder.with_name(folder.name + ".prev")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    state = dict(state)
    config = state.pop("config", None)
    if replay_buffer is not None:
        replay_buffer.dumps(staging / "replay_buffer")
    torch.save(state, staging / "checkpoint.pt")
    if config is not None:
        (staging / "config.json").write_text(json.dumps(config, indent=1))
    _write_manifest(staging)
    if folder.exists():
        shutil.rmtree(previous, ignore_errors=True)
        folder.rename(previous)
    staging.rename(folder)
    _fsync(folder.parent)
    return folder


def load_checkpoint(folder: str | os.PathLike, replay_buffer=None) -> dict[str, Any]:
    """Reads what :func:`save_checkpoint` wrote, after checking it against its manifest.

    A checkpoint that fails the check (a file missing, truncated or altered) is replaced
    by the previous one, ``<folder>.prev``, with a warning, when that one passes;
    otherwise :class:`CheckpointError` names the file and what is wrong. Fills
    ``replay_buffer`` in place if given (or later: ``rb.loads(Path(state["folder"]) / "replay_buffer")``,
    ``state["folder"]`` naming the folder actually read). Only ``.pt`` files read with
    ``weights_only=True``, JSON and memory maps listed in the manifest are read, so a planted
    pickle is refused, not run. The manifest guards against corruption, not against someone
    who rewrites it: it carries no signature.
    """
    folder = Path(folder)
    previous = folder.with_name(folder.name + ".prev")
    if not folder.exists() and not previous.exists():
        raise FileNotFoundError(f"no checkpoint at {folder} (checkpoint.resume must name a checkpoint folder)")
    try:
        if not folder.exists():
            raise CheckpointError(f"{folder} is missing (a save was interrupted between its two renames)")
        verify_checkpoint(folder)
    except CheckpointError as err:
        if not previous.exists():
            raise
        verify_checkpoint(previous)
        warnings.warn(f"{err}; loading the previous checkpoint, {previous}", stacklevel=2)
        folder = previous
    try:
        state = torch.load(folder / "checkpoint.pt", weights_only=True)
    except Exception as err:  # noqa: BLE001 - name the file whatever torch raised
        raise CheckpointError(f"{folder / 'checkpoint.pt'} could not be read: {type(err).__name__}: {err}") from None
    if (folder / "config.json").exists():
        state["config"] = json.loads((folder / "config.json").read_text())
    state["folder"] = str(folder)  # the one read: ``folder``, or the previous one it fell back to
    if replay_buffer is not None:
        try:
            replay_buffer.loads(folder / "replay_buffer")
        except Exception as err:  # noqa: BLE001 - name the folder whatever the buffer raised
            raise CheckpointError(
                f"{folder / 'replay_buffer'} could not be loaded: {type(err).__name__}: {err}"
            ) from None
    return state
