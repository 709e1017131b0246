"""A persistent, auditable verdict cache for any scorer.

Re-running a seed, or an ablation that replays the same clips, shows the VLM
exactly what it was shown before: :class:`CachedScorer` answers those clips from
disk instead of asking the model again, and records every verdict it ever got so
that a run can be audited afterwards (:func:`read_verdicts`).

**The key** is the SHA-256 of what the model is shown and of who is asked:

- the model's identity (:meth:`identity`: the model id, its revision, and every
  setting that changes an answer, e.g. the frames shown and the yes/no tokens);
- the prompt, with the clip's mission where the prompt injects it;
- the selected frames (the ``num_frames`` a VLM scorer picks under the mask), as
  raw bytes with their shape.

A scorer describes this by defining ``cache_identity()`` (a JSON-able dict) and
``cache_view(clips)`` (per clip, the prompt and the tensors the model sees), as
:class:`~torchrl_vlm.TransformersScorer` does. For any other scorer the identity is
:func:`scorer_identity`'s: its qualified name and plain settings, never a memory address,
so that an identical rerun hits; the view is the whole clip under its mask (frames, events,
mission), which is correct but misses hits a smarter view would find. When a scorer's
answers change (new code, new weights), change its identity: set or bump a ``cache_version``
attribute, or define ``cache_identity()``; old verdicts then stay on disk, unused.

**The store** is one sqlite file in WAL mode: many readers (other runs, the
audit reader) can read while one run writes; writers wait on a busy lock up to
``timeout_s``. A file that is not a readable cache raises
:class:`VerdictCacheError` naming it, never a silent fresh start. Each verdict
carries a checksum of its key and score: a row altered on disk is not trusted
(the scorer is asked again, the row replaced, ``cache_corrupt`` counted).

**Audits.** :func:`read_verdicts` lists the verdicts (highest P(yes) first by
default); with ``thumbnails=F`` a :class:`CachedScorer` also keeps ``F`` evenly
spaced frames of each clip it asks about, and :func:`verdict_gallery` draws the
clips the VLM liked most and least as a PNG. From a shell::

    python -m torchrl_vlm.verdicts verdicts.sqlite --limit 10 --gallery top.png
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import io
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDictBase

from torchrl_vlm._checks import check_int
from torchrl_vlm.scoring.base import (
    check_scores,
    clip_frame_mask,
    clip_missions,
    frame_indices,
    needs_frames,
    validate_clips,
)

__all__ = ["CachedScorer", "VerdictCacheError", "cached", "read_verdicts", "scorer_identity", "verdict_gallery"]

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS verdicts (
    key TEXT PRIMARY KEY,      -- SHA-256 of identity, prompt and frames
    score REAL NOT NULL,       -- P(yes)
    model TEXT NOT NULL,       -- the model id (identity["model"])
    identity TEXT NOT NULL,    -- the scorer's identity, JSON
    prompt TEXT,               -- the prompt as the model read it
    view_sha256 TEXT NOT NULL, -- SHA-256 of the tensors the model saw (frames)
    run TEXT,                  -- the run that first asked (CachedScorer's run)
    step INTEGER,              -- the run's env steps when the clip was submitted (clips["step"])
    clip_id INTEGER,           -- the clip's id in that run (clips["clip_id"])
    created REAL NOT NULL,     -- unix time of the answer
    checksum TEXT NOT NULL     -- SHA-256 of key and score: sqlite checks pages, not values
);
CREATE TABLE IF NOT EXISTS thumbnails (
    key TEXT PRIMARY KEY,      -- the verdict's key
    frames INTEGER NOT NULL,   -- frames in the strip
    png BLOB NOT NULL          -- the frames side by side, one PNG
);
"""


# What sqlite raises on a damaged file: its own errors, and undecodable text where a damaged page held a string.
_UNREADABLE = (sqlite3.Error, UnicodeDecodeError)


class VerdictCacheError(RuntimeError):
    """A verdict cache file that cannot be used: not a sqlite database, damaged, or of another schema."""


def _checksum(key: str, score: float) -> str:
    return hashlib.sha256(f"{key}:{float(score).hex()}".encode()).hexdigest()


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    return f"{t.dtype}{list(t.shape)}".encode() + t.numpy().tobytes()


