"""Configuration checks the recipes share: numeric ranges (:class:`Range`), keys known to the recipe's YAML,
the VLM service options, the verdict cache, and the settings a resumed run must share with its checkpoint."""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torchrl_vlm.training.loggers import LOGGER_BACKENDS, WANDB_MODES


class Range:
    """What a numeric config key allows: its kind and bounds (``low`` inclusive unless ``open_low``).

    ``kind`` is ``"int"``, ``"float"``, ``"bool"`` or ``"ints"`` (a list of ints);
    ``nullable`` allows ``null``.
    """

    def __init__(self, kind: str, low: float | None = None, high: float | None = None, *,
                 open_low: bool = False, nullable: bool = False):
        if kind not in ("int", "float", "bool", "ints"):
            raise ValueError(f"kind must be int, float, bool or ints, got {kind!r}")
        self.kind, self.low, self.high, self.open_low, self.nullable = kind, low, high, open_low, nullable

    def describe(self) -> str:
        if self.kind == "bool":
            text = "true or false"
        else:
            what = {"int": "an int", "float": "a number", "ints": "a list of ints, each"}[self.kind]
            bounds = []
            if self.low is not None:
                bounds.append(f"{'>' if self.open_low else '>='} {self.low}")
            if self.high is not None:
                bounds.append(f"<= {self.high}")
            text = f"{what} {' and '.join(bounds)}".rstrip()
        return text + (", or null" if self.nullable else "")

    def allows(self, value) -> bool:
        if value is None:
            return self.nullable
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "ints":
            return (isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0
                    and all(self._number_ok(v, int) for v in value))
        return self._number_ok(value, int if self.kind == "int" else (int, float))

    def _number_ok(self, value, types) -> bool:
        if isinstance(value, bool) or not isinstance(value, types) or value != value:  # NaN
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or value <= self.high


def check_ranges(cfg, ranges: Mapping[str, Range]) -> None:
    """Refuses any key of ``ranges`` (dotted paths) whose value is not allowed, naming key, value and range."""
    from omegaconf import OmegaConf

    for key, allowed in ranges.items():
        value = OmegaConf.select(cfg, key, default="<missing>")
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value)
        if not allowed.allows(value):
            error = TypeError if value is not None and not isinstance(value, (int, float, list, tuple)) else ValueError
            raise error(f"{key}={value!r} is not allowed; it must be {allowed.describe()}")


#: The keys every recipe shares, and what they allow.
COMMON_RANGES = {
    "env.num_envs": Range("int", 1),
    "env.seed": Range("int", 0),
    "collector.total_frames": Range("int", 1),
    "collector.frames_per_batch": Range("int", 1),
    "optim.lr": Range("float", 0),  # 0 freezes the networks: a resumed run that only collects and evaluates
    "loss.gamma": Range("float", 0, 1, open_low=True),
    "network.hidden": Range("ints", 1),
    "eval.interval": Range("int", 0),
    "eval.episodes": Range("int", 1),
    "logger.log_interval": Range("int", 0),
    "logger.progress": Range("bool"),
    "checkpoint.interval": Range("int", 0),
    "checkpoint.at_end": Range("bool"),
    "num_threads": Range("int", 1),
}


def service_ranges(prefix: str) -> dict[str, Range]:
    """The ranges of a :class:`~torchrl_vlm.ScoringService`'s fault settings, under ``prefix`` (e.g. ``"vlm"``)."""
    return {
        f"{prefix}.start_timeout_s": Range("float", 0, open_low=True),
        f"{prefix}.hang_timeout_s": Range("float", 0, open_low=True),
        f"{prefix}.max_restarts": Range("int", 0),
        f"{prefix}.max_consecutive_errors": Range("int", 1),
    }


#: The ``vlm`` group every VLM-RB recipe shares: the scorer, the clips, the service.
VLM_RANGES = {
    "vlm.false_positive_rate": Range("float", 0, 1),
    "vlm.false_negative_rate": Range("float", 0, 1),
    "vlm.num_frames": Range("int", 1),
    "vlm.batch_size": Range("int", 1),
    "vlm.clip_len": Range("int", 1),
    "vlm.threshold": Range("float", 0, 1),
    "vlm.score_lag": Range("int", 0, nullable=True),
    "vlm.max_pending": Range("int", 1),
    "vlm.batch_clips": Range("int", 1),
    "vlm.num_threads": Range("int", 1),
    "vlm.num_replicas": Range("int", 1),
    "vlm.cache_thumbnails": Range("int", 0),
    **service_ranges("vlm"),
}


