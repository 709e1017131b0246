"""What one SAC gradient step costs on a CPU, against a plain-PyTorch SAC, and what the cheap wins buy.

At the recipes' network size (256×256 MLPs, batch 256) a CPU update is mostly
per-op and per-tensor overhead, not arithmetic. This times one update of
``recipes/sac.py`` (``sac.update``: TorchRL's ``SACLoss``, critics, actor and temperature
from one backward, then the soft target update) on a fixed batch of real transitions
(``--family dmc``: ball_in_cup-catch; ``ogbench``: scene task 3), in alternating rounds
in one process, for:

- ``cleanrl``: the same networks, batch and work in plain PyTorch, written as CleanRL's
  ``sac_continuous_action.py`` writes it (:class:`PlainSAC`: separate critic, actor and
  temperature losses, three Adams, a parameter loop for the soft update; the actor
  updated every step, as the recipe does): what TorchRL's objects cost over the minimum;
- ``three_adams``: the textbook TorchRL layout, one (unfused, for-each) Adam per part, as
  TorchRL's sota-implementations/sac writes it;
- ``recipe``: what the recipe runs, one fused Adam over the three parts
  (``torchrl_vlm.training.make_adam``);
- ``recipe_2_threads``: the same with two torch threads instead of one;
- ``compiled`` (with ``--compile``): ``torch.compile`` of the whole update.

Ratios are against ``cleanrl``. Two threads are timed in their own rounds
(the thread count is per process), so their ratio is against ``recipe`` timed
alongside. One command; it replaces the "SAC update cost" section of
benchmarks/RESULTS.md (``--no-record``: print only):

    python benchmarks/update_cost.py --compile
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import interleaved_medians, markdown_table, recipe, recipe_config, record_results  # noqa: E402
from torch import nn  # noqa: E402

from torchrl_vlm.training import remember_absent_pandas  # noqa: E402


class PlainSAC:
    """One SAC update in plain PyTorch, as CleanRL's ``sac_continuous_action.py`` writes it, on the recipe's
    network sizes: a tanh-Gaussian actor (softplus scale, as the recipe's), twin Q-networks with soft-updated
    targets, a learned temperature; the twin critics' loss, then the actor's, then the temperature's."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], lr: float, gamma: float, tau: float,
                 alpha_init: float, target_entropy: float):
        def mlp(n_in, n_out):
            layers, width = [], n_in
            for h in hidden:
                layers += [nn.Linear(width, h), nn.ReLU()]
                width = h
            return nn.Sequential(*layers, nn.Linear(width, n_out))

        self.actor = mlp(obs_dim, 2 * act_dim)
        self.qf1, self.qf2 = mlp(obs_dim + act_dim, 1), mlp(obs_dim + act_dim, 1)
        self.qf1_target, self.qf2_target = mlp(obs_dim + act_dim, 1), mlp(obs_dim + act_dim, 1)
        self.qf1_target.load_state_dict(self.qf1.state_dict())
        self.qf2_target.load_state_dict(self.qf2.state_dict())
        self.log_alpha = torch.tensor(float(alpha_init)).log().requires_grad_()
        self.q_optimizer = torch.optim.Adam([*self.qf1.parameters(), *self.qf2.parameters()], lr=lr)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=lr)
        self.a_optimizer = torch.optim.Adam([self.log_alpha], lr=lr)
        self.gamma, self.tau, self.target_entropy = gamma, tau, target_entropy

    def get_action(self, obs):
        loc, scale = self.actor(obs).chunk(2, -1)
        normal = torch.distributions.Normal(loc, F.softplus(scale) + 0.1)
        x = normal.rsample()
        action = torch.tanh(x)
        log_prob = (normal.log_prob(x) - torch.log(1 - action.pow(2) + 1e-6)).sum(-1, keepdim=True)
        return action, log_prob

    def update(self, obs, actions, rewards, next_obs, dones):
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            next_actions, next_log_pi = self.get_action(next_obs)
            target_in = torch.cat([next_obs, next_actions], -1)
            min_next = torch.min(self.qf1_target(target_in), self.qf2_target(target_in)) - alpha * next_log_pi
            next_q = rewards + (1 - dones) * self.gamma * min_next
        q_in = torch.cat([obs, actions], -1)
        qf_loss = F.mse_loss(self.qf1(q_in), next_q) + F.mse_loss(self.qf2(q_in), next_q)
        self.q_optimizer.zero_grad()
        qf_loss.backward()
        self.q_optimizer.step()

        pi, log_pi = self.get_action(obs)
        pi_in = torch.cat([obs, pi], -1)
        actor_loss = (alpha * log_pi - torch.min(self.qf1(pi_in), self.qf2(pi_in))).mean()
        self.actor_optimizer.zero_grad()
        actor_loss.backward()
        self.actor_optimizer.step()

        with torch.no_grad():
            _, log_pi = self.get_action(obs)
        alpha_loss = (-self.log_alpha.exp() * (log_pi + self.target_entropy)).mean()
        self.a_optimizer.zero_grad()
        alpha_loss.backward()
        self.a_optimizer.step()

        with torch.no_grad():
            for net, target in ((self.qf1, self.qf1_target), (self.qf2, self.qf2_target)):
                for param, target_param in zip(net.parameters(), target.parameters(), strict=True):
                    target_param.data.copy_(self.tau * param.data + (1 - self.tau) * target_param.data)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="dmc", choices=["dmc", "ogbench"], help="whose transitions and settings")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=50, help="timed updates per variant and round")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the update")
    parser.add_argument("--note", default="", help="a sentence on the conditions, added to the section")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    remember_absent_pandas()  # as the recipe does (seed_everything): tensordict's per-call find_spec otherwise
    sac = recipe("sac")
    utils = recipe("utils_actor_critic")
    cfg = recipe_config("sac", ["env.num_envs=1", f"env.family={args.family}"])
    env = utils.make_env(cfg, 1, False, 0)
    torch.manual_seed(0)
    batch = env.rollout(cfg.buffer.batch_size, break_when_any_done=False).reshape(-1).clone()
    act_dim = batch["action"].shape[-1]
    plain = PlainSAC(batch["observation"].shape[-1], act_dim, list(cfg.network.hidden), cfg.optim.lr,
                     cfg.loss.gamma, cfg.loss.tau, cfg.loss.alpha_init, -cfg.loss.target_entropy_scale * act_dim)
    tensors = (batch["observation"], batch["action"], batch["next", "reward"], batch["next", "observation"],
               batch["next", "terminated"].float())

    def build(layout: str):
        torch.manual_seed(0)
        loss_module, target_updater, optimizers = sac.make_loss(cfg, env)
        optimizer = optimizers["adam"]
        if layout == "three_adams":
            adams = [torch.optim.Adam(group["params"], lr=cfg.optim.lr) for group in optimizer.param_groups]

            class Three:  # the three optimisers behind the one-optimiser interface update() takes
                def zero_grad(self, set_to_none=True):
                    for adam in adams:
                        adam.zero_grad(set_to_none=set_to_none)

                def step(self):
                    for adam in adams:
                        adam.step()

            optimizer = Three()
        return lambda: sac.update(batch, loss_module, optimizer, target_updater)

    variants = {"cleanrl": lambda: plain.update(*tensors), "three_adams": build("three_adams"),
                "recipe": build("recipe")}
    compile_s = None
    if args.compile:
        loss_module, target_updater, optimizers = sac.make_loss(cfg, env)
        compiled = torch.compile(sac.update)
        t0 = time.perf_counter()
        for _ in range(3):  # the first calls compile (forward, backward, optimiser step)
            compiled(batch, loss_module, optimizers["adam"], target_updater)
        compile_s = time.perf_counter() - t0
        variants["compiled"] = lambda: compiled(batch, loss_module, optimizers["adam"], target_updater)

    torch.set_num_threads(1)
    one = interleaved_medians(variants, args.rounds, args.per_round)
    threads = {}
    for _ in range(args.rounds):  # one thread and two, alternating, on the recipe's update
        for n in (1, 2):
            torch.set_num_threads(n)
            threads.setdefault(n, []).append(interleaved_medians({"recipe": variants["recipe"]}, 1,
                                                                 args.per_round)["recipe"])
    torch.set_num_threads(1)
    two_ratio = float(torch.tensor(threads[2]).median() / torch.tensor(threads[1]).median())

    base = one["cleanrl"]
    rows = [[name, f"{seconds * 1e3:.1f}", f"{seconds / base:.2f}"] for name, seconds in one.items()]
    rows.append(["recipe_2_threads", f"{one['recipe'] * two_ratio * 1e3:.1f}",
                 f"{one['recipe'] * two_ratio / base:.2f} ({two_ratio:.2f} of 1 thread)"])
    table = markdown_table(["variant", "ms per update (median)", "vs cleanrl"], rows)
    body = (
        f"One SAC update of recipes/sac.py with `env.family={args.family}` (batch {cfg.buffer.batch_size}, "
        f"{'×'.join(map(str, cfg.network.hidden))} actor and twin critics, one torch thread unless named), "
        f"{args.rounds} alternating rounds of {args.per_round} updates.\n\n{table}\n"
        + (f"\n`torch.compile` took {compile_s:.0f} s to compile before its first update.\n" if compile_s else "")
        + (f"\n{args.note}\n" if args.note else "")
    )
    print(body)
    if not args.no_record:
        record_results("SAC update cost", body)


if __name__ == "__main__":
    main()
