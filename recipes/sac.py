"""SAC with uniform, PER or VLM-RB replay (TD boosting), on DMControl or OGBench (``env.family``).

The agent learns from the state. With ``buffer.sampler=vlm`` the replay buffer is a
:class:`~torchrl_vlm.VLMReplayBuffer` whose :class:`~torchrl_vlm.MixtureSampler` draws
q_t = λ_t·q_P + (1 − λ_t)·q_U with TD boosting, q_P(i) ∝ p_VLM(i)·(|δ_i| + ε) (VLM-RB's
continuous-control variant): the VLM's verdicts say which clips matter, the TD errors
which of their transitions the critic still gets wrong. ``vlm.scorer=events`` is the
ideal VLM, reading the simulator's goal (DMControl) or subgoals (OGBench).

With ``covr.prior=covr`` (or ``frozen``, the paper's DPL) it is COVR: a VLM writes an action for each frame
(:class:`~torchrl_vlm.covr.ActionPrior`, in its own process), the actor's loss gains λ‖a_v − a_r‖²
(:class:`~torchrl_vlm.covr.COVRSACLoss`), and the VLM is fine-tuned with LoRA on the agent's EDDF-filtered,
RALW-weighted experience on the progressive schedule (:class:`~torchrl_vlm.covr.FineTuning`).

The loop (``utils_actor_critic.train``, shared with ``td3.py``): collect → extend → sample →
one update of critics, actor and temperature (:func:`update`) → soft target update → priorities → log.

    python recipes/sac.py                                                  # VLM-RB on DMControl ball_in_cup-catch
    python recipes/sac.py buffer.sampler=uniform env.name=cartpole-swingup_sparse   # the UER baseline
    MUJOCO_GL=egl python recipes/sac.py env.family=ogbench                 # OGBench scene task 3, OGBench's settings
    python recipes/sac.py env.name=cartpole-swingup buffer.sampler=uniform covr.prior=covr covr.model=<VLM folder>
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
import utils_actor_critic
from omegaconf import DictConfig
from tensordict import TensorDictBase
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torchrl.envs import ExplorationType
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import SACLoss, SoftUpdate
from utils_actor_critic import SHARED_RANGES, Algorithm, print_summary

from torchrl_vlm.covr import COVRSACLoss
from torchrl_vlm.training import Range, make_adam

__all__ = ["RANGES", "check_config", "make_actor_critic", "make_algorithm", "train", "update"]

#: What each numeric key of sac.yaml allows (with training.COMMON_RANGES); tests check the YAML against it.
RANGES = {
    **SHARED_RANGES,
    "loss.alpha_init": Range("float", 0, open_low=True),
    "loss.target_entropy_scale": Range("float", 0),
    "agent.from_pixels": Range("bool"),
    "agent.frame_stack": Range("int", 1),
    "agent.shift_pad": Range("int", 0),
    "agent.encoder_features": Range("int", 1),
    "covr.coeff": Range("float", 0),
    "covr.max_new_tokens": Range("int", 1),
    "covr.image_size": Range("int", 8, nullable=True),
    "covr.batch_size": Range("int", 1),
    "covr.prior_lag": Range("int", 0, nullable=True),
    "covr.finetune_lag": Range("int", 0),
    "covr.psi0": Range("int", 1),
    "covr.entropy_sign": Range("float", -1, 1),
    "covr.df_capacity": Range("int", 1),
    "covr.min_keep_fraction": Range("float", 0, 1),
    "covr.min_samples": Range("int", 1),
    "covr.lora_rank": Range("int", 1),
    "covr.lora_alpha": Range("float", 0, open_low=True),
    "covr.lora_dropout": Range("float", 0, 1),
    "covr.lr": Range("float", 0, open_low=True),
    "covr.epochs": Range("int", 1),
    "covr.finetune_batch_size": Range("int", 1),
    "covr.max_steps": Range("int", 1, nullable=True),
    "covr.label_smoothing": Range("float", 0, 1),
    "covr.num_threads": Range("int", 1),
    "covr.start_timeout_s": Range("float", 0, open_low=True),
    "covr.hang_timeout_s": Range("float", 0, open_low=True),
}

#: COVR's choices (``covr.prior``, ``covr.filter``, ``covr.weighting``).
PRIORS = ("none", "covr", "frozen")


def check_config(cfg: DictConfig) -> None:
    """Refuses a bad configuration before anything is built, naming the key and the choices."""
    utils_actor_critic.check_config(cfg, RANGES, Path(__file__).with_name("sac.yaml"))
    from torchrl_vlm.covr.finetuning import FILTERS, WEIGHTINGS

    c = cfg.covr
    for key, value, choices in (("prior", c.prior, PRIORS), ("filter", c.filter, FILTERS),
                                ("weighting", c.weighting, WEIGHTINGS)):
        if value not in choices:
            raise ValueError(f"covr.{key}={value!r}; choose one of {choices}")
    if c.entropy_sign not in (1.0, -1.0):
        raise ValueError(f"covr.entropy_sign={c.entropy_sign}; choose 1.0 (eq. 5 as printed) or -1.0 (its intent)")
    if c.prompt is not None:
        from torchrl_vlm.covr.prior import check_prompt

        check_prompt(c.prompt)
    if c.prior != "none" and cfg.buffer.sampler == "vlm":
        raise ValueError("covr.prior and buffer.sampler=vlm each need their own replay buffer; COVR runs with "
                         "buffer.sampler=uniform (the paper's) or per")


class PixelEncoder(torch.nn.Module):
    """RAD's (and SAC-AE's) encoder: uint8 frames ``[*, H, W, 3·k]`` → 4 conv layers of 32 channels (the first
    with stride 2) → ``features`` with LayerNorm and tanh."""

    def __init__(self, channels: int, features: int = 50):
        super().__init__()
        self.convs = torch.nn.Sequential(
            torch.nn.Conv2d(channels, 32, 3, stride=2), torch.nn.ReLU(),
            *[m for _ in range(3) for m in (torch.nn.Conv2d(32, 32, 3, stride=1), torch.nn.ReLU())],
        )
        self.head = torch.nn.Sequential(torch.nn.LazyLinear(features), torch.nn.LayerNorm(features), torch.nn.Tanh())

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        lead = frames.shape[:-3]
        x = frames.reshape(-1, *frames.shape[-3:]).permute(0, 3, 1, 2).float() / 255.0
        return self.head(self.convs(x).flatten(1)).reshape(*lead, -1)


class PixelQValue(torch.nn.Module):
    """Q(frames, action): a :class:`PixelEncoder`, then an MLP on (features, action)."""

    def __init__(self, channels: int, features: int, hidden: list[int]):
        super().__init__()
        self.encoder = PixelEncoder(channels, features)
        self.mlp = MLP(out_features=1, num_cells=hidden, activation_class=torch.nn.ReLU)

    def forward(self, frames: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([self.encoder(frames), action], -1))


def random_shift(frames: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """RAD's random shift (the "translate" crop of DrQ): pad each frame by ``pad`` pixels, repeating its edge, and
    crop it back at a random offset, each frame its own. ``frames``: uint8 ``[B, H, W, C]``."""
    if pad == 0:
        return frames
    b, h, w, _ = frames.shape
    padded = torch.nn.functional.pad(frames.permute(0, 3, 1, 2).float(), (pad,) * 4, mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None]  # [B, 1, H, 1]
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :]  # [B, 1, 1, W]
    out = padded[torch.arange(b)[:, None, None, None], torch.arange(padded.shape[1])[None, :, None, None], rows, cols]
    return out.permute(0, 2, 3, 1).to(frames.dtype)


def make_actor_critic(cfg: DictConfig, env) -> tuple[ProbabilisticActor, ValueOperator]:
    """A tanh-Gaussian actor and a Q-network on (observation, action), MLPs of ``network.hidden``; with
    ``agent.from_pixels`` each reads ``pixels_observation`` through a :class:`PixelEncoder` of its own (RAD shares
    the critic's encoder with the actor; TorchRL's SACLoss keeps their parameters apart, so here each has one)."""
    action_spec = env.full_action_spec_unbatched["action"]
    n_act = action_spec.shape[-1]
    hidden = list(cfg.network.hidden)
    pixels = cfg.agent.from_pixels
    obs_key = "pixels_observation" if pixels else "observation"
    channels = 3 * cfg.agent.frame_stack
    actor_net = torch.nn.Sequential(
        *([PixelEncoder(channels, cfg.agent.encoder_features)] if pixels else []),
        MLP(out_features=2 * n_act, num_cells=hidden, activation_class=torch.nn.ReLU),
        NormalParamExtractor(scale_mapping="biased_softplus_1.0", scale_lb=0.1),
    )
    actor = ProbabilisticActor(
        TensorDictModule(actor_net, in_keys=[obs_key], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=action_spec,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": action_spec.space.low, "high": action_spec.space.high, "tanh_loc": False},
        default_interaction_type=ExplorationType.RANDOM,
        return_log_prob=False,
    )
    if pixels:
        qvalue = ValueOperator(PixelQValue(channels, cfg.agent.encoder_features, hidden),
                               in_keys=["pixels_observation", "action"])
    else:
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
    # COVR: SACLoss plus loss_prior = λ‖a_v − a_r‖² (eq. 4); without a prior, TorchRL's SACLoss as it is.
    loss_class, extra = (SACLoss, {}) if cfg.covr.prior == "none" else (COVRSACLoss, {"prior_coeff": cfg.covr.coeff})
    loss_module = loss_class(
        actor,
        qvalue,
        **extra,
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
    """One gradient step of critics, actor and temperature, then the soft target update; returns the losses.

    SACLoss writes each sampled transition's ``td_error`` into ``sample`` (for TD boosting and PER).
    """
    out = loss_module(sample)
    # SACLoss detaches what each loss must not train (the critics in the actor's loss, the actor in the
    # temperature's): one backward and one optimiser step serve the three.
    optimizer.zero_grad(set_to_none=True)
    sum(value for key, value in out.items() if key.startswith("loss_")).backward()
    optimizer.step()
    target_updater.step()
    return out


def make_algorithm(cfg: DictConfig, env) -> Algorithm:
    """SAC for :func:`utils_actor_critic.train`: the actor explores by sampling; evaluation takes its mode."""
    loss_module, target_updater, optimizers = make_loss(cfg, env)
    actor = loss_module.actor_network  # its parameters are the ones the optimiser trains

    def step(sample: TensorDictBase, updates: int) -> dict[str, float]:
        if cfg.agent.from_pixels:  # RAD: each frame of the batch shifted at random, the next ones too
            for key in ("pixels_observation", ("next", "pixels_observation")):
                sample.set(key, random_shift(sample.get(key), cfg.agent.shift_pad))
        out = update(sample, loss_module, optimizers["adam"], target_updater)
        return {key: float(value.detach()) for key, value in out.items()
                if key.startswith("loss_") or key in ("alpha", "entropy", "prior_valid_fraction")}

    return Algorithm("SAC", loss_module, optimizers, actor=actor, explore=actor, update=step)


def train(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Runs one training run; returns a summary of plain numbers (and paths as strings)."""
    return utils_actor_critic.train(cfg, out_dir, make_algorithm, check_config)


@hydra.main(config_path=".", config_name="sac", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    print_summary(cfg, train(cfg, Path(HydraConfig.get().runtime.output_dir)))


if __name__ == "__main__":
    main()