def with_verdict_cache(factory, cfg):
    """``factory`` behind the recipe's verdict cache (``vlm.cache``, ``vlm.cache_thumbnails``), if it has one.

    Each new verdict records the run as ``{logger.exp_name}_seed{env.seed}``.
    """
    if not cfg.vlm.cache:
        return factory
    from torchrl_vlm.scoring.cache import cached

    return cached(factory, cfg.vlm.cache, run=f"{cfg.logger.exp_name}_seed{cfg.env.seed}",
                  thumbnails=cfg.vlm.cache_thumbnails)


#: The scorers that show ``vlm.num_frames`` frames of each clip (and so need only those rendered).
FRAME_SCORERS = ("transformers", "openai")


def env_frame_stride(cfg, *, every_step: bool = False) -> int:
    r"""``env.frame_stride`` resolved: which steps of a clip the env renders frames for.

    ``auto``: every :func:`~torchrl_vlm.scoring.base.frame_stride_for`\ ``(vlm.clip_len, vlm.num_frames)``-th
    step (and each clip's last) for a VLM scorer that shows ``vlm.num_frames`` frames of a clip
    (:data:`FRAME_SCORERS`), every step for anything else that looks at frames (the clip gallery, or
    ``every_step``: a COVR action prior reads every row's frame). An int is taken as it is.
    """
    from torchrl_vlm._checks import check_int
    from torchrl_vlm.frames import frame_stride_for

    value = cfg.env.frame_stride
    if value != "auto":
        return check_int("env.frame_stride", value, meaning="or auto")
    if every_step or cfg.buffer.sampler != "vlm" or cfg.vlm.scorer not in FRAME_SCORERS:
        return 1
    return frame_stride_for(cfg.vlm.clip_len, cfg.vlm.num_frames)


def _plain(value):
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(value) if isinstance(value, DictConfig) else value


def vlm_service_options(vlm) -> dict[str, Any]:
    """The :class:`~torchrl_vlm.ScoringService` arguments of a VLM-RB recipe's ``vlm`` group."""
    return {
        "max_pending": vlm.max_pending,
        "batch_clips": vlm.batch_clips,
        "num_threads": vlm.num_threads,
        "start_timeout_s": vlm.start_timeout_s,
        "hang_timeout_s": vlm.hang_timeout_s,
        "max_restarts": vlm.max_restarts,
        "max_consecutive_errors": vlm.max_consecutive_errors,
        "backend": vlm.backend,
        "num_replicas": vlm.num_replicas,
        "ray_address": vlm.ray_address,
        "replica_options": _plain(vlm.get("replica_options")) or None,
    }


def check_common_config(cfg, ranges: Mapping[str, Range] = ()) -> None:
    """The checks every recipe's config needs, naming the key, its value and what is allowed.

    Every key of :data:`COMMON_RANGES` and of the recipe's own ``ranges`` is checked
    against its range, then the logger's choices, the experiment name (a name, not a path)
    and ``collector.frames_per_batch`` against ``env.num_envs``.
    """
    check_ranges(cfg, {**COMMON_RANGES, **dict(ranges)})
    if cfg.logger.backend not in LOGGER_BACKENDS:
        raise ValueError(f"logger.backend={cfg.logger.backend!r}; choose one of {LOGGER_BACKENDS}")
    if cfg.logger.mode is not None and cfg.logger.mode not in WANDB_MODES:
        raise ValueError(f"logger.mode={cfg.logger.mode!r}; choose one of {WANDB_MODES} or null")
    name = cfg.logger.exp_name
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", "..") or ".." in name:
        raise ValueError(
            f"logger.exp_name={name!r} must be a plain name (letters, digits, '_', '-', '.'): it names "
            "a folder inside the run's log folder, never a path out of it"
        )
    from omegaconf import OmegaConf

    backend = OmegaConf.select(cfg, "vlm.backend", default="process")
    if backend not in ("process", "ray"):
        raise ValueError(f"vlm.backend={backend!r}; choose one of ('process', 'ray')")
    if backend == "process" and OmegaConf.select(cfg, "vlm.num_replicas", default=1) != 1:
        raise ValueError(f"vlm.num_replicas={cfg.vlm.num_replicas} needs vlm.backend=ray (a process runs one scorer)")
    cache = OmegaConf.select(cfg, "vlm.cache", default=None)
    if cache is not None and (not isinstance(cache, str) or not cache.strip()):
        raise ValueError(f"vlm.cache={cache!r} must be null or the path of a sqlite file of verdicts")
    if cfg.collector.frames_per_batch % cfg.env.num_envs:
        raise ValueError(
            f"collector.frames_per_batch ({cfg.collector.frames_per_batch}) must be a multiple of "
            f"env.num_envs ({cfg.env.num_envs})"
        )


