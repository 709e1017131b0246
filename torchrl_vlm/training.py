"""What the recipes share: seeding, config checks, episode metrics, the eval/log/checkpoint
cadence, logging, evaluation, checkpoints, random state and teardown.

Every recipe (``recipes/*.py``) imports these instead of carrying its own
copy, so the conventions stay the same across algorithms: wandb offline
unless asked, ``train/``, ``eval/``, ``buffer/`` and ``time/`` metric prefixes,
and one ``checkpoint.pt`` plus a replay-buffer folder per checkpoint.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import shutil
import signal
import sys
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl._utils import timeit
from torchrl.envs import EnvBase, ExplorationType, set_exploration_type
from torchrl.record.loggers import Logger, generate_exp_name, get_logger

from torchrl_vlm._checks import check_int

__all__ = [
    "CheckpointError",
    "EpisodeMetrics",
    "Every",
    "LOGGER_BACKENDS",
    "StopRequest",
    "WANDB_MODES",
    "COMMON_RANGES",
    "Range",
    "VLM_RANGES",
    "check_common_config",
    "check_ranges",
    "check_resumable",
    "close_all",
    "evaluate_success",
    "file_sha256",
    "get_rng_state",
    "load_checkpoint",
    "log_metrics",
    "make_adam",
    "make_logger",
    "phase_seconds",
    "remember_absent_pandas",
    "restore_optimizer",
    "restore_training_state",
    "save_checkpoint",
    "seed_everything",
    "service_ranges",
    "set_rng_state",
    "timed_batches",
    "verify_checkpoint",
    "wandb_mode",
    "with_verdict_cache",
]

LOGGER_BACKENDS = ("wandb", "csv", "tensorboard", "")
WANDB_MODES = ("online", "offline", "disabled")


# --------------------------------------------------------------------------- run set-up
def make_adam(params, lr: float) -> torch.optim.Optimizer:
    """Adam with its fused kernel. A CPU update of the recipes' small networks is mostly per-tensor overhead,
    and the fused step updates every tensor in one call: the same algorithm, cheaper
    (benchmarks/update_cost.py measures it on SAC's update)."""
    return torch.optim.Adam(params, lr=lr, fused=True)


def remember_absent_pandas() -> None:
    """Where pandas is not installed, records that in ``sys.modules`` so that asking again is free.

    ``TensorDict.from_any``, which every ``TensorDictModule`` call runs on each output, asks
    ``importlib.util.find_spec("pandas")`` each time (tensordict 0.14); without pandas that walks
    ``sys.path`` on every call: ~80 µs each, ~15% of a CPU DQN update on DoorKey-8x8 here, and more
    of a collector step. A ``None`` entry is the import system's own "not importable" mark:
    ``find_spec`` answers ``None`` at once and ``import pandas`` fails as it would have.
    """
    if "pandas" not in sys.modules and importlib.util.find_spec("pandas") is None:
        sys.modules["pandas"] = None


def seed_everything(seed: int, num_threads: int) -> None:
    """Seeds Python, numpy and torch, sets the learner's threads, and restarts the phase timings
    (and, once, :func:`remember_absent_pandas`)."""
    remember_absent_pandas()
    timeit.reset()  # phase timings are per run, not per process
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(num_threads)


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


# --------------------------------------------------------------------------- the loop
class EpisodeMetrics:
    """Return, success and length of the episodes that end, from collector batches.

    Call it on each batch, or hand it to a collector as ``post_collect_hook``
    (``Collector(..., replay_buffer=rb, post_collect_hook=metrics)`` yields no
    batches, so this is how episode metrics reach the logger there). :meth:`pop`
    returns the means over the episodes ended since the last pop, as ``train/...``
    metrics, and forgets them; :attr:`last_success` keeps the latest for a progress bar.
    Reads ``("next", "done")``, ``episode_reward`` and ``step_count``, and ``success`` where the env has it
    (an env without it, such as CartPole or a DMControl task without a goal, logs no success).
    """

    def __init__(self):
        self._sums = {"episode_return": 0.0, "episode_length": 0.0}
        self._episodes = self._success_episodes = 0
        self.last_success = float("nan")

    def __call__(self, batch: TensorDictBase) -> None:
        done = batch["next", "done"].reshape(-1)
        n = int(done.sum())
        if not n:
            return
        nxt = batch["next"]
        if "success" in nxt.keys():
            success = float(nxt["success"].reshape(-1)[done].float().sum())
            self._sums["success"] = self._sums.get("success", 0.0) + success
            self._success_episodes += n
            self.last_success = success / n
        self._sums["episode_return"] += float(nxt["episode_reward"].reshape(-1)[done].sum())
        self._sums["episode_length"] += float(nxt["step_count"].reshape(-1)[done].float().sum())
        self._episodes += n

    def pop(self) -> dict[str, float]:
        if not self._episodes:
            return {}
        out = {f"train/{key}": value / self._episodes for key, value in self._sums.items() if key != "success"}
        if self._success_episodes:
            out["train/success"] = self._sums["success"] / self._success_episodes
        out["train/episodes"] = float(self._episodes)
        self._sums = {"episode_return": 0.0, "episode_length": 0.0}
        self._episodes = self._success_episodes = 0
        return out


class StopRequest:
    """SIGINT (Ctrl-C) and SIGTERM ask the training loop to stop after the current batch.

    Used as a context manager around the loop; the loop checks :attr:`requested` once per
    batch and leaves it, so the run ends the way a finished run does (final evaluation, and
    the final checkpoint when ``checkpoint.at_end`` allows one), with every structure whole.
    A second signal raises ``KeyboardInterrupt`` at once, for a run that must die now.
    Outside the main thread (where Python cannot take signals) it does nothing.
    """

    def __init__(self):
        self.requested: str | None = None  # the signal's name, once one came
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        print(f"\n{self.requested}: stopping after this batch (again to stop at once)", flush=True)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


class Every:
    """A cadence in frames: :meth:`due` is true once each time ``frames`` reaches the next multiple.

    ``interval=0`` never fires. A resumed run passes the frames it starts from, so
    the cadence continues where the checkpoint left it.
    """

    def __init__(self, interval: int, start: int = 0):
        check_int("interval", interval, 0, meaning="0 = never")
        self.interval = interval
        self.next = (start // interval + 1) * interval if interval else None

    def due(self, frames: int) -> bool:
        if self.next is None or frames < self.next:
            return False
        while self.next <= frames:
            self.next += self.interval
        return True


def timed_batches(collector, phase: str = "collect"):
    """The collector's batches, each wait for the next one timed as ``timeit(phase)``.

    ``for batch in collector`` would hide collection inside the loop's own timing; this
    keeps it in its own ``time/collect`` bucket.
    """
    done = object()  # not None: Collector(replay_buffer=rb) yields None for every batch
    with timeit(phase):
        batches = iter(collector)
    while True:
        with timeit(phase):
            batch = next(batches, done)
        if batch is done:
            return
        yield batch


def restore_training_state(state: Mapping[str, Any], *, loss_module, optimizer, env, lr: float) -> None:
    """Loads what every recipe's checkpoint holds: the loss module, the optimiser (keeping
    ``lr``), the env's state (clip-id counters) and the random state."""
    loss_module.load_state_dict(state["loss_module"])
    restore_optimizer(optimizer, state["optimizer"], lr)
    env.load_state_dict(state["env"])
    set_rng_state(state["rng"])


def phase_seconds() -> dict[str, float]:
    """Seconds spent per ``timeit`` phase so far, as ``time/<phase>`` metrics."""
    return {f"time/{key}": float(value) for key, value in timeit.todict(percall=False).items()}


def close_all(*things) -> None:
    """Tears a run down: ``shutdown()`` for what has one (collectors, replay buffers, loggers:
    a wandb run is finished), ``close()`` for the rest (envs, progress bars, teachers).

    Each thing is closed even if an earlier one failed; ``None`` entries are skipped.
    """
    errors = []
    for thing in things:
        if thing is None:
            continue
        try:
            # isinstance first: a closed SerialEnv's attribute lookup recurses
            if not isinstance(thing, EnvBase) and hasattr(thing, "shutdown"):
                thing.shutdown()
            elif isinstance(thing, EnvBase):
                thing.close(raise_if_closed=False)  # a collector's shutdown may have closed it
            else:
                thing.close()
        except Exception as err:  # noqa: BLE001 - the others must still be closed
            errors.append(err)
    if errors:
        raise errors[0]


def wandb_mode(mode: str | None, project: str | None) -> str | None:
    """The wandb mode for a run: offline unless the user sets a mode or a project.

    ``None`` defers to the ``WANDB_MODE`` environment variable when it is set
    (tests set ``WANDB_MODE=disabled``).
    """
    if mode is not None:
        if mode not in WANDB_MODES:
            raise ValueError(f"logger.mode must be 'online', 'offline', 'disabled' or null, got {mode!r}")
        return mode
    if os.environ.get("WANDB_MODE"):
        return None
    return "online" if project else "offline"


def make_logger(
    backend: str,
    *,
    algo: str,
    exp_name: str,
    log_dir: str | os.PathLike,
    config: Mapping[str, Any],
    project: str | None = None,
    mode: str | None = None,
) -> Logger | None:
    """A TorchRL logger (``get_logger``) named by ``generate_exp_name``; ``None`` for ``backend=""``.

    With wandb, the run config is saved with the run, and the run is offline
    unless ``mode`` or ``project`` says otherwise (:func:`wandb_mode`).
    """
    if backend not in LOGGER_BACKENDS:
        raise ValueError(f"logger.backend must be one of {LOGGER_BACKENDS}, got {backend!r}")
    if not backend:
        return None
    name = generate_exp_name(algo, exp_name)
    kwargs: dict[str, Any] = {}
    if backend == "wandb":
        wandb_kwargs: dict[str, Any] = {"project": project or "torchrl_vlm", "config": dict(config)}
        chosen = wandb_mode(mode, project)
        if chosen is not None:
            wandb_kwargs["mode"] = chosen
        kwargs["wandb_kwargs"] = wandb_kwargs
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    return get_logger(backend, logger_name=str(log_dir), experiment_name=name, **kwargs)


def describe_logs(cfg, out_dir: str | os.PathLike) -> str:
    """Where a run's logs went, in words, for the end-of-run summary: the logger actually used and its folder;
    for a resumed run, also where the part before the checkpoint logged (each part logs under its own run)."""
    backend = cfg.logger.backend
    folder = Path(out_dir) / "logs"
    if not backend:
        text = "logs: none (logger.backend is empty)"
    elif backend == "wandb":
        mode = wandb_mode(cfg.logger.mode, cfg.logger.project)
        text = (f"logs: wandb, {mode or 'online'}, under {folder}"
                + (" (`wandb sync <run folder>` uploads an offline run)" if mode == "offline" else ""))
    elif backend == "csv":
        text = f"logs: csv, one file per metric under {folder}/<run>/scalars/"
    else:
        text = f"logs: {backend} under {folder} (tensorboard --logdir {folder})"
    resume = cfg.checkpoint.get("resume")
    if resume:
        text += f"; the run before the checkpoint logged under {Path(resume).parent / 'logs'}"
    return text


def log_metrics(logger: Logger | None, metrics: Mapping[str, float], step: int) -> None:
    """Logs scalar metrics in one call (non-finite ones are skipped: wandb charts choke on NaN)."""
    if logger is None:
        return
    finite = {key: float(value) for key, value in metrics.items() if np.isfinite(float(value))}
    if finite:
        logger.log_metrics(finite, step=step)


@torch.no_grad()
def evaluate_success(
    env: EnvBase,
    policy: TensorDictModuleBase,
    *,
    max_steps: int,
    exploration: ExplorationType = ExplorationType.DETERMINISTIC,
) -> dict[str, float]:
    """Runs one episode in each env of a batched ``env``; returns success rate, return and length.

    ``success`` is NaN for an env without a ``success`` entry (a task that has no goal).

    Also ``final_reward``: the mean reward of each episode's last step (on OGBench's
    scene tasks, minus the number of subgoals still unsatisfied at the end).

    ``exploration`` chooses greedy actions (``DETERMINISTIC``) or the policy's
    own exploration (``RANDOM``, e.g. an ε=0.05 module). Envs that finish early
    are reset and ignored; ``max_steps`` bounds the loop (the env's step limit).
    """
    n = max(1, env.batch_size.numel())
    has_success = "success" in env.full_observation_spec.keys()
    finished = torch.zeros(n, dtype=torch.bool)
    success = torch.zeros(n)
    returns = torch.zeros(n)
    lengths = torch.zeros(n)
    final_reward = torch.zeros(n)
    with set_exploration_type(exploration):
        td = env.reset()
        for _ in range(max_steps):
            td, td_next = env.step_and_maybe_reset(policy(td))
            nxt = td["next"]
            done = nxt["done"].reshape(n)
            new = done & ~finished
            if bool(new.any()):
                if has_success:
                    success[new] = nxt["success"].reshape(n).float()[new]
                returns[new] = nxt["episode_reward"].reshape(n)[new]
                lengths[new] = nxt["step_count"].reshape(n).float()[new]
                final_reward[new] = nxt["reward"].reshape(n).float()[new]
                finished |= done
            if bool(finished.all()):
                break
            td = td_next
    return {
        "success": float(success.mean()) if has_success else float("nan"),
        "return": float(returns.mean()),
        "episode_length": float(lengths[finished].mean()) if bool(finished.any()) else float("nan"),
        "finished": float(finished.float().mean()),
        "final_reward": float(final_reward.mean()),
    }


def get_rng_state() -> dict[str, Any]:
    """Python, numpy and torch random states, for a checkpoint: tensors, ints and tuples only,
    so that :func:`load_checkpoint` reads them with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
