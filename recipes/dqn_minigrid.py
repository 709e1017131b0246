"""Double DQN or IQN on MiniGrid with uniform, PER or VLM-RB replay (VLM-guided experience replay).

The agent learns from the symbolic observation. With ``buffer.sampler=vlm`` the
replay buffer is a :class:`~torchrl_vlm.VLMReplayBuffer`: each collector batch it
takes is cut into clips of ``vlm.clip_len`` steps that are scored in a separate
process, and the verdicts become the priorities that its
:class:`~torchrl_vlm.MixtureSampler` mixes with uniform sampling,
q_t = λ_t·q_P + (1 − λ_t)·q_U, λ rising to ``buffer.lam_max`` over the first
``buffer.warmup_fraction`` of training. Uniform and PER buffers take the same
``rb.extend(batch)`` and ``rb.update_tensordict_priority(sample)``, so the loop
below has no branch on the sampler.

The loop, written out: collect → extend → sample → loss → optimise → priorities → log.
``vlm.scorer=events`` is an *ideal* VLM that reads the simulator's events;
``vlm.scorer=transformers vlm.model=...`` asks a real one. ``algo=iqn`` swaps the
Q-network and the loss for IQN's (:mod:`torchrl_vlm.objectives.iqn`): the policy still
acts greedily on Q-values (the mean of ``iqn.num_policy_quantiles`` quantiles), so the
collector, the replay options and the loop are the same.

    python recipes/dqn_minigrid.py                                  # VLM-RB, ideal scorer, DoorKey-8x8
    python recipes/dqn_minigrid.py buffer.sampler=uniform           # the UER baseline
    python recipes/dqn_minigrid.py buffer.sampler=per               # the PER baseline
    python recipes/dqn_minigrid.py algo=iqn                         # IQN with VLM-RB
    python recipes/dqn_minigrid.py vlm.scorer=transformers vlm.model=HuggingFaceTB/SmolVLM-256M-Instruct
"""
from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import tqdm
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDictBase
from tensordict.nn import TensorDictSequential
from torchrl._utils import timeit
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage
from torchrl.envs import ExplorationType
from torchrl.modules import MLP, EGreedyModule, QValueActor
from torchrl.objectives import DQNLoss, HardUpdate, LossModule

from torchrl_vlm import (
    EVENT_DEFINITIONS,
    MINIGRID_ENVS,
    ClipGallery,
    DelayedScorer,
    MiniGridEventScorer,
    MixtureSampler,
    NoisyScorer,
    NStepReturns,
    ScoringServiceError,
    VLMReplayBuffer,
    episode_step_limit,
    make_minigrid_env,
    make_replay_buffer,
)
from torchrl_vlm.objectives import IQNLoss, IQNNetwork, IQNQValues
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
    evaluate_success,
    get_rng_state,
    load_checkpoint,
    log_metrics,
    make_adam,
    make_logger,
    phase_seconds,
    restore_training_state,
    save_checkpoint,
    seed_everything,
    timed_batches,
    vlm_service_options,
    warn_if_never_trains,
    with_verdict_cache,
)

ALGOS = ("dqn", "iqn")
SAMPLERS = ("uniform", "per", "vlm")
SCORERS = ("events", "noisy_events", "transformers", "openai")


# --------------------------------------------------------------------------- building blocks
#: What each numeric key of dqn_minigrid.yaml allows (with training.COMMON_RANGES); tests
#: check that every numeric key of the YAML is listed here.
RANGES = {
    **VLM_RANGES,
    "env.tile_size": Range("int", 1),
    "vlm.max_concurrency": Range("int", 1),
    "env.max_steps": Range("int", 1, nullable=True),
    "optim.max_grad_norm": Range("float", 0, open_low=True),
    "env.parallel": Range("bool"),
    "collector.init_random_frames": Range("int", 0),
    "collector.eps_start": Range("float", 0, 1),
    "collector.eps_end": Range("float", 0, 1),
    "collector.eps_fraction": Range("float", 0, 1),
    "buffer.capacity": Range("int", 1),
    "buffer.batch_size": Range("int", 1),
    "buffer.lam_max": Range("float", 0, 1, nullable=True),
    "buffer.warmup_fraction": Range("float", 0, 1),
    "buffer.td_boost": Range("bool"),
    "buffer.importance_weights": Range("bool"),
    "buffer.per_alpha": Range("float", 0),
    "buffer.per_beta": Range("float", 0, 1),
    "vlm.mission_in_prompt": Range("bool"),
    "vlm.image_size": Range("int", 1, nullable=True),
    "vlm.latency_s": Range("float", 0),
    "optim.frames_per_update": Range("int", 1),
    "loss.n_steps": Range("int", 1),
    "loss.double_dqn": Range("bool"),
    "loss.target_update_frames": Range("int", 1),
    "eval.eps": Range("float", 0, 1),
    "eval.solved_success": Range("float", 0, 1),
    "eval.stop_when_solved": Range("bool"),
    "logger.gallery_interval": Range("int", 0),
    "iqn.num_quantiles": Range("int", 1),
    "iqn.num_target_quantiles": Range("int", 1),
    "iqn.num_policy_quantiles": Range("int", 1),
    "iqn.kappa": Range("float", 0, open_low=True),
    "iqn.num_cosines": Range("int", 1),
}


