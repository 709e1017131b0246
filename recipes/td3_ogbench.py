"""TD3 on OGBench's scene tasks with uniform, PER or VLM-RB replay (TD boosting).

The agent learns from the 40-d state. With ``buffer.sampler=vlm`` the replay buffer is a
:class:`~torchrl_vlm.VLMReplayBuffer` whose :class:`~torchrl_vlm.MixtureSampler` draws
q_t = λ_t·q_P + (1 − λ_t)·q_U with TD boosting, q_P(i) ∝ p_VLM(i)·(|δ_i| + ε) (VLM-RB's
continuous-control variant): the VLM's verdicts say which clips matter, the TD errors
which of their transitions the critic still gets wrong. ``vlm.scorer=events`` is the
ideal VLM, reading the simulator's subgoals.

The loop, written out as in TorchRL's sota-implementations/td3: collect (deterministic actor plus
Gaussian exploration noise) → extend → sample → critic loss → optimise; every ``loss.policy_delay``
updates also the actor loss and the soft target update → priorities → log.

    python recipes/td3_ogbench.py                               # VLM-RB, ideal scorer, scene task 3
    python recipes/td3_ogbench.py buffer.sampler=uniform        # the UER baseline
    python recipes/td3_ogbench.py buffer.sampler=per            # the PER baseline
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import tqdm
from omegaconf import DictConfig, OmegaConf
from tensordict.nn import TensorDictModule, TensorDictSequential
from torchrl._utils import timeit
from torchrl.collectors import Collector
from torchrl.modules import MLP, AdditiveGaussianModule, TanhModule, ValueOperator
from torchrl.objectives import SoftUpdate, TD3Loss

import utils_ogbench
from utils_ogbench import (
    SHARED_RANGES, evaluate, make_buffer, make_env, restore_run, save_run, wants_frames,
)
from torchrl_vlm.training import (
    EpisodeMetrics,
    Every,
    Range,
    StopRequest,
    check_resumable,
    close_all,
    load_checkpoint,
    log_metrics,
    make_adam,
    make_logger,
    phase_seconds,
    seed_everything,
    timed_batches,
)

__all__ = ["RANGES", "check_config", "make_actor_critic", "train"]

#: What each numeric key of td3_ogbench.yaml allows (with training.COMMON_RANGES); tests check the YAML against it.
RANGES = {
    **SHARED_RANGES,
    "loss.policy_noise": Range("float", 0),
    "loss.noise_clip": Range("float", 0),
    "loss.policy_delay": Range("int", 1),
    "exploration.sigma": Range("float", 0),
}


def check_config(cfg: DictConfig) -> None:
    """Refuses a bad configuration before anything is built, naming the key and the choices."""
    utils_ogbench.check_config(cfg, RANGES)


#: Settings a resumed run must share with its checkpoint.
RESUME_MUST_MATCH = ("env.name", "env.num_envs", "buffer", "network", "loss.gamma", "vlm.clip_len", "vlm.score_lag")


def make_actor_critic(cfg: DictConfig, env) -> tuple[TensorDictSequential, ValueOperator]:
    """A deterministic tanh actor and a Q-network on (observation, action), MLPs of ``network.hidden``."""
    action_spec = env.full_action_spec_unbatched["action"]
    hidden = list(cfg.network.hidden)
    actor = TensorDictSequential(
        TensorDictModule(
            MLP(out_features=action_spec.shape[-1], num_cells=hidden, activation_class=torch.nn.ReLU),
            in_keys=["observation"],
            out_keys=["param"],
        ),
        TanhModule(in_keys=["param"], out_keys=["action"], spec=action_spec),
    )
    qvalue = ValueOperator(
        MLP(out_features=1, num_cells=hidden, activation_class=torch.nn.ReLU), in_keys=["action", "observation"]
    )
    with torch.no_grad():  # the MLPs are lazy: one pass sizes them
        td = env.fake_tensordict()
        actor(td)
        qvalue(td)
    return actor.to(cfg.device), qvalue.to(cfg.device)


def train(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Runs one training run; returns a summary of plain numbers (and paths as strings)."""
    check_config(cfg)
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
            check_resumable(state["config"], cfg, RESUME_MUST_MATCH)
            collected, updates = state["collected_frames"], state["updates"]
            if total_frames <= collected:
                raise ValueError(
                    f"nothing to do: the checkpoint is at {collected} frames, collector.total_frames={total_frames}"
                )
        env = make_env(cfg, cfg.env.num_envs, render, cfg.env.seed)
        eval_env = make_env(cfg, cfg.eval.episodes, False, cfg.env.seed + 10_000)
        actor, qvalue = make_actor_critic(cfg, env)
        action_spec = env.full_action_spec_unbatched["action"]
        # Collection explores with Gaussian noise on the deterministic action; evaluation does not.
        explore = TensorDictSequential(
            actor,
            AdditiveGaussianModule(action_spec, sigma_init=cfg.exploration.sigma, sigma_end=cfg.exploration.sigma),
        )
        loss_module = TD3Loss(
            actor,
            qvalue,
            action_spec=action_spec,
            num_qvalue_nets=2,
            loss_function="l2",
            policy_noise=cfg.loss.policy_noise,
            noise_clip=cfg.loss.noise_clip,
            delay_actor=True,
            delay_qvalue=True,
        )
        loss_module.make_value_estimator(gamma=cfg.loss.gamma)
        target_updater = SoftUpdate(loss_module, tau=cfg.loss.tau)
        optimizers = {
            "actor": make_adam(loss_module.actor_network_params.flatten_keys().values(), cfg.optim.lr),
            "qvalue": make_adam(loss_module.qvalue_network_params.flatten_keys().values(), cfg.optim.lr),
        }
        rb = make_buffer(cfg)
        if state is not None:
            evals = restore_run(state, cfg, loss_module=loss_module, optimizers=optimizers, env=env, rb=rb)
            print(f"resumed from {cfg.checkpoint.resume} at {collected} frames")
        start_frames = collected

        collector = Collector(
            env,
            explore,
            frames_per_batch=cfg.collector.frames_per_batch,
            total_frames=total_frames - collected,
            init_random_frames=max(0, cfg.collector.init_random_frames - collected),
            device=cfg.device,
            auto_register_policy_transforms=False,
        )
        logger = make_logger(
            cfg.logger.backend,
            algo="TD3",
            exp_name=f"{cfg.logger.exp_name}_{cfg.buffer.sampler}",
            log_dir=out_dir / "logs",
            config=OmegaConf.to_container(cfg, resolve=True),
            project=cfg.logger.project,
            mode=cfg.logger.mode,
        )

        def checkpoint(folder: Path) -> None:
            save_run(folder, cfg, loss_module=loss_module, optimizers=optimizers, env=env, rb=rb,
                     collected=collected, updates=updates, evals=evals)

        eval_every = Every(cfg.eval.interval, collected)
        log_every = Every(cfg.logger.log_interval, collected)
        ckpt_every = Every(cfg.checkpoint.interval, collected)
        episodes = EpisodeMetrics()
        logs: dict[str, list[float]] = {}
        pbar = tqdm.tqdm(total=total_frames, initial=collected, disable=not cfg.logger.progress, unit="f")
        t_start = time.perf_counter()
        last_eval = {"success": float("nan")}
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
                            # TD3Loss's critic and actor terms each detach the other's networks.
                            q_loss, info = loss_module.value_loss(sample)
                            optimizers["qvalue"].zero_grad(set_to_none=True)
                            q_loss.backward()
                            optimizers["qvalue"].step()
                            updates += 1
                            if updates % cfg.loss.policy_delay == 0:  # delayed policy and target updates
                                actor_loss, _ = loss_module.actor_loss(sample)
                                optimizers["actor"].zero_grad(set_to_none=True)
                                actor_loss.backward()
                                optimizers["actor"].step()
                                target_updater.step()
                                logs.setdefault("loss_actor", []).append(float(actor_loss.detach()))
                            # TD3Loss reports (Q - y)² per critic; TD boosting weighs by |δ| of the worse one.
                            sample.set("td_error", info["td_error"].detach().max(0)[0].sqrt())
                        with timeit("priorities"):
                            # TD boosting: each sampled transition's |δ|; PER: its priority; else nothing.
                            rb.update_tensordict_priority(sample)
                        logs.setdefault("loss_qvalue", []).append(float(q_loss.detach()))
                    budget -= int(budget)
                collector.update_policy_weights_()
                sps = (collected - start_frames) / max(time.perf_counter() - t_start, 1e-9)
                pbar.update(n)
                if eval_every.due(collected):
                    with timeit("eval"):
                        last_eval = evaluate(eval_env, actor, logger, collected, evals)
                if log_every.due(collected) or collected >= total_frames or stop.requested:
                    metrics = episodes.pop()
                    metrics.update({f"train/{k}": float(np.mean(v)) for k, v in logs.items()})
                    metrics.update({"train/sps": sps, "train/updates": updates})
                    metrics.update({f"buffer/{k}": v for k, v in rb.stats().items()})
                    metrics.update(phase_seconds())
                    log_metrics(logger, metrics, collected)
                    logs.clear()
                pbar.set_postfix(success=f"{episodes.last_success:.2f}", eval=f"{last_eval['success']:.2f}",
                                 sps=f"{sps:.0f}")
                if ckpt_every.due(collected):
                    checkpoint(out_dir / "checkpoint")
                if stop.requested:  # Ctrl-C or SIGTERM: end as a finished run does
                    break

            loop_seconds = time.perf_counter() - t_start
            if not evals or evals[-1]["frames"] != collected:
                with timeit("eval"):
                    last_eval = evaluate(eval_env, actor, logger, collected, evals)
            if cfg.checkpoint.at_end:
                checkpoint(out_dir / "checkpoint")
            buffer_stats = rb.stats()
    finally:
        close_all(pbar, collector, env, eval_env, rb, logger)

    return {
        "frames": collected,
        "start_frames": start_frames,
        "updates": updates,
        "sps": (collected - start_frames) / max(loop_seconds, 1e-9),
        "final_success": last_eval["success"],
        "evals": evals,
        "buffer_stats": buffer_stats,
        "interrupted": stop.requested,
        "out_dir": str(out_dir),
        "checkpoint": str(out_dir / "checkpoint") if (out_dir / "checkpoint").exists() else None,
    }


@hydra.main(config_path=".", config_name="td3_ogbench", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    summary = train(cfg, Path(HydraConfig.get().runtime.output_dir))
    print("\n=== run summary ===")
    print(f"TD3 + {cfg.buffer.sampler} on {cfg.env.name}: {summary['frames']} frames, {summary['updates']} updates, "
          f"SPS {summary['sps']:.0f}; final eval success {summary['final_success']:.2f}")
    if summary["checkpoint"] is not None:
        print(f"checkpoint: {summary['checkpoint']} (resume with checkpoint.resume=<that folder>)")


if __name__ == "__main__":
    main()
