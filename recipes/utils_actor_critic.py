"""What the actor-critic recipes (``sac.py``, ``td3.py``) share, as TorchRL's sota-implementations keep it in a
utils_*.py: the env families, config checks, the scorer and replay buffer, checkpoints, evaluation, and the one
training loop. A recipe hands :func:`train` an :class:`Algorithm`: its loss, how it explores, and one update.

``env.family`` picks the env and the defaults of the family-dependent keys: each YAML writes such a key as
``"${family:{dmc: ..., ogbench: ...}}"`` (the :func:`family` resolver), so ``env.family=ogbench`` switches every
default at once and a key set on the command line wins over it.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tqdm
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDictBase
from torchrl._utils import timeit
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, PrioritizedSampler

from torchrl_vlm import MixtureSampler, NoisyScorer, ScoringServiceError, VLMReplayBuffer, make_replay_buffer
from torchrl_vlm.training import (
    VLM_RANGES,
    EpisodeMetrics,
    Every,
    Range,
    StopRequest,
    check_common_config,
    check_known_keys,
    check_resumable,
    close_all,
    describe_logs,
    env_frame_stride,
    get_rng_state,
    load_checkpoint,
    log_metrics,
    make_logger,
    phase_seconds,
    restore_optimizer,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    timed_batches,
    vlm_service_options,
    warn_if_never_trains,
    with_verdict_cache,
)

FAMILIES = ("dmc", "ogbench")
SAMPLERS = ("uniform", "per", "vlm")
SCORERS = ("events", "noisy_events", "transformers")
DEFINITIONS = ("any", "first_progress", "goal_only")


def family(choices: DictConfig, *, _root_: DictConfig):
    """The OmegaConf resolver ``${family:{dmc: A, ogbench: B}}``: the value of the run's ``env.family``."""
    name = _root_.env.family
    if name not in choices:
        raise ValueError(f"env.family={name!r}; choose one of {FAMILIES}")
    return choices[name]


OmegaConf.register_new_resolver("family", family, replace=True)

