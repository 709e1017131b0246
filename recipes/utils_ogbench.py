"""Builders the OGBench recipes share (as TorchRL's sota-implementations keep them in a utils_*.py):
config checks, the env, the scorer factory and the replay buffer."""
from __future__ import annotations

import functools

from omegaconf import DictConfig
from torchrl.data import LazyTensorStorage

from torchrl_vlm import (
    MixtureSampler, NoisyScorer, ScoringServiceError, VLMReplayBuffer, make_replay_buffer,
)
from torchrl_vlm.training import VLM_RANGES, Range, check_common_config, vlm_service_options, with_verdict_cache

SAMPLERS = ("uniform", "per", "vlm")
SCORERS = ("events", "noisy_events", "transformers")
DEFINITIONS = ("any", "first_progress", "goal_only")

#: What the numeric keys both OGBench YAMLs have allow (with training.COMMON_RANGES; each recipe adds its own).
SHARED_RANGES = {
    **VLM_RANGES,
    "env.frame_size": Range("int", 8),
    "collector.init_random_frames": Range("int", 0),
    "buffer.capacity": Range("int", 1),
    "buffer.batch_size": Range("int", 1),
    "buffer.lam_max": Range("float", 0, 1, nullable=True),
    "buffer.warmup_fraction": Range("float", 0, 1),
    "buffer.td_boost": Range("bool"),
    "buffer.per_alpha": Range("float", 0),
    "buffer.per_beta": Range("float", 0, 1),
    "optim.updates_per_frame": Range("float", 0, open_low=True),
    "loss.tau": Range("float", 0, 1, open_low=True),
}


def check_config(cfg: DictConfig, ranges) -> None:
    """Refuses a bad configuration before anything is built, naming the key and the choices.

    ``ranges``: every numeric key of the recipe's YAML (:data:`SHARED_RANGES` and the recipe's own).
    """
    from torchrl_vlm.envs.ogbench import OGBENCH_ENVS

    if cfg.env.name not in OGBENCH_ENVS:
        raise ValueError(f"env.name={cfg.env.name!r} is not supported; choose one of {', '.join(OGBENCH_ENVS)}")
    check_common_config(cfg, ranges)
    if cfg.buffer.sampler not in SAMPLERS:
        raise ValueError(f"buffer.sampler={cfg.buffer.sampler!r}; choose one of {SAMPLERS}")
    if cfg.vlm.scorer not in SCORERS:
        raise ValueError(f"vlm.scorer={cfg.vlm.scorer!r}; choose one of {SCORERS}")
    if cfg.vlm.definition not in DEFINITIONS:
        raise ValueError(f"vlm.definition={cfg.vlm.definition!r}; choose one of {DEFINITIONS}")
    if cfg.env.render not in ("auto", True, False):
        raise ValueError(f"env.render must be auto, true or false, got {cfg.env.render!r}")


def wants_frames(cfg: DictConfig) -> bool:
    """Frames cost ~0.1 s each in software rendering: only a VLM scorer looks at them."""
    if cfg.env.render != "auto":
        return bool(cfg.env.render)
    return cfg.buffer.sampler == "vlm" and cfg.vlm.scorer == "transformers"


def make_env(cfg: DictConfig, num_envs: int, render: bool, seed: int):
    from torchrl_vlm.envs.ogbench import make_ogbench_env

    return make_ogbench_env(
        cfg.env.name, num_envs=num_envs, clip_len=cfg.vlm.clip_len, render=render, frame_size=cfg.env.frame_size,
        seed=seed, device=cfg.device,
    )


def scorer_factory(cfg: DictConfig):
    """A picklable zero-argument factory of the scorer, built inside the scoring process."""
    from torchrl_vlm.scoring.oracle import OGBenchEventScorer

    events = functools.partial(OGBenchEventScorer, cfg.vlm.definition)
    if cfg.vlm.scorer == "events":
        factory = events
    elif cfg.vlm.scorer == "noisy_events":
        factory = functools.partial(NoisyScorer, events, cfg.vlm.false_positive_rate, cfg.vlm.false_negative_rate,
                                    cfg.env.seed)
    else:
        from torchrl_vlm.scoring.transformers import TransformersScorer

        factory = functools.partial(TransformersScorer, cfg.vlm.model, num_frames=cfg.vlm.num_frames,
                                    device=cfg.vlm.device, batch_size=cfg.vlm.batch_size)
    return with_verdict_cache(factory, cfg)


