"""Greedy evaluation episodes: return and success."""
from __future__ import annotations

import torch
from tensordict.nn import TensorDictModuleBase
from torchrl.envs import EnvBase, ExplorationType, set_exploration_type


@torch.no_grad()
def evaluate_success(
    env: EnvBase,
    policy: TensorDictModuleBase,
    *,
    max_steps: int,
    exploration: ExplorationType = ExplorationType.DETERMINISTIC,
) -> dict[str, float]:
    """Runs one episode in each env of a batched ``env``; returns success rate, return and length.

    ``success`` is NaN for an env without a ``success`` entry (a task that has no goal).

    Also ``final_reward``: the mean reward of each episode's last step (on OGBench's
    scene tasks, minus the number of subgoals still unsatisfied at the end).

    ``exploration`` chooses greedy actions (``DETERMINISTIC``) or the policy's
    own exploration (``RANDOM``, e.g. an ε=0.05 module). Envs that finish early
    are reset and ignored; ``max_steps`` bounds the loop (the env's step limit).
    """
    n = max(1, env.batch_size.numel())
    has_success = "success" in env.full_observation_spec.keys()
    finished = torch.zeros(n, dtype=torch.bool)
    success = torch.zeros(n)
    returns = torch.zeros(n)
    lengths = torch.zeros(n)
    final_reward = torch.zeros(n)
    with set_exploration_type(exploration):
        td = env.reset()
        for _ in range(max_steps):
            td, td_next = env.step_and_maybe_reset(policy(td))
            nxt = td["next"]
            done = nxt["done"].reshape(n)
            new = done & ~finished
            if bool(new.any()):
                if has_success:
                    success[new] = nxt["success"].reshape(n).float()[new]
                returns[new] = nxt["episode_reward"].reshape(n)[new]
                lengths[new] = nxt["step_count"].reshape(n).float()[new]
                final_reward[new] = nxt["reward"].reshape(n).float()[new]
                finished |= done
            if bool(finished.all()):
                break
            td = td_next
    return {
        "success": float(success.mean()) if has_success else float("nan"),
        "return": float(returns.mean()),
        "episode_length": float(lengths[finished].mean()) if bool(finished.any()) else float("nan"),
        "finished": float(finished.float().mean()),
        "final_reward": float(final_reward.mean()),
    }
