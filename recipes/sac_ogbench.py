"""SAC on OGBench's scene tasks with uniform, PER or VLM-RB replay (TD boosting).

The agent learns from the 40-d state. With ``buffer.sampler=vlm`` the replay buffer is a
:class:`~torchrl_vlm.VLMReplayBuffer` whose :class:`~torchrl_vlm.MixtureSampler` draws
q_t = λ_t·q_P + (1 − λ_t)·q_U with TD boosting, q_P(i) ∝ p_VLM(i)·(|δ_i| + ε) (VLM-RB's
continuous-control variant): the VLM's verdicts say which clips matter, the TD errors
which of their transitions the critic still gets wrong. ``vlm.scorer=events`` is the
ideal VLM, reading the simulator's subgoals.

The loop, written out as in TorchRL's sota-implementations/sac: collect → extend → sample →
loss → optimise (critics, actor, temperature) → soft target update → priorities → log.

    python recipes/sac_ogbench.py                               # VLM-RB, ideal scorer, scene task 3
    python recipes/sac_ogbench.py buffer.sampler=uniform        # the UER baseline
    python recipes/sac_ogbench.py buffer.sampler=per            # the PER baseline
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
from tensordict import TensorDictBase
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torchrl._utils import timeit
from torchrl.collectors import Collector
from torchrl.envs import ExplorationType
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import SACLoss, SoftUpdate

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

__all__ = ["RANGES", "check_config", "make_actor_critic", "make_loss", "train", "update"]

#: What each numeric key of sac_ogbench.yaml allows (with training.COMMON_RANGES); tests check the YAML against it.
RANGES = {
    **SHARED_RANGES,
    "loss.alpha_init": Range("float", 0, open_low=True),
    "loss.target_entropy_scale": Range("float", 0),
}


def check_config(cfg: DictConfig) -> None:
    """Refuses a bad configuration before anything is built, naming the key and the choices."""
    utils_ogbench.check_config(cfg, RANGES)


#: Settings a resumed run must share with its checkpoint.
RESUME_MUST_MATCH = ("env.name", "env.num_envs", "buffer", "network", "loss.gamma", "vlm.clip_len", "vlm.score_lag")


def make_actor_critic(cfg: DictConfig, env) -> tuple[ProbabilisticActor, ValueOperator]:
    """A tanh-Gaussian actor and a Q-network on (observation, action), MLPs of ``network.hidden``."""
    action_spec = env.full_action_spec_unbatched["action"]
    n_act = action_spec.shape[-1]
    hidden = list(cfg.network.hidden)
    actor_net = torch.nn.Sequential(
        MLP(out_features=2 * n_act, num_cells=hidden, activation_class=torch.nn.ReLU),
        NormalParamExtractor(scale_mapping="biased_softplus_1.0", scale_lb=0.1),
    )
    actor = ProbabilisticActor(
        TensorDictModule(actor_net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=action_spec,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": action_spec.space.low, "high": action_spec.space.high, "tanh_loc": False},
        default_interaction_type=ExplorationType.RANDOM,
        return_log_prob=False,
    )
    qvalue = ValueOperator(
        MLP(out_features=1, num_cells=hidden, activation_class=torch.nn.ReLU), in_keys=["action", "observation"]
    )
    with torch.no_grad():  # the MLPs are lazy: one pass sizes them
        td = env.fake_tensordict()
        actor(td)
        qvalue(td)
    return actor.to(cfg.device), qvalue.to(cfg.device)


def make_loss(cfg: DictConfig, env) -> tuple[SACLoss, SoftUpdate, dict[str, torch.optim.Optimizer]]:
    """TorchRL's SACLoss (twin critics with soft-updated targets, learned temperature), its target updater,
    and one fused Adam over actor, critics and temperature (``{"adam": ...}``, as checkpoints keep it)."""
    actor, qvalue = make_actor_critic(cfg, env)
    n_act = env.full_action_spec_unbatched["action"].shape[-1]
    loss_module = SACLoss(
        actor,
        qvalue,
        num_qvalue_nets=2,
        loss_function="l2",
        delay_actor=False,
        delay_qvalue=True,
        alpha_init=cfg.loss.alpha_init,
        target_entropy=-cfg.loss.target_entropy_scale * n_act,
    )
    loss_module.make_value_estimator(gamma=cfg.loss.gamma)
    groups = [
        {"params": list(loss_module.actor_network_params.flatten_keys().values())},
        {"params": list(loss_module.qvalue_network_params.flatten_keys().values())},
        {"params": [loss_module.log_alpha]},
    ]
    return loss_module, SoftUpdate(loss_module, tau=cfg.loss.tau), {"adam": make_adam(groups, cfg.optim.lr)}


def update(sample: TensorDictBase, loss_module: SACLoss, optimizer: torch.optim.Optimizer,
           target_updater: SoftUpdate) -> TensorDictBase:
    """One gradient step of critics, actor and temperature, then the soft target update; returns the losses."""
    out = loss_module(sample)
    # SACLoss detaches what each loss must not train (the critics in the actor's loss, the actor in the
    # temperature's): one backward and one optimiser step serve the three.
    optimizer.zero_grad(set_to_none=True)
    (out["loss_qvalue"] + out["loss_actor"] + out["loss_alpha"]).backward()
    optimizer.step()
    target_updater.step()
    return out


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
        loss_module, target_updater, optimizers = make_loss(cfg, env)
        actor = loss_module.actor_network  # its parameters are the ones the optimiser trains
        rb = make_buffer(cfg)
        if state is not None:
            evals = restore_run(state, cfg, loss_module=loss_module, optimizers=optimizers, env=env, rb=rb)
            print(f"resumed from {cfg.checkpoint.resume} at {collected} frames")
        start_frames = collected

        collector = Collector(
            env,
            actor,
            frames_per_batch=cfg.collector.frames_per_batch,
            total_frames=total_frames - collected,
            init_random_frames=max(0, cfg.collector.init_random_frames - collected),
            device=cfg.device,
            auto_register_policy_transforms=False,
        )
        logger = make_logger(
            cfg.logger.backend,
            algo="SAC",
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
                            out = update(sample, loss_module, optimizers["adam"], target_updater)
                            updates += 1
                        with timeit("priorities"):
                            # TD boosting: each sampled transition's |δ|; PER: its priority; else nothing.
                            rb.update_tensordict_priority(sample)
                        for key in ("loss_qvalue", "loss_actor", "loss_alpha", "alpha", "entropy"):
                            logs.setdefault(key, []).append(float(out[key].detach()))
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


@hydra.main(config_path=".", config_name="sac_ogbench", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    summary = train(cfg, Path(HydraConfig.get().runtime.output_dir))
    print("\n=== run summary ===")
    print(f"SAC + {cfg.buffer.sampler} on {cfg.env.name}: {summary['frames']} frames, {summary['updates']} updates, "
          f"SPS {summary['sps']:.0f}; final eval success {summary['final_success']:.2f}")
    if summary["checkpoint"] is not None:
        print(f"checkpoint: {summary['checkpoint']} (resume with checkpoint.resume=<that folder>)")


if __name__ == "__main__":
    main()