def _png_strip(frames: torch.Tensor) -> bytes:
    """uint8 ``[F, H, W, 3]`` frames side by side, as PNG bytes."""
    from PIL import Image

    strip = frames.detach().cpu().permute(1, 0, 2, 3).reshape(frames.shape[1], -1, 3).contiguous().numpy()
    buf = io.BytesIO()
    Image.fromarray(strip).save(buf, format="PNG")
    return buf.getvalue()


def _frames_from_strip(png: bytes, count: int) -> torch.Tensor:
    from PIL import Image

    strip = torch.from_numpy(np.array(Image.open(io.BytesIO(png)).convert("RGB")))
    return strip.reshape(strip.shape[0], count, -1, 3).permute(1, 0, 2, 3).contiguous()


_PLAIN = (str, int, float, bool, type(None))


def _plain_settings(value, depth: int = 0):
    """``value`` as a JSON-able setting: plain values, paths, NumPy scalars, small tensors, their lists and dicts,
    nested scorers by their identity; anything else by its type's name (present, so a scorer that holds one
    says so, but two such values do not tell apart: define ``cache_identity()`` for those)."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() <= 64:
        return value.tolist()
    if depth <= 3:
        if isinstance(value, (list, tuple)):
            return [_plain_settings(v, depth + 1) for v in value]
        if isinstance(value, dict):
            return {str(k): _plain_settings(v, depth + 1) for k, v in value.items()}
        if callable(value) and not isinstance(value, type):
            return scorer_identity(value, depth + 1)
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def scorer_identity(scorer, depth: int = 0) -> dict:
    """What a verdict cache keys ``scorer`` by (with the prompt and the frames it is shown).

    ``scorer.cache_identity()`` where it defines one; else ``{"model": "<module>.<qualname>"}`` of the
    function, the method or the object's class, with ``"settings"``: a ``functools.partial``'s arguments, a
    bound method's object, an object's public attributes (plain values; a nested scorer by its own identity),
    and ``"version"``: its ``cache_version`` where it has one. Never a ``repr`` with a memory address, so an
    identical rerun hits, and one scorer is one model in an audit.

    Examples:
        >>> from torchrl_vlm import MiniGridEventScorer
        >>> scorer_identity(MiniGridEventScorer("goal_only"))  # doctest: +NORMALIZE_WHITESPACE
        {'model': 'torchrl_vlm.scoring.oracle.MiniGridEventScorer',
         'settings': {'definition': 'goal_only', 'columns': [2]}}
    """
    if callable(getattr(scorer, "cache_identity", None)):
        return scorer.cache_identity()
    settings: dict[str, Any] = {}
    if isinstance(scorer, functools.partial):
        ident = scorer_identity(scorer.func, depth + 1)
        settings = {"args": _plain_settings(list(scorer.args), depth + 1),
                    "keywords": _plain_settings(dict(scorer.keywords), depth + 1)}
    elif inspect.ismethod(scorer):
        ident = {"model": f"{scorer.__func__.__module__}.{scorer.__func__.__qualname__}"}
        settings = {"self": scorer_identity(scorer.__self__, depth + 1)}
    else:
        target = scorer if inspect.isfunction(scorer) or inspect.isbuiltin(scorer) else type(scorer)
        ident = {"model": f"{getattr(target, '__module__', None) or 'builtins'}.{target.__qualname__}"}
        if target is type(scorer):
            settings = {key: _plain_settings(value, depth) for key, value in getattr(scorer, "__dict__", {}).items()
                        if not key.startswith("_") and key not in ("needs_frames", "cache_version")}
    if settings:
        ident["settings"] = {**ident.get("settings", {}), **settings} if "settings" in ident else settings
    version = getattr(scorer, "cache_version", None)
    if version is not None:
        ident["version"] = version
    return ident


def default_view(clips: TensorDictBase) -> list[tuple[str | None, list[torch.Tensor]]]:
    """Per clip: its mission (as the prompt part) and every per-step tensor entry under its mask."""
    mask = clips.get("mask")
    missions = clip_missions(clips)
    keys = sorted(k for k in ("frames", "events") if k in clips.keys())
    return [(missions[b], [clips.get(k)[b][mask[b]] for k in keys]) for b in range(mask.shape[0])]


class CachedScorer:
    """Wraps a scorer: answers clips it has seen from a sqlite file, asks ``base`` for the rest.

    Args:
        base: any scorer (:class:`~torchrl_vlm.Scorer`).
        path: the sqlite file; created if missing, shared by runs that use the same scorer.
        run: a name recorded with each new verdict (e.g. the experiment name), for audits.
        timeout_s: how long a write waits for another writer's lock before failing.
        thumbnails: frames kept per newly asked clip (evenly spaced over its real steps, as
            :func:`~torchrl_vlm.scoring.base.frame_indices` picks a VLM's frames), as one PNG
            strip for :func:`verdict_gallery`; 0 keeps none. Clips without frames keep none.

    ``stats()`` gives ``cache_hits``, ``cache_misses``, ``cache_hit_rate`` and ``cache_corrupt``
    (rows that failed their checksum); in a
    :class:`~torchrl_vlm.ScoringService` they reach the buffer's ``stats()`` and the logs.
    Build it inside the scoring process with :func:`cached`.

    Examples:
        >>> from torchrl_vlm import MiniGridEventScorer
        >>> scorer = CachedScorer(MiniGridEventScorer("any"), "verdicts.sqlite", run="seed0")
    """

    #: Set per instance from the wrapped scorer (``None`` here: a factory of this class cannot tell).
    needs_frames: bool | None = None

    def __init__(self, base, path: str | os.PathLike, *, run: str | None = None, timeout_s: float = 30.0,
                 thumbnails: int = 0):
        if not callable(base):
            raise TypeError(f"base must be a scorer (a callable of the clips), got {base!r:.100}")
        if not isinstance(path, (str, os.PathLike)) or not str(path):
            raise TypeError(f"path must be a file path, got {path!r}")
        if run is not None and not isinstance(run, str):
            raise TypeError(f"run must be a string or None, got {run!r}")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
            raise ValueError(f"timeout_s must be a number > 0, got {timeout_s!r}")
        check_int("thumbnails", thumbnails, 0, meaning="frames kept per clip")
        self.base = base
        self.thumbnails = thumbnails
        self.needs_frames = needs_frames(base)
        self.path = Path(path)
        self.run = run
        ident = scorer_identity(base)
        self.identity = json.dumps(ident, sort_keys=True, default=str)
        self.model = str(ident.get("model", type(base).__name__))
        self.hits = self.misses = self.corrupt = 0
        self._db = _open(self.path, timeout_s)

    def _views(self, clips: TensorDictBase) -> list[tuple[str | None, list[torch.Tensor]]]:
        return self.base.cache_view(clips) if hasattr(self.base, "cache_view") else default_view(clips)

    def keys(self, clips: TensorDictBase) -> tuple[list[str], list[str], list[str | None]]:
        """Per clip: the cache key, the SHA-256 of the tensors shown, and the prompt."""
        keys, shas, prompts = [], [], []
        for prompt, tensors in self._views(clips):
            view = hashlib.sha256()
            for t in tensors:
                view.update(_tensor_bytes(t))
            key = hashlib.sha256()
            for part in (self.identity, "\0", prompt or "", "\0", view.hexdigest()):
                key.update(part.encode())
            keys.append(key.hexdigest())
            shas.append(view.hexdigest())
            prompts.append(prompt)
        return keys, shas, prompts

    def __call__(self, clips: TensorDictBase) -> torch.Tensor:
        validate_clips(clips, require_frames=self.needs_frames)
        n = clips.batch_size[0]
        keys, shas, prompts = self.keys(clips)
        found = self._lookup(set(keys))
        # The model is asked once per key it has not answered (clips shown the same thing share one).
        ask: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k not in found:
                ask.setdefault(k, i)
        if ask:
            index = torch.tensor(list(ask.values()))
            fresh = check_scores(self.base(clips[index]), len(ask), f"{type(self.base).__name__}")
            self._store(clips, index, fresh, keys, shas, prompts)
            found.update(zip(ask, fresh.tolist(), strict=True))
        self.hits += n - len(ask)
        self.misses += len(ask)
        return torch.tensor([found[k] for k in keys], dtype=torch.float32)

    def _lookup(self, keys: set[str]) -> dict[str, float]:
        out, keys = {}, sorted(keys)
        try:
            for start in range(0, len(keys), 500):  # sqlite's parameter limit
                chunk = keys[start : start + 500]
                rows = self._db.execute(
                    f"SELECT key, score, checksum FROM verdicts WHERE key IN ({','.join('?' * len(chunk))})", chunk
                ).fetchall()
                for key, score, checksum in rows:
                    if isinstance(score, float) and 0 <= score <= 1 and checksum == _checksum(key, score):
                        out[key] = score
                    else:
                        self.corrupt += 1
        except _UNREADABLE as err:
            raise VerdictCacheError(f"{self.path} could not be read ({err}); delete it or pass another path") from None
        return out

    def _store(self, clips, index: torch.Tensor, scores: torch.Tensor, keys, shas, prompts) -> None:
        steps = clips.get("step", None)
        ids = clips.get("clip_id", None)
        now = time.time()
        rows = [
            (keys[i], float(s), self.model, self.identity, prompts[i], shas[i], self.run,
             None if steps is None else int(steps[i]), None if ids is None else int(ids[i]), now,
             _checksum(keys[i], s))
            for i, s in zip(index.tolist(), scores.tolist(), strict=True)
        ]
        strips = []
        if self.thumbnails and "frames" in clips.keys():
            frames, mask = clips.get("frames"), clip_frame_mask(clips)
            for i in index.tolist():
                shown = frames[i][frame_indices(mask[i], self.thumbnails)]
                strips.append((keys[i], shown.shape[0], _png_strip(shown)))
        try:
            with self._db:  # one transaction
                # A key can only be missing here, or held by a row that failed its checksum: replace it.
                self._db.executemany("INSERT OR REPLACE INTO verdicts VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
                self._db.executemany("INSERT OR REPLACE INTO thumbnails VALUES (?,?,?)", strips)
        except _UNREADABLE as err:
            raise VerdictCacheError(f"{self.path} could not be written ({err}); delete it or pass another path") \
                from None

    def stats(self) -> dict[str, float]:
        asked = self.hits + self.misses
        return {"cache_hits": float(self.hits), "cache_misses": float(self.misses),
                "cache_hit_rate": self.hits / asked if asked else float("nan"), "cache_corrupt": float(self.corrupt)}

    def close(self) -> None:
        self._db.close()

    def __getstate__(self):
        raise TypeError("a CachedScorer holds an open database; build it in the scoring process with cached()")

    def __repr__(self) -> str:
        return f"CachedScorer({self.base!r}, {str(self.path)!r})"


def _open(path: Path, timeout_s: float) -> sqlite3.Connection:
    """Opens (or creates) a verdict cache, checking that it is one; raises VerdictCacheError if not."""
    path.parent.mkdir(parents=True, exist_ok=True)
    hint = "delete it (the verdicts are lost, the VLM will be asked again) or pass another path"
    try:
        db = sqlite3.connect(path, timeout=timeout_s)
        db.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, nor it them
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"integrity check: {check}")
        with db:
            db.executescript(_SCHEMA)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(_SCHEMA_VERSION),))
        version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    except _UNREADABLE as err:
        raise VerdictCacheError(f"{path} is not a readable verdict cache ({err}); {hint}") from None
    if version != str(_SCHEMA_VERSION):
        db.close()
        raise VerdictCacheError(f"{path} has verdict cache schema {version}, this version reads {_SCHEMA_VERSION}; "
                                f"{hint}")
    return db


def _build_cached(factory, path, run, timeout_s, thumbnails):
    return CachedScorer(factory(), path, run=run, timeout_s=timeout_s, thumbnails=thumbnails)


def cached(factory, path: str | os.PathLike, *, run: str | None = None, timeout_s: float = 30.0,
           thumbnails: int = 0):
    """A picklable scorer factory: ``factory()``'s scorer behind a :class:`CachedScorer` on ``path``.

    ``factory`` takes every form a replay buffer takes (:func:`~torchrl_vlm.scoring.base.as_scorer_factory`):
    a scorer class, a ``functools.partial``, a scorer object or a module-level function of the clips.

    What a :class:`~torchrl_vlm.ScoringService` or :class:`~torchrl_vlm.VLMReplayBuffer` takes as
    ``scorer``, so that the database is opened in the scoring process.
    """
    import functools

    from torchrl_vlm.scoring.base import as_scorer_factory

    factory = as_scorer_factory(factory, "factory")  # a scorer class, object, function or partial
    return functools.partial(_build_cached, factory, os.fspath(path), run, timeout_s, thumbnails)


def _open_read_only(path: str | os.PathLike) -> tuple[Path, sqlite3.Connection]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no verdict cache at {path}")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    return path, db


def _model_filter(model: str | None) -> tuple[str, tuple]:
    return (" WHERE v.model = ?", (model,)) if model else ("", ())


def read_verdicts(path: str | os.PathLike, *, order: str = "score", limit: int | None = None,
                  model: str | None = None) -> list[dict[str, Any]]:
    """The verdicts in a cache, for audits: one dict per verdict (the columns of the table).

    ``order``: ``"score"`` (highest P(yes) first: the clips the VLM liked most), ``"step"`` or
    ``"created"``. ``model`` keeps one model's verdicts. Each dict also says whether the row
    passes its checksum (``trusted``) and how many thumbnail frames it has (``thumbnail_frames``,
    0 for none). Opens the file read-only.
    """
    orders = {"score": "v.score DESC", "step": "v.step", "created": "v.created"}
    if order not in orders:
        raise ValueError(f"order={order!r}; choose one of {sorted(orders)}")
    check_int("limit", limit, none_means="every verdict")
    path, db = _open_read_only(path)
    where, params = _model_filter(model)
    try:
        has_thumbs = _has_thumbnails(db)
        join = " LEFT JOIN thumbnails t ON t.key = v.key" if has_thumbs else ""
        frames = "COALESCE(t.frames, 0)" if has_thumbs else "0"
        sql = (f"SELECT v.*, {frames} AS thumbnail_frames FROM verdicts v{join}{where} ORDER BY {orders[order]}"
               + (f" LIMIT {limit}" if limit else ""))
        rows = [dict(row) for row in db.execute(sql, params).fetchall()]
    except _UNREADABLE as err:
        raise VerdictCacheError(f"{path} is not a readable verdict cache ({err})") from None
    finally:
        db.close()
    for row in rows:
        row["trusted"] = isinstance(row["score"], float) and row["checksum"] == _checksum(row["key"], row["score"])
    return rows


def _has_thumbnails(db: sqlite3.Connection) -> bool:
    # A file written before thumbnails existed, opened read-only, has no such table.
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'thumbnails'").fetchone() is not None


def verdict_gallery(path: str | os.PathLike, out: str | os.PathLike, *, rows: int = 8,
                    model: str | None = None, title: str = "") -> Path:
    """Draws the clips the VLM liked most and least, from a cache's thumbnails, as a PNG; returns ``out``.

    The ``rows // 2`` highest-scored verdicts that have thumbnails, then the lowest (no clip twice),
    each labelled with its P(yes), the run's step and the run. Rows that fail their checksum are left
    out. Thumbnails are kept by ``CachedScorer(..., thumbnails=F)`` (recipes: ``vlm.cache_thumbnails``).
    """
    from torchrl_vlm.scoring.gallery import save_clip_rows

    check_int("rows", rows)
    path, db = _open_read_only(path)
    where, params = _model_filter(model)
    half = max(1, rows // 2)
    picked: dict[str, sqlite3.Row] = {}
    try:
        if not _has_thumbnails(db):
            found = []
        else:
            sql = ("SELECT v.key, v.score, v.step, v.run, v.checksum, t.frames, t.png FROM verdicts v "
                   f"JOIN thumbnails t ON t.key = v.key{where} ORDER BY v.score {{}}, v.created LIMIT {4 * half}")
            found = [db.execute(sql.format(direction), params).fetchall() for direction in ("DESC", "ASC")]
    except _UNREADABLE as err:
        raise VerdictCacheError(f"{path} is not a readable verdict cache ({err})") from None
    finally:
        db.close()
    for ranked in found:  # the top half, then the bottom half
        taken = 0
        for row in ranked:
            if taken == half:
                break
            if row["key"] not in picked and row["checksum"] == _checksum(row["key"], row["score"]):
                picked[row["key"]] = row
                taken += 1
    if not picked:
        raise ValueError(f"no verdict in {path} has thumbnails{f' for model {model!r}' if model else ''}; "
                         "keep them with CachedScorer(..., thumbnails=4) (recipes: vlm.cache_thumbnails=4)")
    ranked = sorted(picked.values(), key=lambda row: -row["score"])
    items = [(row["score"], f"step {row['step'] if row['step'] is not None else '?'}\n{row['run'] or ''}",
              _frames_from_strip(row["png"], row["frames"])) for row in ranked]
    return save_clip_rows(items, out, title or f"highest and lowest P(yes) of the {path.name} verdicts")
