"""What one IQN gradient step costs against DQN's, by number of sampled quantile levels.

IQN evaluates its head once per sampled level ``τ``: ``N`` online levels (with gradients),
``K`` to choose the next action and ``N'`` target levels, per transition. Double DQN evaluates
its MLP three times (online, the next action's choice, the target). This times
``dqn_minigrid.update`` (loss, backward, gradient clip, Adam step, target counter), the exact
step the recipe's loop runs, on one fixed replay batch of DoorKey-8x8 transitions (random
actions through the recipe's uniform buffer: 3-step returns, batch 128), in alternating rounds
in one process, one torch thread, for DQN and for IQN at the IQN paper's settings
(N = N' = 64, K = 32) and at fewer levels. A second table
times the quantile Huber loss alone (forward and backward, [128, 64, 64] errors) with its
written-out gradient and through autograd, the cheap win it is.

One command; it replaces the "IQN update cost" section of benchmarks/RESULTS.md
(``--no-record``: print only):

    python benchmarks/iqn_update_cost.py [--rounds 6] [--per-round 30]
"""
from __future__ import annotations

import argparse

import torch
from common import interleaved_medians, markdown_table, recipe, recipe_config, record_results
from torchrl.collectors import Collector
from torchrl.objectives import HardUpdate

from torchrl_vlm.objectives import iqn
from torchrl_vlm.training import make_adam

#: (name, overrides): DQN, then IQN from the paper's sample counts down.
VARIANTS = [
    ("dqn", ["algo=dqn"]),
    ("iqn N=N'=64 K=32 (paper)", ["algo=iqn"]),
    ("iqn N=N'=32 K=32", ["algo=iqn", "iqn.num_quantiles=32", "iqn.num_target_quantiles=32"]),
    ("iqn N=N'=16 K=16", ["algo=iqn", "iqn.num_quantiles=16", "iqn.num_target_quantiles=16",
                          "iqn.num_policy_quantiles=16"]),
    ("iqn N=N'=8 K=32", ["algo=iqn", "iqn.num_quantiles=8", "iqn.num_target_quantiles=8"]),
    ("iqn N=N'=8 K=8", ["algo=iqn", "iqn.num_quantiles=8", "iqn.num_target_quantiles=8",
                        "iqn.num_policy_quantiles=8"]),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=30, help="timed updates per variant and round")
    parser.add_argument("--note", default="", help="a sentence on the conditions, added to the section")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    dqn = recipe("dqn_minigrid")
    base = ["buffer.sampler=uniform", "logger.backend=", "logger.progress=false"]
    cfg = recipe_config("dqn_minigrid", base)
    torch.manual_seed(0)
    env = dqn.make_env(cfg, cfg.env.num_envs, False, 0)
    collector = Collector(env, None, frames_per_batch=1024, total_frames=1024)  # random actions
    rb = dqn.make_buffer(cfg)
    for batch in collector:
        rb.extend(batch)
    collector.shutdown()
    sample = rb.sample()

    steps = {}
    for name, overrides in VARIANTS:
        vcfg = recipe_config("dqn_minigrid", base + overrides)
        torch.manual_seed(0)
        q_net = dqn.make_q_network(vcfg, env)
        loss_module = dqn.make_loss(vcfg, q_net)
        target_updater = HardUpdate(loss_module, value_network_update_interval=250)
        optimizer = make_adam(loss_module.parameters(), vcfg.optim.lr)
        steps[name] = (lambda s=sample, lm=loss_module, o=optimizer, t=target_updater, g=vcfg.optim.max_grad_norm:
                       dqn.update(s.clone(), lm, o, t, g))
    env.close()

    torch.set_num_threads(1)
    medians = interleaved_medians(steps, args.rounds, args.per_round)
    torch.manual_seed(0)
    online = torch.randn(cfg.buffer.batch_size, 64, requires_grad=True)
    target, taus = torch.randn(cfg.buffer.batch_size, 64), torch.rand(cfg.buffer.batch_size, 64)

    def loss_step(fn):
        fn(target.unsqueeze(-2) - online.unsqueeze(-1), taus).sum().backward()

    loss_alone = interleaved_medians({"written-out gradient": lambda: loss_step(iqn.quantile_huber_loss),
                                      "autograd": lambda: loss_step(iqn.quantile_huber_loss_autograd)},
                                     args.rounds, args.per_round)
    ref = medians["dqn"]
    rows = [[name, f"{seconds * 1e3:.1f}", f"{seconds / ref:.1f}"] for name, seconds in medians.items()]
    table = markdown_table(["variant", "ms per update (median)", "vs DQN"], rows)
    ref_loss = loss_alone["autograd"]
    loss_table = markdown_table(["quantile Huber loss, N = N' = 64", "ms (median)", "vs autograd"],
                                [[k, f"{v * 1e3:.1f}", f"{v / ref_loss:.2f}"] for k, v in loss_alone.items()])
    body = (
        f"One gradient step of recipes/dqn_minigrid.py (`update`: loss, backward, clip, Adam, target counter) "
        f"on one DoorKey-8x8 replay batch of {cfg.buffer.batch_size} (3-step returns), "
        f"{'x'.join(map(str, cfg.network.hidden))} hidden layers (IQN: the state torso, then the cosine "
        f"embedding's product and a head of the same width), one torch thread, {args.rounds} alternating rounds "
        f"of {args.per_round} updates.\n\n{table}\n\n{loss_table}\n"
        + (f"\n{args.note}\n" if args.note else "")
    )
    print(body)
    if not args.no_record:
        record_results("IQN update cost", body)


if __name__ == "__main__":
    main()
