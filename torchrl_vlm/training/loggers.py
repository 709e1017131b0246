"""Logging: TorchRL's loggers (wandb offline unless asked, csv, tensorboard), where a run's logs are, and
the metrics written at each step."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torchrl.record.loggers import Logger, generate_exp_name, get_logger

#: The ``logger.backend`` values: TorchRL's wandb, csv and tensorboard loggers, or ``""`` for no logger.
LOGGER_BACKENDS = ("wandb", "csv", "tensorboard", "")
#: The ``logger.mode`` values for wandb; ``None`` (``null``) lets :func:`wandb_mode` choose.
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
