"""What one SAC gradient step costs on a CPU, and what the cheap wins buy.

At OGBench's network size (256×256 MLPs, batch 256) a CPU update is mostly
per-op and per-tensor overhead, not arithmetic. This times one update of
``recipes/sac_ogbench.py`` (``sac_ogbench.update``: critics, actor and temperature
from one backward, then the soft target update) on a fixed batch of real scene
transitions, in alternating rounds in one process, for:

- ``three_adams``: the textbook layout, one (unfused, for-each) Adam per part, as
  TorchRL's sota-implementations/sac writes it;
- ``recipe``: what the recipe runs, one fused Adam over the three parts
  (``torchrl_vlm.training.make_adam``);
- ``recipe_2_threads``: the same with two torch threads instead of one;
- ``compiled`` (with ``--compile``): ``torch.compile`` of the whole update.

Ratios are against ``three_adams``. Two threads are timed in their own rounds
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

from common import interleaved_medians, markdown_table, recipe, recipe_config, record_results  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=50, help="timed updates per variant and round")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the update")
    parser.add_argument("--note", default="", help="a sentence on the conditions, added to the section")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    sac = recipe("sac_ogbench")
    utils = recipe("utils_ogbench")
    cfg = recipe_config("sac_ogbench", ["env.num_envs=1"])
    env = utils.make_env(cfg, 1, False, 0)
    torch.manual_seed(0)
    batch = env.rollout(cfg.buffer.batch_size, break_when_any_done=False).reshape(-1).clone()

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

    variants = {"three_adams": build("three_adams"), "recipe": build("recipe")}
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

    base = one["three_adams"]
    rows = [[name, f"{seconds * 1e3:.1f}", f"{seconds / base:.2f}"] for name, seconds in one.items()]
    rows.append(["recipe_2_threads", f"{one['recipe'] * two_ratio * 1e3:.1f}",
                 f"{one['recipe'] * two_ratio / base:.2f} ({two_ratio:.2f} of 1 thread)"])
    table = markdown_table(["variant", "ms per update (median)", "vs three_adams"], rows)
    body = (
        f"One SAC update of recipes/sac_ogbench.py (batch {cfg.buffer.batch_size}, "
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