def check_config(cfg: DictConfig) -> None:
    """Refuses a bad configuration before anything is built, naming the key and the choices."""
    check_known_keys(cfg, Path(__file__).with_name("dqn_minigrid.yaml"))
    if cfg.env.name not in MINIGRID_ENVS:
        raise ValueError(f"env.name={cfg.env.name!r} is not supported; choose one of {', '.join(MINIGRID_ENVS)}")
    check_common_config(cfg, RANGES)
    warn_if_never_trains(cfg)
    if cfg.algo not in ALGOS:
        raise ValueError(f"algo={cfg.algo!r}; choose one of {ALGOS}")
    if cfg.buffer.sampler not in SAMPLERS:
        raise ValueError(f"buffer.sampler={cfg.buffer.sampler!r}; choose one of {SAMPLERS}")
    if cfg.buffer.sampler == "vlm" and cfg.vlm.scorer not in SCORERS:
        raise ValueError(f"vlm.scorer={cfg.vlm.scorer!r}; choose one of {SCORERS}")
    if cfg.buffer.td_boost and cfg.buffer.sampler != "vlm":
        raise ValueError(f"buffer.td_boost=true needs buffer.sampler=vlm, got {cfg.buffer.sampler!r}")
    if cfg.vlm.definition not in EVENT_DEFINITIONS:
        raise ValueError(f"vlm.definition={cfg.vlm.definition!r}; choose one of {tuple(EVENT_DEFINITIONS)}")
    if cfg.env.render not in ("auto", True, False):
        raise ValueError(f"env.render must be auto, true or false, got {cfg.env.render!r}")
    env_frame_stride(cfg)  # auto or an int >= 1, checked before anything starts


#: Settings a resumed run must share with its checkpoint: they shape the buffer, the
#: network or the returns already stored. The budget, logging and evaluation may change.
RESUME_MUST_MATCH = (
    "env.name", "env.num_envs", "algo", "buffer", "network", "loss.n_steps", "loss.gamma", "vlm.clip_len",
    "vlm.score_lag",
)


def scorer_factory(cfg: DictConfig):
    """A picklable zero-argument factory of the scorer, built inside the scoring process."""
    factory = _base_scorer_factory(cfg)
    if cfg.vlm.latency_s > 0:
        factory = functools.partial(DelayedScorer, factory, cfg.vlm.latency_s)
    return with_verdict_cache(factory, cfg)  # outside the delay: a verdict read from disk costs no model time


def _base_scorer_factory(cfg: DictConfig):
    if cfg.vlm.scorer == "events":
        return functools.partial(MiniGridEventScorer, cfg.vlm.definition)
    if cfg.vlm.scorer == "noisy_events":
        return functools.partial(
            NoisyScorer,
            functools.partial(MiniGridEventScorer, cfg.vlm.definition),
            cfg.vlm.false_positive_rate,
            cfg.vlm.false_negative_rate,
            cfg.env.seed,
        )
    from torchrl_vlm.scoring.transformers import DEFAULT_PROMPT, TransformersScorer

    if cfg.vlm.scorer == "openai":
        from torchrl_vlm.scoring.openai import OpenAIScorer

        if not cfg.vlm.base_url:
            raise ValueError("vlm.scorer=openai needs vlm.base_url, e.g. http://127.0.0.1:8000/v1 (vllm serve ...)")
        return functools.partial(
            OpenAIScorer,
            cfg.vlm.base_url,
            str(cfg.vlm.model),
            prompt=cfg.vlm.prompt or DEFAULT_PROMPT,
            num_frames=cfg.vlm.num_frames,
            api_key=cfg.vlm.api_key,
            max_concurrency=cfg.vlm.max_concurrency,
            mission_in_prompt=cfg.vlm.mission_in_prompt,
        )
    return functools.partial(
        TransformersScorer,
        cfg.vlm.model,
        prompt=cfg.vlm.prompt or DEFAULT_PROMPT,
        num_frames=cfg.vlm.num_frames,
        image_size=cfg.vlm.image_size,
        dtype=cfg.vlm.dtype,
        device=cfg.vlm.device,
        batch_size=cfg.vlm.batch_size,
        mission_in_prompt=cfg.vlm.mission_in_prompt,
    )