def make_buffer(cfg: DictConfig):
    """Uniform or PER (:func:`make_replay_buffer`), or VLM-RB with TD boosting (:class:`VLMReplayBuffer`)."""
    b = cfg.buffer
    if b.sampler != "vlm":
        return make_replay_buffer(b.capacity, sampler=b.sampler, batch_size=b.batch_size, per_alpha=b.per_alpha,
                                  per_beta=b.per_beta)
    sampler = MixtureSampler(lam_max=b.lam_max, warmup=int(b.warmup_fraction * cfg.collector.total_frames),
                             td_boost=b.td_boost)
    try:
        return VLMReplayBuffer(
            storage=LazyTensorStorage(b.capacity), scorer=scorer_factory(cfg), sampler=sampler,
            batch_size=b.batch_size, clip_len=cfg.vlm.clip_len, threshold=cfg.vlm.threshold,
            score_lag=cfg.vlm.score_lag, **vlm_service_options(cfg.vlm),
        )
    except ScoringServiceError as err:
        if cfg.vlm.scorer != "transformers":
            raise
        raise ScoringServiceError(
            f"vlm.model={cfg.vlm.model!r} could not be loaded. Without hub access, point vlm.model at a local "
            f"folder holding the model, or run with vlm.scorer=events. The scoring process said:\n{err}"
        ) from None


# --------------------------------------------------------------------------- what both loops do alike
def save_run(folder, cfg: DictConfig, *, loss_module, optimizers: dict, env, rb, collected: int, updates: int,
             evals: list) -> None:
    """A checkpoint of an actor-critic run: loss module (networks and targets), optimisers, env, RNG, buffer,
    and the evaluations so far (a resumed run's history is the whole run's)."""
    from omegaconf import OmegaConf

    from torchrl_vlm.training import get_rng_state, save_checkpoint

    save_checkpoint(
        folder,
        {
            "loss_module": loss_module.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
            "env": env.state_dict(),
            "rng": get_rng_state(),
            "collected_frames": collected,
            "updates": updates,
            "evals": list(evals),
            "config": OmegaConf.to_container(cfg, resolve=True),
        },
        rb,
    )


def restore_run(state: dict, cfg: DictConfig, *, loss_module, optimizers: dict, env, rb) -> list:
    """Loads what :func:`save_run` wrote (the optimisers keep the configured learning rate); returns the
    evaluations the run had made."""
    from pathlib import Path

    from torchrl_vlm.training import restore_optimizer, set_rng_state

    rb.loads(Path(state["folder"]) / "replay_buffer")
    loss_module.load_state_dict(state["loss_module"])
    for name, optimizer in optimizers.items():
        restore_optimizer(optimizer, state["optimizers"][name], cfg.optim.lr)
    env.load_state_dict(state["env"])
    set_rng_state(state["rng"])
    return list(state["evals"])


def evaluate(eval_env, actor, logger, collected: int, evals: list) -> dict:
    """Greedy episodes (one per eval env, to the 750-step limit); appends and logs success, return and
    ``subgoals``, the mean number of the task's five subgoals satisfied when the episode ends."""
    from torchrl_vlm.envs.ogbench import EPISODE_STEPS, OGBENCH_SUBGOALS
    from torchrl_vlm.training import evaluate_success, log_metrics

    result = evaluate_success(eval_env, actor, max_steps=EPISODE_STEPS + 1)
    # OGBench's single-task reward is minus the number of unsatisfied subgoals.
    row = {"frames": collected, "success": result["success"], "return": result["return"],
           "subgoals": len(OGBENCH_SUBGOALS) + result["final_reward"]}
    evals.append(row)
    log_metrics(logger, {f"eval/{k}": v for k, v in row.items() if k != "frames"}, collected)
    return row
