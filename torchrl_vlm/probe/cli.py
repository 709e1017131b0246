"""``python -m torchrl_vlm.probe``: is my VLM good enough, with my prompt, on my env's clips?

Collects clips on the env with a mix of policies (or loads a saved set with
``--clips-from``), labels each from the simulator's events under ``--definition``, scores
them with the chosen scorer and reports precision, recall, F1, ROC-AUC, the base rate,
calibration (a reliability diagram PNG), throughput and latency. For example::

    python -m torchrl_vlm.probe --env MiniGrid-DoorKey-8x8-v0 --scorer transformers \\
        --model HuggingFaceTB/SmolVLM-256M-Instruct --clips 512 --definition first_progress --json probe.json
    python -m torchrl_vlm.probe --clips-from probe_results/clips --scorer openai \\
        --base-url http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-VL-3B-Instruct --prompt-variant goal_conditioned

The paper's open questions are options measured on the same clips: ``--prompt-variant``
(task-agnostic, or goal-conditioned with the mission injected), ``--vote frames|prompts``
(majority voting over frame subsets or prompts), ``--stride`` (sliding windows; with
``--windows non_overlapping`` the same set is scored on the clips training would cut) and
``--num-frames``. Also installed as ``torchrl-vlm-probe``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

__all__ = ["main"]

SCORERS = ("events", "noisy_events", "transformers", "openai")
#: Prompts voted over by ``--vote prompts`` when no ``--prompt`` is given: the paper's question and two rewordings.
VOTE_PROMPTS = (
    "Does this clip contain a clear instance of goal satisfaction anywhere in it? Answer Yes or No.",
    "Does the agent make clear progress towards its goal in this clip? Answer Yes or No.",
    "Is a sub-goal or the goal of the task achieved in this clip? Answer Yes or No.",
)


class ProbeError(ValueError):
    """A probe that cannot run as asked; its message names the option and what is allowed."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torchrl-vlm-probe", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    clips = p.add_argument_group("clips")
    clips.add_argument("--env", help="a MiniGrid env id or an OGBench scene task (collect clips there)")
    clips.add_argument("--clips", type=int, default=512, help="clips to collect (default 512)")
    clips.add_argument("--clips-from", metavar="DIR", help="a saved clip set (ClipSet.save) instead of collecting")
    clips.add_argument("--clip-len", type=int, default=32, help="clip length L (paper: 32)")
    clips.add_argument("--stride", type=int, default=None, help="steps between clip starts (default L: no overlap)")
    clips.add_argument("--windows", choices=("all", "non_overlapping"), default="all",
                       help="non_overlapping: score only the clips training would cut")
    clips.add_argument("--policies", nargs="+", default=None,
                       help="behaviour policies (MiniGrid: random planner; OGBench: random scripted)")
    clips.add_argument(
        "--epsilon", type=float, default=0.3, help="the planner's or scripted policy's share of random actions"
    )
    clips.add_argument("--seed", type=int, default=0, help="seeds the envs and the policies")
    clips.add_argument(
        "--definition",
        default="first_progress",
        help="what a positive clip is: any, first_progress or goal_only (the event scorer's definitions)",
    )
    scorer = p.add_argument_group("scorer")
    scorer.add_argument("--scorer", choices=SCORERS, required=True)
    scorer.add_argument("--fpr", type=float, default=0.1, help="noisy_events: false-positive rate")
    scorer.add_argument("--fnr", type=float, default=0.1, help="noisy_events: false-negative rate")
    scorer.add_argument("--noise-seed", type=int, default=0, help="noisy_events: seeds the flips")
    scorer.add_argument("--model", help="transformers: hub id or local folder; openai: the served model name")
    scorer.add_argument("--device", default="auto", help="transformers: device (auto, cpu, cuda:1, ...)")
    scorer.add_argument("--base-url", help="openai: the server's API root, e.g. http://127.0.0.1:8000/v1")
    scorer.add_argument("--api-key", default=None, help="openai: bearer token, if the server wants one")
    scorer.add_argument("--max-concurrency", type=int, default=8, help="openai: requests in flight")
    scorer.add_argument("--timeout-s", type=float, default=60.0, help="openai: per-request time limit")
    scorer.add_argument("--num-frames", type=int, default=8, help="frames shown per clip")
    scorer.add_argument(
        "--prompt", action="append", default=None, help="the question (repeat it to vote over several prompts)"
    )
    scorer.add_argument(
        "--prompt-variant",
        choices=("task_agnostic", "goal_conditioned"),
        default="task_agnostic",
        help="goal_conditioned: the clip's mission goes before the question",
    )
    scorer.add_argument("--vote", choices=("frames", "prompts"), default=None, help="majority voting")
    scorer.add_argument("--votes", type=int, default=3, help="--vote frames: interleaved frame subsets")
    scorer.add_argument("--batch-size", type=int, default=16, help="clips per scorer call")
    scorer.add_argument("--threshold", type=float, default=0.5, help="P(yes) from which a verdict is yes")
    out = p.add_argument_group("output")
    out.add_argument("--out", default="probe_results", help="folder of the reliability diagram and saved clips")
    out.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    out.add_argument("--no-save-clips", action="store_true", help="do not save freshly collected clips")
    out.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _check(args) -> None:
    for name in ("clips", "clip_len", "num_frames", "batch_size", "max_concurrency"):
        value = getattr(args, name)
        if value < 1:
            raise ProbeError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.stride is not None and not 1 <= args.stride <= args.clip_len:
        raise ProbeError(f"--stride must be in [1, --clip-len={args.clip_len}], got {args.stride}")
    for name in ("fpr", "fnr", "threshold", "epsilon"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise ProbeError(f"--{name} must be in [0, 1], got {getattr(args, name)}")
    if (args.env is None) == (args.clips_from is None):
        raise ProbeError("give either --env (collect clips) or --clips-from DIR (a saved clip set)")
    if args.vote == "frames" and args.votes < 2:
        raise ProbeError(f"--votes must be >= 2 with --vote frames, got {args.votes}")
    if args.vote and args.scorer in ("events", "noisy_events"):
        raise ProbeError(f"--vote {args.vote} needs a VLM scorer (transformers, openai), not --scorer {args.scorer}")
    if args.scorer in ("transformers", "openai") and not args.model:
        raise ProbeError(f"--scorer {args.scorer} needs --model")
    if args.scorer == "openai" and not args.base_url:
        raise ProbeError("--scorer openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")


def build_scorer(args, domain: str):
    """The scorer the options describe; a :class:`ProbeError` saying why if it cannot be built."""
    from torchrl_vlm.probe.clipset import _event_scorer

    prompts = args.prompt or [VOTE_PROMPTS[0]]
    mission = args.prompt_variant == "goal_conditioned"
    if mission and domain == "ogbench":
        raise ProbeError("--prompt-variant goal_conditioned needs missions; OGBench's clips have none")
    try:
        events = _event_scorer(domain, args.definition)
    except ValueError as err:
        raise ProbeError(f"--definition: {err}") from None
    try:
        if args.scorer == "events":
            return events
        if args.scorer == "noisy_events":
            from torchrl_vlm.scoring.oracle import NoisyScorer

            return NoisyScorer(events, args.fpr, args.fnr, seed=args.noise_seed)
        if args.scorer == "transformers":
            from torchrl_vlm.scoring.transformers import TransformersScorer

            return TransformersScorer(
                args.model,
                prompt=prompts[0],
                num_frames=args.num_frames,
                device=args.device,
                batch_size=args.batch_size,
                mission_in_prompt=mission,
            )
        from torchrl_vlm.scoring.openai import OpenAIScorer

        return OpenAIScorer(
            args.base_url,
            args.model,
            prompt=prompts[0],
            num_frames=args.num_frames,
            api_key=args.api_key,
            max_concurrency=args.max_concurrency,
            timeout_s=args.timeout_s,
            mission_in_prompt=mission,
        )
    except Exception as err:  # noqa: BLE001 - any failure to build is reported with the option that caused it
        what = f" from --model {args.model}" if args.model else ""
        raise ProbeError(f"--scorer {args.scorer} could not be built{what}: {type(err).__name__}: {err}") from None


def _notes(args, report: dict) -> list[str]:
    from torchrl_vlm.testing import TINY_VLM_MARKER

    notes = []
    auc, se = report["roc_auc"], report["roc_auc_se"]
    if math.isnan(auc):
        notes.append("ROC-AUC needs both positive and negative clips; this set has one class only: collect more")
    elif report["near_chance"]:
        notes.append(
            f"ROC-AUC {auc:.3f} is within {1.96 * se:.3f} of 0.5: this scorer cannot be told apart "
            "from one that guesses, on these clips"
        )
    if args.scorer == "transformers" and args.model and (Path(args.model) / TINY_VLM_MARKER).is_file():
        notes.append(
            "this is the tiny random model of torchrl_vlm.testing (a smoke test of the plumbing): "
            "its answers are random, so chance is the expected result"
        )
    if args.scorer == "events":
        notes.append("the event scorer is the labeller itself: precision = recall = 1 by construction")
    notes.append(f"base rate {report['base_rate']:.3f}: a scorer saying yes to every clip has this precision")
    if not math.isnan(report["length_auc"]):
        notes.append(
            f"clip length alone (shorter = positive) has ROC-AUC {report['length_auc']:.3f} on these clips: "
            "a scorer has to beat that to show it reads the frames"
        )
    from torchrl_vlm.probe.report import place_on_gain_table

    cell = place_on_gain_table(report["fpr"], report["fnr"])
    if math.isnan(report["fpr"]) or math.isnan(report["fnr"]):
        notes.append(
            "gain against scorer error: this clip set lacks positives or negatives, so fpr or fnr is "
            "undefined and the scorer cannot be placed on the sweep"
        )
    elif cell is None:
        notes.append("gain against scorer error: no sweep recorded yet (benchmarks/noisy_sweep.py)")
    else:
        g = cell.get("gain")
        if g is None:
            gain = "no gain could be measured (a median seed of VLM-RB or of uniform never reached 0.9 greedy success)"
        else:
            gain = (
                f"VLM-RB reached 0.9 greedy success in {abs(100 * g):.0f}% {'fewer' if g >= 0 else 'more'} steps "
                "than uniform replay"
            )
        budget = f", {cell['frames']:,} steps" if cell.get("frames") else ""
        if cell.get("schedule_frames") and cell["schedule_frames"] != cell.get("frames"):
            budget += f" of a {cell['schedule_frames']:,}-step run's ε and λ schedules"
        notes.append(
            f"your scorer's (fpr, fnr) on these clips is ({report['fpr']:.2f}, {report['fnr']:.2f}); at the "
            f"nearest measured error ({cell['fpr']:.2f}, {cell['fnr']:.2f}), {gain} on {cell['env']} "
            f"({cell['definition']}{budget}, {cell['seeds']} seeds; "
            f"one-sided permutation p = {cell['p']:.2f})"
        )
    return notes


def run(args) -> dict:
    """The probe as the options describe it; returns the report (what ``--json`` writes)."""
    from torchrl_vlm.probe.clipset import ClipSet, collect_clips, domain_of
    from torchrl_vlm.probe.metrics import reliability_diagram, roc_auc
    from torchrl_vlm.probe.report import build_report, format_report, score_clips

    _check(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.clips_from:
        clipset = ClipSet.load(args.clips_from)
        source = f"loaded from {args.clips_from}"
        scorer = build_scorer(args, clipset.domain)
    else:
        try:
            domain = domain_of(args.env)
        except ValueError as err:
            raise ProbeError(f"--env: {err}") from None
        scorer = build_scorer(args, domain)  # a scorer that cannot be built fails before the collection
        clipset = collect_clips(
            args.env,
            args.clips,
            clip_len=args.clip_len,
            stride=args.stride,
            policies=args.policies,
            epsilon=args.epsilon,
            seed=args.seed,
            progress=not args.quiet,
        )
        source = f"collected (seed {args.seed}, policies {', '.join(clipset.policies)})"
        if not args.no_save_clips:
            saved = clipset.save(out / "clips")
            source += f", saved to {saved}"
    if args.windows == "non_overlapping":
        clipset = clipset.subset(clipset.non_overlapping())
    try:
        labels = clipset.labels(args.definition)
    except ValueError as err:
        raise ProbeError(f"--definition: {err}") from None
    prompts = (
        (args.prompt if args.prompt and len(args.prompt) > 1 else list(VOTE_PROMPTS))
        if args.vote == "prompts"
        else None
    )
    scored = score_clips(
        scorer,
        clipset.clips(),
        batch_size=args.batch_size,
        threshold=args.threshold,
        vote=args.vote,
        votes=args.votes,
        prompts=prompts,
        progress=not args.quiet,
    )
    report = build_report(scored, labels, threshold=args.threshold)
    # A trivial rival: shorter clips are more often positive where episodes end at the goal.
    report["length_auc"] = roc_auc(-clipset.mask.sum(-1).double(), labels)[0]
    report.update(
        {
            "env": clipset.env_name,
            "definition": args.definition,
            "scorer": args.scorer,
            "scorer_repr": repr(scorer),
            "clip_len": clipset.clip_len,
            "stride": clipset.stride,
            "windows": args.windows,
            "prompt_variant": args.prompt_variant,
            "vote": args.vote,
            "num_frames": args.num_frames,
            "source": source,
        }
    )
    title = f"probe: {args.scorer} on {clipset.env_name} ({args.definition}), {len(clipset)} clips {source}"
    diagram = out / "reliability.png"
    reliability_diagram(report["calibration"], diagram, f"{args.scorer} on {clipset.env_name}")
    report["reliability_png"] = str(diagram)
    report["notes"] = _notes(args, report)
    print(format_report(report, title=title, notes=report["notes"] + [f"reliability diagram: {diagram}"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    close = getattr(scorer, "close", None)
    if callable(close):
        close()
    return report


def main(argv: list[str] | None = None) -> int:
    """The ``torchrl-vlm-probe`` command on ``argv`` (``sys.argv[1:]`` when ``None``): returns 0, or exits with
    status 2 and the error where the probe cannot run as asked (``python -m torchrl_vlm.probe --help``: the options)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from torchrl_vlm.probe.clipset import ClipSetError
    from torchrl_vlm.scoring.openai import OpenAIScorerError

    try:
        run(args)
    except (ProbeError, ClipSetError, OpenAIScorerError) as err:
        parser.exit(2, f"torchrl-vlm-probe: error: {err}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
