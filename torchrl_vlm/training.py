"""What the recipes share: logging, evaluation, checkpoints and random state.

Every recipe (``recipes/*.py``) imports these instead of carrying its own
copy, so the conventions stay the same across algorithms: wandb offline
unless asked, ``train/``, ``eval/``, ``vlm/`` and ``time/`` metric prefixes,
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
from tensordict.nn import TensorDictModuleBase
from torchrl.envs import EnvBase, ExplorationType, set_exploration_type
from torchrl.record.loggers import Logger, generate_exp_name, get_logger

__all__ = [
    "LOGGER_BACKENDS",
    "evaluate_success",
    "get_rng_state",
    "load_checkpoint",
    "log_metrics",
    "make_logger",
    "save_checkpoint",
    "set_rng_state",
    "wandb_mode",
]

LOGGER_BACKENDS = ("wandb", "csv", "tensorboard", "")
WANDB_MODES = ("online", "offline", "disabled")


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

