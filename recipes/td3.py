"""TD3 with uniform, PER or VLM-RB replay (TD boosting), on DMControl or OGBench (``env.family``).

The same loop as ``sac.py`` (``utils_actor_critic.train``); what differs is TD3's own: a deterministic
tanh actor that explores with Gaussian noise, TorchRL's ``TD3Loss`` (twin critics, target policy
smoothing), and the delayed update: the critics every step, the actor and the targets every
``loss.policy_delay`` steps (:func:`make_algorithm`).

    python recipes/td3.py                                        # VLM-RB on DMControl ball_in_cup-catch
    python recipes/td3.py buffer.sampler=per env.name=cartpole-swingup_sparse
    MUJOCO_GL=egl python recipes/td3.py env.family=ogbench buffer.sampler=uniform
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
import utils_actor_critic
from omegaconf import DictConfig
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictSequential
from torchrl.modules import MLP, AdditiveGaussianModule, TanhModule, ValueOperator
from torchrl.objectives import SoftUpdate, TD3Loss
from utils_actor_critic import SHARED_RANGES, Algorithm, print_summary

from torchrl_vlm.training import Range, make_adam

__all__ = ["RANGES", "check_config", "make_actor_critic", "make_algorithm", "train"]

#: What each numeric key of td3.yaml allows (with training.COMMON_RANGES); tests check the YAML against it.
RANGES = {
    **SHARED_RANGES,
    "loss.policy_noise": Range("float", 0),
    "loss.noise_clip": Range("float", 0),
    "loss.policy_delay": Range("int", 1),
    "exploration.sigma": Range("float", 0),
}


def check_config(cfg: DictConfig) -> None:
    """Refuses a bad configuration before anything is built, naming the key and the choices."""
    utils_actor_critic.check_config(cfg, RANGES, Path(__file__).with_name("td3.yaml"))


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


def make_algorithm(cfg: DictConfig, env) -> Algorithm:
    """TD3 for :func:`utils_actor_critic.train`: Gaussian exploration noise on collection, none in evaluation;
    the critics every update, the actor and the soft target update every ``loss.policy_delay``-th."""
    actor, qvalue = make_actor_critic(cfg, env)
    action_spec = env.full_action_spec_unbatched["action"]
    explore = TensorDictSequential(
        actor, AdditiveGaussianModule(action_spec, sigma_init=cfg.exploration.sigma, sigma_end=cfg.exploration.sigma)
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

    def step(sample: TensorDictBase, updates: int) -> dict[str, float]:
        # TD3Loss's critic and actor terms each detach the other's networks.
        q_loss, info = loss_module.value_loss(sample)
        optimizers["qvalue"].zero_grad(set_to_none=True)
        q_loss.backward()
        optimizers["qvalue"].step()
        logs = {"loss_qvalue": float(q_loss.detach())}
        if (updates + 1) % cfg.loss.policy_delay == 0:  # delayed policy and target updates
            actor_loss, _ = loss_module.actor_loss(sample)
            optimizers["actor"].zero_grad(set_to_none=True)
            actor_loss.backward()
            optimizers["actor"].step()
            target_updater.step()
            logs["loss_actor"] = float(actor_loss.detach())
        # TD3Loss reports (Q - y)² per critic; TD boosting weighs by |δ| of the worse one.
        sample.set("td_error", info["td_error"].detach().max(0)[0].sqrt())
        return logs

    return Algorithm("TD3", loss_module, optimizers, actor=actor, explore=explore, update=step)


def train(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Runs one training run; returns a summary of plain numbers (and paths as strings)."""
    return utils_actor_critic.train(cfg, out_dir, make_algorithm, check_config)


@hydra.main(config_path=".", config_name="td3", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    print_summary(cfg, train(cfg, Path(HydraConfig.get().runtime.output_dir)))


if __name__ == "__main__":
    main()
