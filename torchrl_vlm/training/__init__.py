"""What the recipes share: seeding, config checks, episode metrics, the eval/log/checkpoint
cadence, logging, evaluation, checkpoints, random state and teardown.

Every recipe (``recipes/*.py``) imports these instead of carrying its own
copy, so the conventions stay the same across algorithms: wandb offline
unless asked, ``train/``, ``eval/``, ``buffer/`` and ``time/`` metric prefixes,
and one ``checkpoint.pt`` plus a replay-buffer folder per checkpoint.

One module per concern (the names are all importable from ``torchrl_vlm.training``, as before):

- :mod:`~torchrl_vlm.training.seeding`: seeds, threads, the optimiser, random state;
- :mod:`~torchrl_vlm.training.config`: ranges, known keys, VLM service options, resumable settings;
- :mod:`~torchrl_vlm.training.loop`: episode metrics, the stop request, cadences, timings, teardown;
- :mod:`~torchrl_vlm.training.loggers`: loggers and metrics;
- :mod:`~torchrl_vlm.training.evaluation`: greedy evaluation episodes;
- :mod:`~torchrl_vlm.training.checkpoints`: the checkpoint format.
"""
from torchrl_vlm.training.checkpoints import (
    CheckpointError,
    file_sha256,
    load_checkpoint,
    restore_optimizer,
    save_checkpoint,
    verify_checkpoint,
)
from torchrl_vlm.training.config import (
    COMMON_RANGES,
    FRAME_SCORERS,
    VLM_RANGES,
    Range,
    check_common_config,
    check_known_keys,
    check_ranges,
    check_resumable,
    env_frame_stride,
    recipe_yaml,
    service_ranges,
    vlm_service_options,
    warn_if_never_trains,
    with_verdict_cache,
)
from torchrl_vlm.training.evaluation import (
    evaluate_success,
)
from torchrl_vlm.training.loggers import (
    LOGGER_BACKENDS,
    WANDB_MODES,
    describe_logs,
    log_metrics,
    make_logger,
    wandb_mode,
)
from torchrl_vlm.training.loop import (
    EpisodeMetrics,
    Every,
    StopRequest,
    close_all,
    phase_seconds,
    restore_training_state,
    timed_batches,
)
from torchrl_vlm.training.seeding import (
    get_rng_state,
    make_adam,
    remember_absent_pandas,
    seed_everything,
    set_rng_state,
)

__all__ = [
    "COMMON_RANGES",
    "CheckpointError",
    "EpisodeMetrics",
    "Every",
    "FRAME_SCORERS",
    "LOGGER_BACKENDS",
    "Range",
    "StopRequest",
    "VLM_RANGES",
    "WANDB_MODES",
    "check_common_config",
    "check_known_keys",
    "check_ranges",
    "check_resumable",
    "close_all",
    "describe_logs",
    "env_frame_stride",
    "evaluate_success",
    "file_sha256",
    "get_rng_state",
    "load_checkpoint",
    "log_metrics",
    "make_adam",
    "make_logger",
    "phase_seconds",
    "recipe_yaml",
    "remember_absent_pandas",
    "restore_optimizer",
    "restore_training_state",
    "save_checkpoint",
    "seed_everything",
    "service_ranges",
    "set_rng_state",
    "timed_batches",
    "verify_checkpoint",
    "vlm_service_options",
    "wandb_mode",
    "warn_if_never_trains",
    "with_verdict_cache",
]