def wants_frames(cfg: DictConfig) -> bool:
    """Frames are rendered only when something looks at them: a VLM scorer or the clip gallery."""
    if cfg.env.render != "auto":
        return bool(cfg.env.render)
    if cfg.buffer.sampler != "vlm":
        return False
    return cfg.vlm.scorer in ("transformers", "openai") or cfg.logger.gallery_interval > 0


def make_env(cfg: DictConfig, num_envs: int, render: bool, seed: int):
    return make_minigrid_env(
        cfg.env.name,
        num_envs=num_envs,
        clip_len=cfg.vlm.clip_len,
        tile_size=cfg.env.tile_size,
        render=render,
        seed=seed,
        parallel=cfg.env.parallel,
        max_steps=cfg.env.max_steps,
        device=cfg.device,
        frame_stride=env_frame_stride(cfg) if render else 1,
    )


def make_q_network(cfg: DictConfig, env) -> QValueActor:
    """The acting network: an MLP of Q-values (DQN), or IQN's quantile network averaged into Q-values."""
    action_spec = env.full_action_spec_unbatched["action"]
    in_features = env.observation_spec["observation"].shape[-1]
    if cfg.algo == "iqn":
        net = IQNQValues(
            IQNNetwork(in_features, action_spec.n, hidden=list(cfg.network.hidden), num_cosines=cfg.iqn.num_cosines),
            num_quantiles=cfg.iqn.num_policy_quantiles,
        )
    else:
        net = MLP(
            in_features=in_features,
            out_features=action_spec.n,
            num_cells=list(cfg.network.hidden),
            activation_class=torch.nn.ReLU,
        )
    return QValueActor(net, in_keys=["observation"], spec=action_spec).to(cfg.device)


def make_loss(cfg: DictConfig, q_net: QValueActor) -> LossModule:
    """DQN's loss (squared TD error) or IQN's (quantile Huber), sharing the acting network's parameters.

    Both weight each sample by ``priority_weight`` when the sampler returns it (PER;
    ``MixtureSampler`` with importance weights) and write ``td_error`` for PER and TD boosting.
    """
    if cfg.algo == "iqn":
        network = next(m for m in q_net.modules() if isinstance(m, IQNNetwork))
        return IQNLoss(
            network,
            num_quantiles=cfg.iqn.num_quantiles,
            num_target_quantiles=cfg.iqn.num_target_quantiles,
            num_policy_quantiles=cfg.iqn.num_policy_quantiles,
            kappa=cfg.iqn.kappa,
            gamma=cfg.loss.gamma,
            double_dqn=cfg.loss.double_dqn,
        )
    loss_module = DQNLoss(q_net, loss_function="l2", delay_value=True, double_dqn=cfg.loss.double_dqn)
    loss_module.make_value_estimator(gamma=cfg.loss.gamma)
    return loss_module


def update(sample: TensorDictBase, loss_module: LossModule, optimizer: torch.optim.Optimizer,
           target_updater: HardUpdate, max_grad_norm: float) -> torch.Tensor:
    """One gradient step (gradient norm clipped), then the target network's update counter; returns the loss."""
    loss = loss_module(sample)["loss"]  # also writes the batch's "td_error", the priorities of PER and TD boosting
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(loss_module.parameters(), max_grad_norm)
    optimizer.step()
    target_updater.step()
    return loss.detach()