def recipe_yaml(path: str | os.PathLike):
    """A recipe's YAML as Hydra composes it from its plain ``defaults`` (other YAMLs beside it, then ``_self_``),
    unresolved: the keys a recipe has."""
    from omegaconf import OmegaConf

    path = Path(path)
    own = OmegaConf.load(path)
    defaults = list(own.pop("defaults", []))
    if "_self_" not in defaults:
        defaults.append("_self_")
    merged = OmegaConf.create()
    for entry in defaults:
        part = own if entry == "_self_" else recipe_yaml(path.with_name(f"{entry}.yaml"))
        merged = OmegaConf.merge(merged, part)
    return merged


def check_known_keys(cfg, yaml_path: str | os.PathLike) -> None:
    """Refuses keys that the recipe's YAML does not have (a typo, or Hydra's ``+key=``, which adds a key the recipe
    never reads), naming each with the nearest key it has. Below a key whose default is not a group (``null``, a
    value) anything goes: ``vlm.replica_options={num_gpus: 1}`` is a value."""
    import difflib

    from omegaconf import DictConfig, OmegaConf

    reference = recipe_yaml(yaml_path)
    known = [k for k in _dotted_keys(OmegaConf.to_container(reference, resolve=False))]
    unknown = []

    def walk(node, ref, prefix):
        for key in node:
            path = f"{prefix}{key}"
            if key not in ref:
                unknown.append(path)
            elif isinstance(ref[key], DictConfig) and isinstance(node[key], DictConfig):
                walk(node[key], ref[key], path + ".")

    walk({k: v for k, v in cfg.items_ex(resolve=False) if k != "hydra"} if isinstance(cfg, DictConfig) else cfg,
         reference, "")
    if unknown:
        hints = []
        for key in unknown:
            near = difflib.get_close_matches(key, known, n=1)
            hints.append(f"{key}" + (f" (did you mean {near[0]}?)" if near else ""))
        raise ValueError(
            f"unknown config key(s): {', '.join(hints)}. {Path(yaml_path).name} has no such key, so the run would "
            "ignore it (Hydra's +key= adds a key that no recipe code reads)"
        )


def _dotted_keys(node: Mapping, prefix: str = ""):
    for key, value in node.items():
        yield f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _dotted_keys(value, f"{prefix}{key}.")


def warn_if_never_trains(cfg) -> None:
    """Warns, loudly and once, when ``collector.init_random_frames`` leaves no step to learn from."""
    random_frames = cfg.collector.get("init_random_frames", 0) or 0
    if random_frames >= cfg.collector.total_frames:
        warnings.warn(
            f"collector.init_random_frames={random_frames} >= collector.total_frames={cfg.collector.total_frames}: "
            "every step is a random action and no gradient step is taken. Lower collector.init_random_frames "
            "(or raise the budget) for a run that learns",
            UserWarning,
            stacklevel=2,
        )


def check_resumable(saved: Mapping[str, Any], cfg, keys: tuple[str, ...]) -> None:
    """Refuses to resume a checkpoint whose settings under ``keys`` (dotted paths) differ from ``cfg``'s."""
    from omegaconf import OmegaConf

    saved = OmegaConf.create(dict(saved))
    differ = [
        f"{key}: checkpoint {OmegaConf.select(saved, key)!r}, now {OmegaConf.select(cfg, key)!r}"
        for key in keys
        if OmegaConf.select(saved, key) != OmegaConf.select(cfg, key)
    ]
    if differ:
        raise ValueError("checkpoint.resume: the run's settings differ from the checkpoint's; " + "; ".join(differ))
