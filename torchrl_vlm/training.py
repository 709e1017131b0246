"""What the recipes share: seeding, config checks, episode metrics, the eval/log/checkpoint
cadence, logging, evaluation, checkpoints, random state and teardown.

Every recipe (``recipes/*.py``) imports these instead of carrying its own
copy, so the conventions stay the same across algorithms: wandb offline
unless asked, ``train/``, ``eval/``, ``buffer/`` and ``time/`` metric prefixes,
and one ``checkpoint.pt`` plus a replay-buffer folder per checkpoint.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl._utils import timeit
from torchrl.envs import EnvBase, ExplorationType, set_exploration_type
from torchrl.record.loggers import Logger, generate_exp_name, get_logger

__all__ = [
    "EpisodeMetrics",
    "Every",
    "LOGGER_BACKENDS",
    "WANDB_MODES",
    "check_common_config",
    "check_resumable",
    "close_all",
    "evaluate_success",
    "get_rng_state",
    "load_checkpoint",
    "log_metrics",
    "make_logger",
    "phase_seconds",
    "restore_optimizer",
    "restore_training_state",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
    "timed_batches",
    "wandb_mode",
]

LOGGER_BACKENDS = ("wandb", "csv", "tensorboard", "")
WANDB_MODES = ("online", "offline", "disabled")


# --------------------------------------------------------------------------- run set-up
def seed_everything(seed: int, num_threads: int) -> None:
    """Seeds Python, numpy and torch, sets the learner's threads, and restarts the phase timings."""
    timeit.reset()  # phase timings are per run, not per process
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(num_threads)


def check_common_config(cfg) -> None:
    """The checks every recipe's config needs, naming the key, its value and what is allowed.

    Reads ``env.num_envs``, ``collector.total_frames``/``frames_per_batch``, ``eval.interval``,
    ``logger.backend``/``mode``/``log_interval`` and ``checkpoint.interval``.
    """
    if cfg.logger.backend not in LOGGER_BACKENDS:
        raise ValueError(f"logger.backend={cfg.logger.backend!r}; choose one of {LOGGER_BACKENDS}")
    if cfg.logger.mode is not None and cfg.logger.mode not in WANDB_MODES:
        raise ValueError(f"logger.mode={cfg.logger.mode!r}; choose one of {WANDB_MODES} or null")
    for key in ("total_frames", "frames_per_batch"):
        if cfg.collector[key] <= 0:
            raise ValueError(f"collector.{key} must be > 0, got {cfg.collector[key]}")
    if cfg.env.num_envs < 1:
        raise ValueError(f"env.num_envs must be >= 1, got {cfg.env.num_envs}")
    if cfg.collector.frames_per_batch % cfg.env.num_envs:
        raise ValueError(
            f"collector.frames_per_batch ({cfg.collector.frames_per_batch}) must be a multiple of "
            f"env.num_envs ({cfg.env.num_envs})"
        )
    for key, value in (
        ("eval.interval", cfg.eval.interval),
        ("logger.log_interval", cfg.logger.log_interval),
        ("checkpoint.interval", cfg.checkpoint.interval),
    ):
        if value < 0:
            raise ValueError(f"{key} must be >= 0 (0 turns it off), got {value}")


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
    Reads ``("next", "done")``, ``episode_reward``, ``success`` and ``step_count``.
    """

    def __init__(self):
        self._sums = {"episode_return": 0.0, "success": 0.0, "episode_length": 0.0}
        self._episodes = 0
        self.last_success = float("nan")

    def __call__(self, batch: TensorDictBase) -> None:
        done = batch["next", "done"].reshape(-1)
        n = int(done.sum())
        if not n:
            return
        nxt = batch["next"]
        success = float(nxt["success"].reshape(-1)[done].float().sum())
        self._sums["episode_return"] += float(nxt["episode_reward"].reshape(-1)[done].sum())
        self._sums["success"] += success
        self._sums["episode_length"] += float(nxt["step_count"].reshape(-1)[done].float().sum())
        self._episodes += n
        self.last_success = success / n

    def pop(self) -> dict[str, float]:
        if not self._episodes:
            return {}
        out = {f"train/{key}": value / self._episodes for key, value in self._sums.items()}
        out["train/episodes"] = float(self._episodes)
        self._sums = dict.fromkeys(self._sums, 0.0)
        self._episodes = 0
        return out


class Every:
    """A cadence in frames: :meth:`due` is true once each time ``frames`` reaches the next multiple.

    ``interval=0`` never fires. A resumed run passes the frames it starts from, so
    the cadence continues where the checkpoint left it.
    """

    def __init__(self, interval: int, start: int = 0):
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 0:
            raise ValueError(f"interval must be an int >= 0 (0 = never), got {interval!r}")
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
    with timeit(phase):
        batches = iter(collector)
    while True:
        with timeit(phase):
            batch = next(batches, None)
        if batch is None:
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
            if hasattr(thing, "shutdown") and not isinstance(thing, EnvBase):
                thing.shutdown()
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

    ``exploration`` chooses greedy actions (``DETERMINISTIC``) or the policy's
    own exploration (``RANDOM``, e.g. an ε=0.05 module). Envs that finish early
    are reset and ignored; ``max_steps`` bounds the loop (the env's step limit).
    """
    n = max(1, env.batch_size.numel())
    finished = torch.zeros(n, dtype=torch.bool)
    success = torch.zeros(n)
    returns = torch.zeros(n)
    lengths = torch.zeros(n)
    with set_exploration_type(exploration):
        td = env.reset()
        for _ in range(max_steps):
            td, td_next = env.step_and_maybe_reset(policy(td))
            nxt = td["next"]
            done = nxt["done"].reshape(n)
            new = done & ~finished
            if bool(new.any()):
                success[new] = nxt["success"].reshape(n).float()[new]
                returns[new] = nxt["episode_reward"].reshape(n)[new]
                lengths[new] = nxt["step_count"].reshape(n).float()[new]
                finished |= done
            if bool(finished.all()):
                break
            td = td_next
    return {
        "success": float(success.mean()),
        "return": float(returns.mean()),
        "episode_length": float(lengths[finished].mean()) if bool(finished.any()) else float("nan"),
        "finished": float(finished.float().mean()),
    }