def make_buffer(cfg: DictConfig, gallery: ClipGallery | None = None):
    """The replay buffer: uniform or PER (:func:`make_replay_buffer`), or VLM-RB (:class:`VLMReplayBuffer`).

    Each takes the collector's batches as they come: frames dropped, 3-step returns
    (``loss.n_steps``) computed in the collector layout, rows written. VLM-RB's also
    starts the scoring process.
    """
    b = cfg.buffer
    # TorchRL's MultiStep, with the episode's end moved to each window's end (see NStepReturns)
    nstep = NStepReturns(gamma=cfg.loss.gamma, n_steps=cfg.loss.n_steps) if cfg.loss.n_steps > 1 else None
    if b.sampler != "vlm":
        return make_replay_buffer(
            b.capacity, sampler=b.sampler, batch_size=b.batch_size, per_alpha=b.per_alpha, per_beta=b.per_beta,
            postproc=nstep,
        )
    sampler = MixtureSampler(
        lam_max=b.lam_max,
        warmup=int(b.warmup_fraction * cfg.collector.total_frames),
        td_boost=b.td_boost,
        importance_weights=b.importance_weights,
    )
    try:
        return VLMReplayBuffer(
            storage=LazyTensorStorage(b.capacity),
            scorer=scorer_factory(cfg),
            sampler=sampler,
            batch_size=b.batch_size,
            threshold=cfg.vlm.threshold,  # the clip length is the env's (vlm.clip_len, set on RenderClips)
            score_lag=cfg.vlm.score_lag,
            postproc=nstep,
            gallery=gallery,
            **vlm_service_options(cfg.vlm),
        )
    except ScoringServiceError as err:
        if cfg.vlm.scorer != "transformers":
            raise
        raise ScoringServiceError(
            f"vlm.model={cfg.vlm.model!r} could not be loaded. Without hub access, point vlm.model at a "
            "local folder holding the model, or run with vlm.scorer=events (the ideal, weight-free scorer). "
            f"The scoring process said:\n{err}"
        ) from None