#: What the numeric keys both YAMLs have allow (with training.COMMON_RANGES; each recipe adds its own).
SHARED_RANGES = {
    **VLM_RANGES,
    "env.frame_size": Range("int", 8),
    "env.action_repeat": Range("int", 1, nullable=True),
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

#: Settings a resumed run must share with its checkpoint.
RESUME_MUST_MATCH = ("env.family", "env.name", "env.num_envs", "env.action_repeat", "buffer", "network",
                     "loss.gamma", "vlm.clip_len", "vlm.score_lag")


# --------------------------------------------------------------------------- env families
def dmc_domain_task(name: str) -> tuple[str, str]:
    """``"ball_in_cup-catch"`` as ``("ball_in_cup", "catch")``: DMControl's ``domain-task``."""
    domain, sep, task = name.partition("-")
    if not sep:
        raise ValueError(f"env.name={name!r}: a DMControl task is named domain-task, e.g. ball_in_cup-catch")
    return domain, task


def check_config(cfg: DictConfig, ranges, yaml_path: Path) -> None:
    """Refuses a bad configuration before anything is built, naming the key and the choices.

    ``ranges``: every numeric key of the recipe's YAML (:data:`SHARED_RANGES` and the recipe's own);
    ``yaml_path``: the recipe's YAML, whose keys are the only ones it takes.
    """
    check_known_keys(cfg, yaml_path)
    if cfg.env.family not in FAMILIES:
        raise ValueError(f"env.family={cfg.env.family!r}; choose one of {FAMILIES}")
    events = True
    if cfg.env.family == "ogbench":
        from torchrl_vlm.envs.ogbench import OGBENCH_ENVS

        if cfg.env.name not in OGBENCH_ENVS:
            raise ValueError(f"env.name={cfg.env.name!r} is not an OGBench task here; choose one of "
                             f"{', '.join(OGBENCH_ENVS)}")
        if cfg.env.action_repeat not in (None, 1):
            raise ValueError(f"env.action_repeat={cfg.env.action_repeat}: OGBench's scene tasks take none (null or 1)")
    else:
        from torchrl_vlm.envs.dmc import dmc_tasks
        from torchrl_vlm.envs.dmc_goals import dmc_goal

        domain, task = dmc_domain_task(cfg.env.name)
        if domain not in dmc_tasks() or task not in dmc_tasks()[domain]:
            raise ValueError(f"env.name={cfg.env.name!r} is not a dm_control suite task (domain-task, e.g. "
                             f"ball_in_cup-catch; domains: {', '.join(sorted(dmc_tasks()))})")
        events = dmc_goal(domain, task) is not None
    check_common_config(cfg, ranges)
    warn_if_never_trains(cfg)
    if cfg.buffer.sampler not in SAMPLERS:
        raise ValueError(f"buffer.sampler={cfg.buffer.sampler!r}; choose one of {SAMPLERS}")
    if cfg.vlm.scorer not in SCORERS:
        raise ValueError(f"vlm.scorer={cfg.vlm.scorer!r}; choose one of {SCORERS}")
    if cfg.vlm.definition not in DEFINITIONS:
        raise ValueError(f"vlm.definition={cfg.vlm.definition!r}; choose one of {DEFINITIONS}")
    if cfg.env.render not in ("auto", True, False):
        raise ValueError(f"env.render must be auto, true or false, got {cfg.env.render!r}")
    env_frame_stride(cfg)  # auto or an int >= 1, checked before anything starts
    if from_pixels(cfg) and cfg.env.family != "dmc":
        raise ValueError("agent.from_pixels=true needs env.family=dmc (OGBench's scene tasks run from the state here)")
    if not events and cfg.buffer.sampler == "vlm" and cfg.vlm.scorer != "transformers":
        raise ValueError(
            f"vlm.scorer={cfg.vlm.scorer}: env.name={cfg.env.name} has no visible goal, so no events for an event "
            "scorer to read (torchrl_vlm.envs.dmc_goals.DMC_GOALS lists the tasks that have one); use "
            "vlm.scorer=transformers or buffer.sampler=uniform|per"
        )


def wants_frames(cfg: DictConfig) -> bool:
    """Frames cost tens of ms each in software rendering: only a VLM scorer looks at them."""
    if cfg.env.render != "auto":
        return bool(cfg.env.render)
    return (cfg.buffer.sampler == "vlm" and cfg.vlm.scorer == "transformers") or uses_prior(cfg)


def uses_prior(cfg: DictConfig) -> bool:
    """A COVR action prior (``covr.prior=covr|frozen``, SAC only): the VLM reads every row's frame."""
    return "covr" in cfg and cfg.covr.prior != "none"


def from_pixels(cfg: DictConfig) -> bool:
    """The agent learns from pixels (``agent.from_pixels``, SAC on DMControl: the RAD agent)."""
    return "agent" in cfg and bool(cfg.agent.from_pixels)


def make_env(cfg: DictConfig, num_envs: int, render: bool, seed: int):
    """The family's env: ``make_dmc_env`` or ``make_ogbench_env``, with the recipe's clip length and frame size.

    A pixel agent (:func:`from_pixels`) sees ``pixels_observation``, its last ``agent.frame_stack`` frames
    stacked on the channels (uint8 ``[H, W, 3·k]``: replay keeps them as bytes, the encoder scales them)."""
    common = dict(num_envs=num_envs, clip_len=cfg.vlm.clip_len, render=render, frame_size=cfg.env.frame_size,
                  seed=seed, device=cfg.device,
                  frame_stride=env_frame_stride(cfg, every_step=uses_prior(cfg)) if render else 1)
    if cfg.env.family == "dmc":
        from torchrl.envs import CatFrames

        from torchrl_vlm.envs.dmc import make_dmc_env

        env = make_dmc_env(*dmc_domain_task(cfg.env.name), action_repeat=cfg.env.action_repeat,
                           from_pixels=from_pixels(cfg), render_quality=cfg.env.render_quality, **common)
        if from_pixels(cfg) and cfg.agent.frame_stack > 1:
            repeat = env.action_repeat
            env = env.append_transform(CatFrames(N=cfg.agent.frame_stack, dim=-1, in_keys=["pixels_observation"]))
            env.action_repeat = repeat
        return env
    from torchrl_vlm.envs.ogbench import make_ogbench_env

    return make_ogbench_env(cfg.env.name, **common)


def action_repeat(env) -> int:
    """Env steps per agent step (DMControl's action repeat; 1 elsewhere)."""
    return getattr(env, "action_repeat", 1)


def scorer_factory(cfg: DictConfig):
    """A picklable zero-argument factory of the scorer, built inside the scoring process."""
    from torchrl_vlm.scoring.oracle import DMCEventScorer, OGBenchEventScorer

    event_scorer = DMCEventScorer if cfg.env.family == "dmc" else OGBenchEventScorer
    events = functools.partial(event_scorer, cfg.vlm.definition)
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


def make_prior_buffer(cfg: DictConfig, action_dim: int, out_dir: Path):
    """COVR's replay (:class:`~torchrl_vlm.covr.PriorReplayBuffer`): the action prior in its own process, and with
    ``covr.prior=covr`` the fine-tuning loop (D_f, schedule, EDDF, RALW, LoRA in a process of its own)."""
    from torchrl_vlm.covr import ActionPrior, FinetuneBuffer, FineTuning, LoRAFineTuner, PriorReplayBuffer
    from torchrl_vlm.covr.prior import DEFAULT_PROMPT

    c, b = cfg.covr, cfg.buffer
    adapters = out_dir / "adapters"
    prompt = DEFAULT_PROMPT if c.prompt is None else c.prompt
    device = None if c.device == "auto" else c.device
    common = dict(action_dim=action_dim, prompt=prompt, image_size=c.image_size, answer_prefix=c.answer_prefix)
    service = dict(num_threads=c.num_threads, start_timeout_s=c.start_timeout_s, hang_timeout_s=c.hang_timeout_s)
    finetuning = None
    if c.prior == "covr":
        tuner = functools.partial(
            LoRAFineTuner, c.model, adapter_root=str(adapters), rank=c.lora_rank, alpha=c.lora_alpha,
            dropout=c.lora_dropout, lr=c.lr, epochs=c.epochs, batch_size=c.finetune_batch_size,
            max_steps=c.max_steps, label_smoothing=c.label_smoothing, seed=cfg.env.seed,
            device=None if c.finetune_device == "auto" else c.finetune_device, **common,
        )
        finetuning = FineTuning(
            tuner, adapter_root=adapters, buffer=FinetuneBuffer(c.df_capacity, gamma=cfg.loss.gamma,
                                                                scratch_dir=out_dir / "finetune_buffer"),
            psi0=c.psi0, entropy_sign=c.entropy_sign, filter=c.filter, weighting=c.weighting,
            min_keep_fraction=c.min_keep_fraction, min_samples=c.min_samples,
            lag=None if c.prior_lag is None else c.finetune_lag, seed=cfg.env.seed, **service,
        )
    prior = functools.partial(ActionPrior, c.model, adapter_root=str(adapters), max_new_tokens=c.max_new_tokens,
                              batch_size=c.batch_size, device=device, **common)
    storage = LazyTensorStorage(b.capacity)
    sampler = None if b.sampler == "uniform" else PrioritizedSampler(b.capacity, alpha=b.per_alpha, beta=b.per_beta)
    try:
        return PriorReplayBuffer(storage=storage, prior=prior, action_dim=action_dim, sampler=sampler,
                                 batch_size=b.batch_size, prior_lag=c.prior_lag, finetuning=finetuning,
                                 frame_size=cfg.env.frame_size, **service)
    except ScoringServiceError as err:
        if finetuning is not None:
            finetuning.close()
        raise ScoringServiceError(
            f"covr.model={c.model!r} could not be loaded. Without hub access, point covr.model at a local folder "
            f"holding the model (e.g. one made by torchrl_vlm.testing.make_tiny_vlm). The process said:\n{err}"
        ) from None


def make_buffer(cfg: DictConfig, action_dim: int | None = None, out_dir: Path | None = None):
    """Uniform or PER (:func:`make_replay_buffer`), VLM-RB with TD boosting (:class:`VLMReplayBuffer`), or COVR's
    (:func:`make_prior_buffer`, with ``covr.prior=covr|frozen``)."""
    b = cfg.buffer
    if uses_prior(cfg):
        return make_prior_buffer(cfg, action_dim, Path(out_dir))
    if b.sampler != "vlm":
        return make_replay_buffer(b.capacity, sampler=b.sampler, batch_size=b.batch_size, per_alpha=b.per_alpha,
                                  per_beta=b.per_beta)
    sampler = MixtureSampler(lam_max=b.lam_max, warmup=int(b.warmup_fraction * cfg.collector.total_frames),
                             td_boost=b.td_boost)
    try:
        return VLMReplayBuffer(
            storage=LazyTensorStorage(b.capacity), scorer=scorer_factory(cfg), sampler=sampler,
            batch_size=b.batch_size, threshold=cfg.vlm.threshold,
            score_lag=cfg.vlm.score_lag, **vlm_service_options(cfg.vlm),
        )
    except ScoringServiceError as err:
        if cfg.vlm.scorer != "transformers":
            raise
        raise ScoringServiceError(
            f"vlm.model={cfg.vlm.model!r} could not be loaded. Without hub access, point vlm.model at a local "
            f"folder holding the model, or run with vlm.scorer=events. The scoring process said:\n{err}"
        ) from None


# --------------------------------------------------------------------------- checkpoints and evaluation
def save_run(folder, cfg: DictConfig, *, loss_module, optimizers: dict, env, rb, collected: int, updates: int,
             evals: list) -> None:
    """A checkpoint: loss module (networks and targets), optimisers, env, RNG, buffer, and the evaluations so far
    (a resumed run's history is the whole run's)."""
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
    rb.loads(Path(state["folder"]) / "replay_buffer")
    loss_module.load_state_dict(state["loss_module"])
    for name, optimizer in optimizers.items():
        restore_optimizer(optimizer, state["optimizers"][name], cfg.optim.lr)
    env.load_state_dict(state["env"])
    set_rng_state(state["rng"])
    return list(state["evals"])


def evaluate(cfg: DictConfig, eval_env, actor, logger, collected: int, evals: list) -> dict:
    """Greedy episodes, one per eval env, to the episode's time limit; appends and logs the row.

    Every row has ``frames`` (agent steps), ``env_steps`` (× the action repeat), ``return`` and, where the task
    has a goal, ``success`` (the share of episodes whose last step is in it). OGBench's rows add ``subgoals``:
    the mean number of the task's five subgoals satisfied when the episode ends.
    """
    from torchrl_vlm.training import evaluate_success

    repeat = action_repeat(eval_env)
    if cfg.env.family == "ogbench":
        from torchrl_vlm.envs.ogbench import EPISODE_STEPS, OGBENCH_SUBGOALS

        max_steps = EPISODE_STEPS + 1
    else:
        max_steps = 1000 // repeat + 1  # dm_control's suite tasks: 1000 physics steps
    result = evaluate_success(eval_env, actor, max_steps=max_steps)
    row = {"frames": collected, "env_steps": collected * repeat, "return": result["return"]}
    if result["success"] == result["success"]:  # NaN: the task has no goal
        row["success"] = result["success"]
    if cfg.env.family == "ogbench":
        # OGBench's single-task reward is minus the number of unsatisfied subgoals.
        row["subgoals"] = len(OGBENCH_SUBGOALS) + result["final_reward"]
    evals.append(row)
    log_metrics(logger, {f"eval/{k}": v for k, v in row.items() if k != "frames"}, collected)
    return row


# --------------------------------------------------------------------------- the loop
@dataclasses.dataclass
class Algorithm:
    """What differs between the actor-critic recipes; :func:`train` does the rest.

    ``update(sample, updates)`` makes one gradient step on a replay sample (``updates``: the steps made before
    it, for delayed updates), writes ``td_error`` into ``sample`` for TD boosting and PER, and returns the
    losses to log.
    """

    name: str
    loss_module: torch.nn.Module
    optimizers: dict[str, torch.optim.Optimizer]
    actor: torch.nn.Module  # greedy: evaluation
    explore: torch.nn.Module  # what the collector runs
    update: Callable[[TensorDictBase, int], dict[str, float]]


def train(cfg: DictConfig, out_dir: Path, make_algorithm: Callable[[DictConfig, Any], Algorithm],
          check: Callable[[DictConfig], None]) -> dict[str, Any]:
    """Runs one training run: collect → extend → sample → update → priorities → log, with evaluation and
    checkpoints; returns a summary of plain numbers (and paths as strings). ``check``: the recipe's
    ``check_config``."""
    check(cfg)
    seed_everything(cfg.env.seed, cfg.num_threads)
    out_dir = Path(out_dir)
    total_frames = cfg.collector.total_frames
    render = wants_frames(cfg)

    env = eval_env = collector = rb = logger = pbar = None
    try:
        collected = updates = 0
        state = None
        evals: list[dict[str, float]] = []
        if cfg.checkpoint.resume:
            state = load_checkpoint(cfg.checkpoint.resume)
            check_resumable(state["config"], cfg, RESUME_MUST_MATCH + tuple(k for k in ("covr", "agent") if k in cfg))
            collected, updates = state["collected_frames"], state["updates"]
            if total_frames <= collected:
                raise ValueError(
                    f"nothing to do: the checkpoint is at {collected} frames, collector.total_frames={total_frames}"
                )
        env = make_env(cfg, cfg.env.num_envs, render, cfg.env.seed)
        eval_env = make_env(cfg, cfg.eval.episodes, False, cfg.env.seed + 10_000)
        algo = make_algorithm(cfg, env)
        rb = make_buffer(cfg, env.full_action_spec_unbatched["action"].shape[-1], out_dir)
        if state is not None:
            evals = restore_run(state, cfg, loss_module=algo.loss_module, optimizers=algo.optimizers, env=env, rb=rb)
            print(f"resumed from {cfg.checkpoint.resume} at {collected} frames")
        start_frames = collected
        repeat = action_repeat(env)

        collector = Collector(
            env,
            algo.explore,
            frames_per_batch=cfg.collector.frames_per_batch,
            total_frames=total_frames - collected,
            init_random_frames=max(0, cfg.collector.init_random_frames - collected),
            device=cfg.device,
            auto_register_policy_transforms=False,
        )
        logger = make_logger(
            cfg.logger.backend,
            algo=algo.name,
            exp_name=f"{cfg.logger.exp_name}_{cfg.buffer.sampler}" + (f"_{cfg.covr.prior}" if uses_prior(cfg) else ""),
            log_dir=out_dir / "logs",
            config=OmegaConf.to_container(cfg, resolve=True),
            project=cfg.logger.project,
            mode=cfg.logger.mode,
        )

        def checkpoint(folder: Path) -> None:
            save_run(folder, cfg, loss_module=algo.loss_module, optimizers=algo.optimizers, env=env, rb=rb,
                     collected=collected, updates=updates, evals=evals)

        eval_every = Every(cfg.eval.interval, collected)
        log_every = Every(cfg.logger.log_interval, collected)
        ckpt_every = Every(cfg.checkpoint.interval, collected)
        episodes = EpisodeMetrics()
        logs: dict[str, list[float]] = {}
        pbar = tqdm.tqdm(total=total_frames, initial=collected, disable=not cfg.logger.progress, unit="f")
        t_start = time.perf_counter()
        last_eval = {"return": float("nan")}
        budget = 0.0  # fractional gradient steps carried between batches

        with StopRequest() as stop:
            for batch in timed_batches(collector):
                n = batch.numel()
                collected += n
                episodes(batch)
                with timeit("extend"):
                    rb.extend(batch)
                if collected >= cfg.collector.init_random_frames:
                    budget += n * cfg.optim.updates_per_frame
                    for _ in range(int(budget)):
                        with timeit("sample"):
                            sample = rb.sample().to(cfg.device)
                        with timeit("update"):
                            for key, value in algo.update(sample, updates).items():
                                logs.setdefault(key, []).append(value)
                            if "entropy" in logs and hasattr(rb, "policy_entropy"):
                                rb.policy_entropy = logs["entropy"][-1]  # COVR's EDDF threshold reads it
                            updates += 1
                        with timeit("priorities"):
                            # TD boosting: each sampled transition's |δ|; PER: its priority; else nothing.
                            rb.update_tensordict_priority(sample)
                    budget -= int(budget)
                collector.update_policy_weights_()
                sps = (collected - start_frames) / max(time.perf_counter() - t_start, 1e-9)
                pbar.update(n)
                if eval_every.due(collected):
                    with timeit("eval"):
                        last_eval = evaluate(cfg, eval_env, algo.actor, logger, collected, evals)
                if log_every.due(collected) or collected >= total_frames or stop.requested:
                    metrics = episodes.pop()
                    metrics.update({f"train/{k}": float(np.mean(v)) for k, v in logs.items()})
                    metrics.update({"train/sps": sps, "train/updates": updates, "train/env_steps": collected * repeat})
                    metrics.update({f"buffer/{k}": v for k, v in rb.stats().items()})
                    metrics.update(phase_seconds())
                    log_metrics(logger, metrics, collected)
                    logs.clear()
                pbar.set_postfix(ret=f"{last_eval['return']:.1f}", success=f"{last_eval.get('success', np.nan):.2f}",
                                 sps=f"{sps:.0f}")
                if ckpt_every.due(collected):
                    checkpoint(out_dir / "checkpoint")
                if stop.requested:  # Ctrl-C or SIGTERM: end as a finished run does
                    break

            loop_seconds = time.perf_counter() - t_start
            if not evals or evals[-1]["frames"] != collected:
                with timeit("eval"):
                    last_eval = evaluate(cfg, eval_env, algo.actor, logger, collected, evals)
            if cfg.checkpoint.at_end:
                checkpoint(out_dir / "checkpoint")
            buffer_stats = rb.stats()
    finally:
        close_all(pbar, collector, env, eval_env, rb, logger)

    return {
        "frames": collected,
        "env_steps": collected * repeat,
        "action_repeat": repeat,
        "start_frames": start_frames,
        "updates": updates,
        "sps": (collected - start_frames) / max(loop_seconds, 1e-9),
        "final_return": last_eval["return"],
        "final_success": last_eval.get("success", float("nan")),
        "evals": evals,
        "buffer_stats": buffer_stats,
        "interrupted": stop.requested,
        "out_dir": str(out_dir),
        "checkpoint": str(out_dir / "checkpoint") if (out_dir / "checkpoint").exists() else None,
    }


def print_summary(cfg: DictConfig, summary: dict) -> None:
    """The end-of-run lines a recipe prints."""
    print("\n=== run summary ===")
    success = "" if summary["final_success"] != summary["final_success"] else \
        f", success {summary['final_success']:.2f}"
    print(f"{cfg.logger.exp_name} + {cfg.buffer.sampler} on {cfg.env.family}:{cfg.env.name}: {summary['frames']} "
          f"agent steps ({summary['env_steps']} env steps), {summary['updates']} updates, SPS {summary['sps']:.0f}; "
          f"final eval return {summary['final_return']:.1f}{success}")
    print(describe_logs(cfg, summary["out_dir"]))
    if summary["checkpoint"] is not None:
        print(f"checkpoint: {summary['checkpoint']} (resume with checkpoint.resume=<that folder>)")