def get_rng_state() -> dict[str, Any]:
    """Python, numpy and torch random states, for a checkpoint."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
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


def save_checkpoint(folder: str | os.PathLike, state: Mapping[str, Any], replay_buffer=None) -> Path:
    """Writes ``state`` (modules' and optimisers' state dicts, counters) and the replay buffer.

    ``state`` goes to ``folder/checkpoint.pt``; the buffer, with its storage,
    writer generations and sampler state (λ progress, priorities), goes to
    ``folder/replay_buffer`` through TorchRL's ``dumps``. Both are written to a
    staging folder that then takes the old one's place, so a crash mid-write never
    leaves a buffer and a checkpoint from different moments: :func:`load_checkpoint`
    finds the previous one (``<folder>.old``) if the swap itself was interrupted.
    ``folder`` belongs to the checkpoint: it is replaced as a whole.
    """
    folder = Path(folder)
    staging, old = folder.with_name(folder.name + ".writing"), folder.with_name(folder.name + ".old")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if replay_buffer is not None:
        replay_buffer.dumps(staging / "replay_buffer")
    torch.save(dict(state), staging / "checkpoint.pt")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    staging.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def load_checkpoint(folder: str | os.PathLike, replay_buffer=None) -> dict[str, Any]:
    """Reads what :func:`save_checkpoint` wrote; fills ``replay_buffer`` in place if given."""
    folder = Path(folder)
    if not folder.exists() and folder.with_name(folder.name + ".old").exists():
        folder = folder.with_name(folder.name + ".old")  # a save was interrupted between its two renames
    path = folder / "checkpoint.pt"
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path} (checkpoint.resume must name a checkpoint folder)")
    if replay_buffer is not None:
        replay_buffer.loads(folder / "replay_buffer")
    return torch.load(path, weights_only=False)