# --------------------------------------------------------------------------- training
def train(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Runs one training run; returns a summary of plain numbers (and paths as strings).

    What the run leaves on disk is the way to its objects: the checkpoint
    (``out_dir/checkpoint``: networks, optimiser, replay buffer, counters; see
    :func:`~torchrl_vlm.training.load_checkpoint`), the logs and the gallery.
    """
    check_config(cfg)
    seed_everything(cfg.env.seed, cfg.num_threads)
    out_dir = Path(out_dir)
    total_frames = cfg.collector.total_frames
    render = wants_frames(cfg)

    q_net = explore = collector = env = eval_env = rb = logger = pbar = None
    try:
        env = make_env(cfg, cfg.env.num_envs, render, cfg.env.seed)
        eval_env = make_env(cfg, cfg.eval.episodes, False, cfg.env.seed + 10_000)
        eval_steps = episode_step_limit(cfg.env.name, cfg.env.max_steps) + 1

        q_net = make_q_network(cfg, env)
        action_spec = env.full_action_spec_unbatched["action"]
        explore = EGreedyModule(
            action_spec,
            annealing_num_steps=max(1, int(cfg.collector.eps_fraction * total_frames)),
            eps_init=cfg.collector.eps_start,
            eps_end=cfg.collector.eps_end,
        )
        policy = TensorDictSequential(q_net, explore)
        greedy_ish = EGreedyModule(action_spec, eps_init=cfg.eval.eps, eps_end=cfg.eval.eps)
        eps_policy = TensorDictSequential(q_net, greedy_ish)

        loss_module = make_loss(cfg, q_net)
        updates_per_target = max(1, cfg.loss.target_update_frames // cfg.optim.frames_per_update)
        target_updater = HardUpdate(loss_module, value_network_update_interval=updates_per_target)
        optimizer = make_adam(loss_module.parameters(), cfg.optim.lr)

        vlm = cfg.buffer.sampler == "vlm"
        gallery = ClipGallery() if (vlm and render and cfg.logger.gallery_interval > 0) else None
        collected = updates = 0
        state = None
        solved_at = None
        if cfg.checkpoint.resume:
            state = load_checkpoint(cfg.checkpoint.resume)
            # A checkpoint from before algo existed is DQN's; IQN's settings matter to IQN runs only.
            check_resumable(
                {"algo": "dqn", **state["config"]}, cfg, RESUME_MUST_MATCH + (("iqn",) if cfg.algo == "iqn" else ())
            )
            collected, updates = state["collected_frames"], state["updates"]
            solved_at = state.get("solved_at")
            if total_frames <= collected:
                raise ValueError(
                    f"nothing to do: the checkpoint is at {collected} frames, collector.total_frames={total_frames}"
                )
        rb = make_buffer(cfg, gallery)
        if state is not None:
            rb.loads(Path(state["folder"]) / "replay_buffer")  # the folder checked (or its fallback)
            restore_training_state(state, loss_module=loss_module, optimizer=optimizer, env=env, lr=cfg.optim.lr)
            explore.load_state_dict(state["explore"])
            target_updater.counter = state["target_update_counter"]
            print(f"resumed from {cfg.checkpoint.resume} at {collected} frames")
        start_frames = collected

        collector = Collector(
            env,
            policy,
            frames_per_batch=cfg.collector.frames_per_batch,
            total_frames=total_frames - collected,
            init_random_frames=max(0, cfg.collector.init_random_frames - collected),
            device=cfg.device,
            auto_register_policy_transforms=False,  # the Q-network needs no recurrent-state tracking
        )
        logger = make_logger(
            cfg.logger.backend,
            algo=cfg.algo.upper(),
            exp_name=f"{cfg.logger.exp_name}_{cfg.buffer.sampler}",
            log_dir=out_dir / "logs",
            config=OmegaConf.to_container(cfg, resolve=True),
            project=cfg.logger.project,
            mode=cfg.logger.mode,
        )

        evals: list[dict[str, float]] = []

        def evaluate() -> dict[str, float]:
            nonlocal solved_at
            greedy = evaluate_success(eval_env, q_net, max_steps=eval_steps)
            eps = evaluate_success(eval_env, eps_policy, max_steps=eval_steps, exploration=ExplorationType.RANDOM)
            row = {
                "frames": collected,
                "success_greedy": greedy["success"],
                "success_eps": eps["success"],
                "return_greedy": greedy["return"],
            }
            evals.append(row)
            if solved_at is None and eps["success"] >= cfg.eval.solved_success:  # ε=0.05: greedy flickers
                solved_at = collected
            log_metrics(logger, {f"eval/{k}": v for k, v in row.items() if k != "frames"}, collected)
            return row

        def checkpoint(folder: Path) -> None:
            state = {
                "loss_module": loss_module.state_dict(),
                "optimizer": optimizer.state_dict(),
                "explore": explore.state_dict(),
                "target_update_counter": target_updater.counter,
                "env": env.state_dict(),
                "rng": get_rng_state(),
                "collected_frames": collected,
                "updates": updates,
                "solved_at": solved_at,
                "config": OmegaConf.to_container(cfg, resolve=True),
            }
            save_checkpoint(folder, state, rb)  # a VLMReplayBuffer waits for its clips in flight first

        eval_every = Every(cfg.eval.interval, collected)
        log_every = Every(cfg.logger.log_interval, collected)
        gallery_every = Every(cfg.logger.gallery_interval if gallery is not None else 0, collected)
        ckpt_every = Every(cfg.checkpoint.interval, collected)
        episodes = EpisodeMetrics()
        frames_per_update = cfg.optim.frames_per_update
        losses: list[float] = []
        pbar = tqdm.tqdm(total=total_frames, initial=collected, disable=not cfg.logger.progress, unit="f")
        t_start = time.perf_counter()
        last_eval = {"success_greedy": float("nan"), "success_eps": float("nan")}
        budget = 0.0  # fractional gradient steps carried between batches
        stopped = False  # solved, with eval.stop_when_solved

        with StopRequest() as stop:
            for batch in timed_batches(collector):
                n = batch.numel()
                collected += n
                explore.step(n)
                episodes(batch)
                with timeit("extend"):
                    rb.extend(batch)  # frames out, n-step returns, rows in; VLM-RB: clips to the scorer

                if collected >= cfg.collector.init_random_frames:
                    budget += n / frames_per_update
                    for _ in range(int(budget)):
                        with timeit("sample"):
                            sample = rb.sample().to(cfg.device)
                        with timeit("update"):
                            loss = update(sample, loss_module, optimizer, target_updater, cfg.optim.max_grad_norm)
                            updates += 1
                        with timeit("priorities"):
                            # PER: TD errors become priorities; TD boosting: its |δ|; otherwise nothing.
                            rb.update_tensordict_priority(sample)
                        losses.append(float(loss))
                    budget -= int(budget)

                collector.update_policy_weights_()  # a no-op in-process (shared policy); kept for remote collectors
                sps = (collected - start_frames) / max(time.perf_counter() - t_start, 1e-9)
                pbar.update(n)

                if eval_every.due(collected):
                    with timeit("eval"):
                        last_eval = evaluate()
                    stopped = solved_at is not None and cfg.eval.stop_when_solved
                if log_every.due(collected) or collected >= total_frames or stopped or stop.requested:
                    metrics = episodes.pop()
                    metrics.update({"train/sps": sps, "train/epsilon": float(explore.eps), "train/updates": updates})
                    if losses:
                        metrics["train/loss"] = float(np.mean(losses))
                    metrics.update({f"buffer/{k}": v for k, v in rb.stats().items()})
                    metrics.update(phase_seconds())
                    log_metrics(logger, metrics, collected)
                    losses.clear()
                pbar.set_postfix(
                    success=f"{episodes.last_success:.2f}", eval=f"{last_eval['success_greedy']:.2f}", sps=f"{sps:.0f}"
                )
                if gallery_every.due(collected):
                    gallery.save(out_dir / "gallery" / f"clips_{collected:09d}.png")
                if ckpt_every.due(collected):
                    checkpoint(out_dir / "checkpoint")
                if stopped or stop.requested:  # solved, or Ctrl-C / SIGTERM: end as a finished run does
                    break

            loop_seconds = time.perf_counter() - t_start
            if not evals or evals[-1]["frames"] != collected:  # unless the last periodic one was at the very end
                with timeit("eval"):
                    last_eval = evaluate()
            if gallery is not None:
                rb.drain()
                gallery.save(out_dir / "gallery" / "clips_final.png")
            if cfg.checkpoint.at_end:
                checkpoint(out_dir / "checkpoint")
            buffer_stats = rb.stats()
    finally:
        close_all(pbar, collector, env, eval_env, rb, logger)

    return {
        "frames": collected,
        "start_frames": start_frames,
        "updates": updates,
        "sps": (collected - start_frames) / max(loop_seconds, 1e-9),  # the training loop's own speed
        "final_success_greedy": last_eval["success_greedy"],
        "final_success_eps": last_eval["success_eps"],
        "evals": evals,
        "buffer_stats": buffer_stats,
        "lambda": buffer_stats.get("lambda"),
        "epsilon": float(explore.eps),
        "solved_at": solved_at,  # frames at the first evaluation with ε=0.05 success >= eval.solved_success
        "stopped_when_solved": stopped,
        "interrupted": stop.requested,  # "SIGINT" or "SIGTERM" if a signal ended the run early
        "out_dir": str(out_dir),
        "gallery": str(out_dir / "gallery") if gallery is not None else None,
        "checkpoint": str(out_dir / "checkpoint") if (out_dir / "checkpoint").exists() else None,
    }


def print_summary(cfg: DictConfig, summary: dict[str, Any]) -> None:
    print("\n=== run summary ===")
    print(f"frames {summary['frames']}  updates {summary['updates']}  SPS {summary['sps']:.0f}")
    print(
        f"final eval success: greedy {summary['final_success_greedy']:.2f}, "
        f"eps=0.05 {summary['final_success_eps']:.2f}; solved "
        + ("never" if summary["solved_at"] is None else f"at {summary['solved_at']} frames")
    )
    if summary["lambda"] is not None:
        print(f"lambda {summary['lambda']:.3f}")
    stats = summary["buffer_stats"]
    if "clips_submitted" in stats:
        print(
            "scorer: {submitted:.0f} clips submitted, {scored:.0f} scored, {pos:.0f} positive, "
            "{dropped:.0f} dropped, {lost:.0f} lost, {stale:.0f} stale slots rejected, coverage {cov:.2f}, "
            "latency mean {lat:.3f}s p95 {p95:.3f}s".format(
                submitted=stats["clips_submitted"],
                scored=stats["clips_scored"],
                pos=stats["positive_clips"],
                dropped=stats["clips_dropped"],
                lost=stats["clips_lost"],
                stale=stats["stale_rejected"],
                cov=stats["coverage"],
                lat=stats["latency_mean_s"],
                p95=stats["latency_p95_s"],
            )
        )
    print(describe_logs(cfg, summary["out_dir"]))
    if summary["checkpoint"] is not None:
        print(f"checkpoint: {summary['checkpoint']} (resume with checkpoint.resume=<that folder>)")
    if summary["gallery"] is not None:
        print(f"clip gallery: {summary['gallery']}")


@hydra.main(config_path=".", config_name="dqn_minigrid", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    summary = train(cfg, Path(HydraConfig.get().runtime.output_dir))
    print_summary(cfg, summary)


if __name__ == "__main__":
    main()
