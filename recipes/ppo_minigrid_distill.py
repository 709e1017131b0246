"""PPO or A2C on MiniGrid, distilled from a teacher's action distribution (LVLM2P).

The student learns from the symbolic observation; the teacher sees the rendered
frame (``teacher=vlm``) or the full grid state (``teacher=planner``, an exact
planner standing in for a perfect VLM). The loss is TorchRL's PPO/A2C loss plus

    loss_distill = λ · KL(π_T(·|o) ‖ π_θ(·|s)),      λ = loss.distill_coeff (LVLM2P: 0.01).

Better than the reference code: the teacher is asked **once per rollout, in one
batched call**, not once per sample per minibatch per epoch, and its answer is a
soft distribution read from logits (or an exact planner), not a parsed text list.

The loop, written out: collect → ask the teacher → GAE → epochs of minibatch
losses → optimise → log.

    python recipes/ppo_minigrid_distill.py                                # PPO + planner teacher, LavaGapS7
    python recipes/ppo_minigrid_distill.py algo=a2c teacher=none env.name=MiniGrid-GoToDoor-6x6-v0
    python recipes/ppo_minigrid_distill.py teacher=vlm teacher_vlm.model=HuggingFaceTB/SmolVLM-256M-Instruct
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
from tensordict.nn import TensorDictModule
from torchrl._utils import timeit
from torchrl.collectors import Collector
from torchrl.modules import MLP, ProbabilisticActor, ValueOperator
from torchrl.objectives.value import GAE

from torchrl_vlm import LVLM2P_ENVS, MINIGRID_ACTIONS, episode_step_limit, make_minigrid_env
from torchrl_vlm.teacher.loss import DistillA2CLoss, DistillClipPPOLoss
from torchrl_vlm.training import (
    EpisodeMetrics,
    Every,
    Range,
    StopRequest,
    check_common_config,
    check_known_keys,
    check_resumable,
    close_all,
    describe_logs,
    evaluate_success,
    get_rng_state,
    load_checkpoint,
    log_metrics,
    make_logger,
    phase_seconds,
    restore_training_state,
    save_checkpoint,
    seed_everything,
    service_ranges,
    timed_batches,
)

ALGOS = ("ppo", "a2c")
TEACHERS = ("none", "planner", "noisy_planner", "vlm")

#: Settings a resumed run must share with its checkpoint: they shape the networks and the
#: losses being optimised. The budget, logging and evaluation may change.
RESUME_MUST_MATCH = ("algo", "teacher", "env.name", "env.mission_features", "network", "loss")


#: What each numeric key of ppo_minigrid_distill.yaml allows (with training.COMMON_RANGES);
#: tests check that every numeric key of the YAML is listed here.
RANGES = {
    **service_ranges("teacher_vlm"),
    "env.tile_size": Range("int", 1),
    "env.max_steps": Range("int", 1, nullable=True),
    "optim.max_grad_norm": Range("float", 0, open_low=True),
    "env.mission_features": Range("bool"),
    "optim.epochs": Range("int", 1),
    "optim.minibatch_size": Range("int", 1),
    "loss.gae_lambda": Range("float", 0, 1),
    "loss.clip_epsilon": Range("float", 0, open_low=True),
    "loss.entropy_coeff": Range("float", 0),
    "loss.critic_coeff": Range("float", 0),
    "loss.distill_coeff": Range("float", 0),
    "loss.distill_decay_fraction": Range("float", 0, 1, open_low=True, nullable=True),
    "loss.hard_targets": Range("bool"),
    "teacher_planner.epsilon": Range("float", 0, 1),
    "teacher_planner.error_rate": Range("float", 0, 1),
    "teacher_vlm.temperature": Range("float", 0, open_low=True),
    "teacher_vlm.two_stage": Range("bool"),
    "teacher_vlm.batch_size": Range("int", 1),
    "teacher_vlm.remote": Range("bool"),
    "eval.solved_success": Range("float", 0, 1),
    "eval.stop_when_solved": Range("bool"),
}


def check_config(cfg: DictConfig) -> None:
    """Refuses a bad configuration before anything is built, naming the key and the choices."""
    check_known_keys(cfg, Path(__file__).with_name("ppo_minigrid_distill.yaml"))
    if cfg.algo not in ALGOS:
        raise ValueError(f"algo={cfg.algo!r}; choose one of {ALGOS}")
    if cfg.teacher not in TEACHERS:
        raise ValueError(f"teacher={cfg.teacher!r}; choose one of {TEACHERS}")
    if cfg.env.name not in LVLM2P_ENVS and not cfg.env.name.startswith("MiniGrid-DoorKey"):
        raise ValueError(
            f"env.name={cfg.env.name!r} is not supported; choose one of {', '.join(LVLM2P_ENVS)} or a DoorKey"
        )
    check_common_config(cfg, RANGES)
    if cfg.algo == "ppo" and cfg.optim.minibatch_size > cfg.collector.frames_per_batch:
        raise ValueError(
            f"optim.minibatch_size must be in [1, collector.frames_per_batch={cfg.collector.frames_per_batch}], "
            f"got {cfg.optim.minibatch_size}"
        )


def make_teacher(cfg: DictConfig, num_actions: int):
    """The teacher, called once per rollout as ``teacher(batch) -> probs [n_envs, T, num_actions]``.

    ``num_actions`` is the env's: Dynamic-Obstacles offers only left, right and forward.
    """
    if cfg.teacher == "none":
        return None
    from torchrl_vlm.teacher import NoisyTeacher, PlannerTeacher

    if cfg.teacher in ("planner", "noisy_planner"):
        planner = PlannerTeacher(epsilon=cfg.teacher_planner.epsilon, num_actions=num_actions)
        if cfg.teacher == "planner":
            return planner
        return NoisyTeacher(planner, cfg.teacher_planner.error_rate, seed=cfg.env.seed)
    from torchrl_vlm.scoring.service import ScoringServiceError
    from torchrl_vlm.teacher import RemoteTeacher, VLMTeacher

    factory = functools.partial(
        VLMTeacher,
        cfg.teacher_vlm.model,
        action_names=MINIGRID_ACTIONS[:num_actions],
        temperature=cfg.teacher_vlm.temperature,
        two_stage=cfg.teacher_vlm.two_stage,
        device=cfg.teacher_vlm.device,
        batch_size=cfg.teacher_vlm.batch_size,
    )
    try:
        if not cfg.teacher_vlm.remote:
            return factory()
        t = cfg.teacher_vlm
        return RemoteTeacher(
            factory,
            timeout_s=t.hang_timeout_s,
            start_timeout_s=t.start_timeout_s,
            hang_timeout_s=t.hang_timeout_s,
            max_restarts=t.max_restarts,
            max_consecutive_errors=t.max_consecutive_errors,
        )
    except (OSError, ScoringServiceError) as err:
        raise OSError(
            f"teacher_vlm.model={cfg.teacher_vlm.model!r} could not be loaded. Without hub access, point it at a "
            f"local folder holding the model, or use teacher=planner (the exact, weight-free teacher).\n{err}"
        ) from None


def make_env(cfg: DictConfig, num_envs: int, seed: int, *, teacher: str):
    return make_minigrid_env(
        cfg.env.name,
        num_envs=num_envs,
        tile_size=cfg.env.tile_size,
        render=teacher == "vlm",
        state=teacher in ("planner", "noisy_planner"),
        seed=seed,
        max_steps=cfg.env.max_steps,
        mission_features=cfg.env.mission_features,
        device=cfg.device,
    )


def make_actor_critic(cfg: DictConfig, env) -> tuple[ProbabilisticActor, ValueOperator]:
    action_spec = env.full_action_spec_unbatched["action"]
    n_obs = env.observation_spec["observation"].shape[-1]
    hidden = list(cfg.network.hidden)
    actor = ProbabilisticActor(
        TensorDictModule(
            MLP(in_features=n_obs, out_features=action_spec.n, num_cells=hidden, activation_class=torch.nn.Tanh),
            in_keys=["observation"],
            out_keys=["logits"],
        ),
        in_keys=["logits"],
        spec=action_spec,
        distribution_class=torch.distributions.Categorical,
        return_log_prob=True,
    )
    critic = ValueOperator(
        MLP(in_features=n_obs, out_features=1, num_cells=hidden, activation_class=torch.nn.Tanh),
        in_keys=["observation"],
    )
    return actor.to(cfg.device), critic.to(cfg.device)


def make_loss(cfg: DictConfig, actor, critic):
    total = cfg.collector.total_frames
    decay = None if cfg.loss.distill_decay_fraction is None else int(cfg.loss.distill_decay_fraction * total)
    common = dict(
        distill_coeff=cfg.loss.distill_coeff if cfg.teacher != "none" else 0.0,
        distill_decay_frames=decay,
        hard_targets=cfg.loss.hard_targets,
        entropy_coeff=cfg.loss.entropy_coeff,
        critic_coeff=cfg.loss.critic_coeff,
    )
    if cfg.algo == "ppo":
        return DistillClipPPOLoss(actor, critic, clip_epsilon=cfg.loss.clip_epsilon, normalize_advantage=True, **common)
    return DistillA2CLoss(actor, critic, **common)


def train(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Runs one training run; returns a summary of plain numbers (and paths as strings).

    The checkpoint (``out_dir/checkpoint``, see :func:`~torchrl_vlm.training.load_checkpoint`)
    and the logs are the way to the run's objects.
    """
    check_config(cfg)
    seed_everything(cfg.env.seed, cfg.num_threads)
    out_dir = Path(out_dir)
    total_frames = cfg.collector.total_frames

    env = teacher = eval_env = collector = logger = pbar = None
    try:
        collected = 0
        state = None
        if cfg.checkpoint.resume:
            state = load_checkpoint(cfg.checkpoint.resume)
            check_resumable(state["config"], cfg, RESUME_MUST_MATCH)
            collected = state["collected_frames"]
            if total_frames <= collected:
                raise ValueError(
                    f"nothing to do: the checkpoint is at {collected} frames, collector.total_frames={total_frames}"
                )
        env = make_env(cfg, cfg.env.num_envs, cfg.env.seed, teacher=cfg.teacher)
        teacher = make_teacher(cfg, env.full_action_spec_unbatched["action"].n)
        eval_env = make_env(cfg, cfg.eval.episodes, cfg.env.seed + 10_000, teacher="none")
        eval_steps = episode_step_limit(cfg.env.name, cfg.env.max_steps) + 1
        actor, critic = make_actor_critic(cfg, env)
        loss_module = make_loss(cfg, actor, critic)
        advantage = GAE(gamma=cfg.loss.gamma, lmbda=cfg.loss.gae_lambda, value_network=critic, average_gae=False)
        optimizer = torch.optim.Adam(loss_module.parameters(), lr=cfg.optim.lr)
        if state is not None:
            restore_training_state(state, loss_module=loss_module, optimizer=optimizer, env=env, lr=cfg.optim.lr)
            print(f"resumed from {cfg.checkpoint.resume} at {collected} frames")
        start_frames = collected
        collector = Collector(
            env,
            actor,
            frames_per_batch=cfg.collector.frames_per_batch,
            total_frames=total_frames - collected,
            device=cfg.device,
            auto_register_policy_transforms=False,  # a feed-forward policy needs no recurrent-state tracking
        )
        logger = make_logger(
            cfg.logger.backend,
            algo=cfg.algo.upper(),
            exp_name=f"{cfg.logger.exp_name}_{cfg.teacher}",
            log_dir=out_dir / "logs",
            config=OmegaConf.to_container(cfg, resolve=True),
            project=cfg.logger.project,
            mode=cfg.logger.mode,
        )

        epochs = cfg.optim.epochs if cfg.algo == "ppo" else 1
        minibatch = cfg.optim.minibatch_size if cfg.algo == "ppo" else cfg.collector.frames_per_batch
        evals: list[dict[str, float]] = []
        solved_at = state.get("solved_at") if state is not None else None

        def evaluate() -> dict[str, float]:
            nonlocal solved_at
            result = evaluate_success(eval_env, actor, max_steps=eval_steps)
            row = {"frames": collected, "success": result["success"], "return": result["return"]}
            evals.append(row)
            if solved_at is None and result["success"] >= cfg.eval.solved_success:
                solved_at = collected
            log_metrics(logger, {"eval/success": result["success"], "eval/return": result["return"]}, collected)
            return row

        def checkpoint(folder: Path) -> None:
            save_checkpoint(
                folder,
                {
                    "loss_module": loss_module.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "env": env.state_dict(),
                    "rng": get_rng_state(),
                    "collected_frames": collected,
                    "solved_at": solved_at,
                    "config": OmegaConf.to_container(cfg, resolve=True),
                },
            )

        eval_every = Every(cfg.eval.interval, collected)
        log_every = Every(cfg.logger.log_interval, collected)
        ckpt_every = Every(cfg.checkpoint.interval, collected)
        episodes = EpisodeMetrics()
        pbar = tqdm.tqdm(total=total_frames, initial=collected, disable=not cfg.logger.progress, unit="f")
        t_start = time.perf_counter()
        last_eval = {"success": float("nan")}
        logs: dict[str, list[float]] = {}
        stopped = False
        with StopRequest() as stop:
            for batch in timed_batches(collector):
                n = batch.numel()
                collected += n
                episodes(batch)
                with timeit("teacher"):
                    if teacher is not None:
                        # One batched call per rollout: every epoch and minibatch reuses the answer.
                        batch.set("teacher_probs", teacher(batch).to(batch.device))
                with timeit("advantage"), torch.no_grad():
                    advantage(batch)
                data = batch.reshape(-1).exclude("pixels", ("next", "pixels"), "state", ("next", "state"))
                with timeit("update"):
                    for _ in range(epochs):
                        for index in torch.randperm(data.shape[0]).split(minibatch):
                            out = loss_module(data[index])
                            loss = sum(value for key, value in out.items() if key.startswith("loss_"))
                            optimizer.zero_grad(set_to_none=True)
                            loss.backward()
                            torch.nn.utils.clip_grad_norm_(loss_module.parameters(), cfg.optim.max_grad_norm)
                            optimizer.step()
                            for key in ("loss_objective", "loss_critic", "loss_entropy", "loss_distill", "distill_kl"):
                                if key in out.keys():
                                    logs.setdefault(key, []).append(float(out[key].detach()))
                loss_module.step_distillation(n)
                collector.update_policy_weights_()
                sps = (collected - start_frames) / max(time.perf_counter() - t_start, 1e-9)
                pbar.update(n)
                if eval_every.due(collected):
                    with timeit("eval"):
                        last_eval = evaluate()
                    if solved_at is not None and cfg.eval.stop_when_solved:
                        stopped = True
                if log_every.due(collected) or collected >= total_frames or stopped or stop.requested:
                    metrics = episodes.pop()
                    metrics.update({f"train/{k}": float(np.mean(v)) for k, v in logs.items()})
                    metrics.update({"train/sps": sps, "train/distill_coeff": loss_module.distill_coeff})
                    metrics.update(phase_seconds())
                    log_metrics(logger, metrics, collected)
                    logs.clear()
                pbar.set_postfix(
                    success=f"{episodes.last_success:.2f}", eval=f"{last_eval['success']:.2f}", sps=f"{sps:.0f}"
                )
                if ckpt_every.due(collected):
                    checkpoint(out_dir / "checkpoint")
                if stopped:
                    break
                if stop.requested:  # Ctrl-C or SIGTERM: end as a finished run does
                    break

            loop_seconds = time.perf_counter() - t_start
            if (
                not evals or evals[-1]["frames"] != collected
            ):  # a stopped run, or one ending on an eval, has just had one
                last_eval = evaluate()
            if cfg.checkpoint.at_end:
                checkpoint(out_dir / "checkpoint")
    finally:
        close_all(pbar, collector, env, eval_env, teacher if hasattr(teacher, "close") else None, logger)
    return {
        "frames": collected,
        "start_frames": start_frames,
        "sps": (collected - start_frames) / max(loop_seconds, 1e-9),
        "final_success": last_eval["success"],
        "solved_at": solved_at,
        "stopped_when_solved": stopped,
        "interrupted": stop.requested,  # "SIGINT" or "SIGTERM" if a signal ended the run early
        "evals": evals,
        "out_dir": str(out_dir),
        "checkpoint": str(out_dir / "checkpoint") if (out_dir / "checkpoint").exists() else None,
        "teacher_unsolved": getattr(teacher, "unsolved", None),
    }


@hydra.main(config_path=".", config_name="ppo_minigrid_distill", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    summary = train(cfg, out_dir)
    print("\n=== run summary ===")
    print(f"{cfg.algo} + teacher={cfg.teacher} on {cfg.env.name}: {summary['frames']} frames, SPS {summary['sps']:.0f}")
    solved = "never" if summary["solved_at"] is None else f"at {summary['solved_at']} frames"
    print(f"final eval success {summary['final_success']:.2f}; success >= {cfg.eval.solved_success} {solved}")
    print(describe_logs(cfg, out_dir))
    if summary["checkpoint"] is not None:
        print(f"checkpoint: {summary['checkpoint']} (resume with checkpoint.resume=<that folder>)")


if __name__ == "__main__":
    main()
