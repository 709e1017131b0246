"""The scorer probe on one clip set: the event, noisy and tiny-VLM scorers, and the paper's open questions.

Collects one labelled clip set on ``--env`` (random and ε-planner policies, sliding windows of
stride ``--stride``) with ``python -m torchrl_vlm.probe``, then scores exactly those clips with:

- the event scorer (the labeller itself: precision = recall = 1) and a ``NoisyScorer`` at
  (fpr 0.1, fnr 0.3), whose measured rates should match the set ones;
- the tiny offline VLM of ``torchrl_vlm.testing`` with the task-agnostic prompt, the
  goal-conditioned one, majority voting over 3 frame subsets and over 3 prompts, 4 frames
  instead of 8, and the non-overlapping clips only.

The tiny model is random, so this is the probe's smoke test: on a real VLM the same command
with ``--model`` answers "how good is it, with which prompt". It replaces the "Scorer probe"
section of benchmarks/RESULTS.md (``--no-record``: print only).

    python benchmarks/scorer_probe.py [--env MiniGrid-DoorKey-8x8-v0] [--clips 512] [--stride 16] [--model PATH]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import markdown_table, record_results, tiny_vlm_path

from torchrl_vlm.probe.cli import main as probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="MiniGrid-DoorKey-8x8-v0")
    parser.add_argument("--clips", type=int, default=512)
    parser.add_argument("--stride", type=int, default=16)
    parser.add_argument("--definition", default="first_progress")
    parser.add_argument("--model", default=None, help="a VLM (hub id or folder); default: the tiny offline model")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    model = args.model or tiny_vlm_path()
    work = Path(tempfile.mkdtemp(prefix="probe"))
    vlm = ["--scorer", "transformers", "--model", model, "--device", "auto"]
    runs = {
        "events (the labeller)": ["--scorer", "events"],
        "noisy_events fpr 0.1, fnr 0.3": ["--scorer", "noisy_events", "--fpr", "0.1", "--fnr", "0.3"],
        "VLM, task-agnostic prompt, 8 frames": vlm,
        "VLM, goal-conditioned prompt": [*vlm, "--prompt-variant", "goal_conditioned"],
        "VLM, majority of 3 frame subsets": [*vlm, "--vote", "frames", "--votes", "3"],
        "VLM, majority of 3 prompts": [*vlm, "--vote", "prompts"],
        "VLM, 4 frames": [*vlm, "--num-frames", "4"],
        "VLM, non-overlapping clips only": [*vlm, "--windows", "non_overlapping"],
    }
    rows, reports, first = [], [], True
    for label, options in runs.items():
        source = (["--env", args.env, "--clips", str(args.clips), "--stride", str(args.stride)] if first
                  else ["--clips-from", str(work / "clips")])
        first = False
        out = work / f"{len(rows)}.json"
        probe([*source, *options, "--definition", args.definition, "--out", str(work), "--json", str(out),
               "--quiet"])
        r = json.loads(out.read_text())
        reports.append(r)
        rows.append([label, r["clips"], f"{r['base_rate']:.2f}", f"{r['precision']:.2f}", f"{r['recall']:.2f}",
                     f"{r['f1']:.2f}", f"{r['fpr']:.2f}", f"{r['fnr']:.2f}",
                     f"{r['roc_auc']:.2f} ± {1.96 * r['roc_auc_se']:.2f}", f"{r['calibration']['ece']:.2f}",
                     f"{r['clips_per_s']:.0f}"])
    meta = json.loads((work / "clips" / "clipset.json").read_text())
    length_auc = reports[0]["length_auc"]  # on the whole set
    table = markdown_table(["scorer", "clips", "base rate", "precision", "recall", "F1", "fpr", "fnr",
                            "ROC-AUC ± 95%", "ECE", "clips/s"], rows)
    body = (
        f"{args.env}, definition `{args.definition}`: {meta['clips']} clips of {meta['clip_len']} steps at stride "
        f"{meta['stride']} (sliding windows; the last row keeps the non-overlapping ones training cuts), "
        f"collected by policies {', '.join(meta['policies'])} (ε 0.3), seed {meta['seed']}; every scorer sees "
        f"exactly these clips. VLM: `{Path(model).name if args.model is None else model}`"
        f"{' (the tiny random Idefics3 of torchrl_vlm.testing)' if args.model is None else ''}, CPU.\n\n{table}\n\n"
        f"A trivial rival on these clips: clip length alone (shorter = positive) has ROC-AUC {length_auc:.2f} "
        "(episodes that end at the goal, the planner's, give the short clips). "
        "A scorer has to beat it to show it reads the "
        "frames.\n"
    )
    print(body)
    if not args.no_record:
        record_results("Scorer probe", body)


if __name__ == "__main__":
    main()
