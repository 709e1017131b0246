"""Scoring a clip set with any scorer, timed, with optional majority voting; and the probe's report.

:func:`score_clips` asks the scorer in batches and times every call. With ``vote="frames"``
each clip is asked ``votes`` times, each time showing a different interleaved subset of its
steps (steps ``j, j + votes, ...``); with ``vote="prompts"`` once per prompt. The verdict is
then the majority of the votes' verdicts (a tie is a no) and the score their mean P(yes).
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from torchrl_vlm.probe.metrics import binary_report, calibration

__all__ = ["GAIN_TABLE", "VOTES", "ScoredClips", "format_report", "place_on_gain_table", "score_clips"]

VOTES = ("frames", "prompts")

#: The gain of VLM-RB over uniform replay against scorer error (fpr, fnr), written by
#: ``benchmarks/noisy_sweep.py`` from its sweep on DoorKey-8x8 (``first_progress``).
GAIN_TABLE = Path(__file__).resolve().parent / "noisy_gain_doorkey8x8.json"


@dataclass
class ScoredClips:
    """What :func:`score_clips` returns."""

    scores: torch.Tensor  #: per clip, P(yes) (the mean over votes)
    verdicts: torch.Tensor  #: per clip, bool
    latencies_s: list[float]  #: per scorer call, seconds
    call_clips: list[int]  #: per scorer call, clips in it
    seconds: float  #: all the calls together


def _frame_subset(clips, j: int, votes: int):
    """The clips with only steps ``j, j + votes, ...`` real (all of them where that leaves none)."""
    mask = clips.get("mask")
    steps = torch.arange(mask.shape[1]) % votes == j
    subset = mask & steps
    empty = ~subset.any(-1, keepdim=True)
    out = clips.clone(recurse=False)
    out.set("mask", torch.where(empty, mask, subset))
    return out


def score_clips(scorer, clips, *, batch_size: int = 16, threshold: float = 0.5, vote: str | None = None,
                votes: int = 3, prompts: Sequence[str] | None = None, progress: bool = False) -> ScoredClips:
    """Scores ``clips`` (a TensorDict ``[N]``) with ``scorer``; see the module docstring for voting."""
    if vote not in (None, *VOTES):
        raise ValueError(f"vote={vote!r}; choose None or one of {VOTES}")
    if vote == "prompts":
        if not hasattr(scorer, "prompt"):
            raise ValueError(f"vote='prompts' needs a prompted scorer (transformers, openai), not {scorer!r}")
        if not prompts or len(prompts) < 2:
            raise ValueError("vote='prompts' needs at least two prompts")
    if vote == "frames" and (isinstance(votes, bool) or not isinstance(votes, int) or votes < 2):
        raise ValueError(f"votes must be an int >= 2 for vote='frames', got {votes!r}")
    n = clips.batch_size[0]
    variants = [None] if vote is None else (list(range(votes)) if vote == "frames" else list(prompts))
    original_prompt = getattr(scorer, "prompt", None)
    per_vote, latencies, sizes = [], [], []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n * len(variants), desc="scoring clips", unit="clip")
    try:
        for variant in variants:
            view = clips
            if vote == "frames":
                view = _frame_subset(clips, variant, votes)
            elif vote == "prompts":
                scorer.prompt = variant
            out = []
            for s in range(0, n, batch_size):
                batch = view[s : s + batch_size]
                t0 = time.perf_counter()
                answer = torch.as_tensor(scorer(batch)).float().flatten()
                latencies.append(time.perf_counter() - t0)
                sizes.append(batch.batch_size[0])
                out.append(answer)
                if bar is not None:
                    bar.update(batch.batch_size[0])
            per_vote.append(torch.cat(out))
    finally:
        if vote == "prompts":
            scorer.prompt = original_prompt
        if bar is not None:
            bar.close()
    stacked = torch.stack(per_vote)  # [votes, N]
    yes_votes = (stacked >= threshold).sum(0)
    verdicts = yes_votes * 2 > len(variants)
    return ScoredClips(stacked.mean(0), verdicts, latencies, sizes, float(sum(latencies)))


def near_chance(auc: float, se: float) -> bool:
    """Whether a ROC-AUC is indistinguishable from 0.5 (a scorer that guesses) at about 95%."""
    return math.isnan(auc) or abs(auc - 0.5) <= 1.96 * max(se, 1e-12)


def place_on_gain_table(fpr: float, fnr: float, table_path: Path = GAIN_TABLE) -> dict | None:
    """The measured sweep cell nearest to ``(fpr, fnr)``, or ``None`` when no sweep has been recorded.

    The cell holds ``fpr``, ``fnr``, ``gain`` (fewer steps to 0.9 greedy success than uniform,
    as a fraction; negative: slower; ``None``: a median seed never got there), ``seeds``, ``p``
    (the permutation test), the per-seed ``steps_to_0.9`` and ``uniform_steps_to_0.9`` (``None``:
    never), and the table's ``env``, ``definition``, ``frames`` (the budget) and
    ``schedule_frames`` (the run length whose ε and λ schedules the sweep followed).
    """
    if not table_path.is_file() or math.isnan(fpr) or math.isnan(fnr):
        return None
    table = json.loads(table_path.read_text())
    cells = table.get("cells", [])
    if not cells:
        return None
    nearest = min(cells, key=lambda c: (c["fpr"] - fpr) ** 2 + (c["fnr"] - fnr) ** 2)
    return {**nearest, "env": table.get("env"), "definition": table.get("definition"), "frames": table.get("frames"),
            "schedule_frames": table.get("schedule_frames"),
            "distance": math.hypot(nearest["fpr"] - fpr, nearest["fnr"] - fnr)}


def build_report(scored: ScoredClips, labels: torch.Tensor, *, threshold: float, bins: int = 10) -> dict:
    """The probe's figures: :func:`binary_report` of the verdicts, calibration, throughput and latency."""
    report = binary_report(scored.scores, labels, threshold=threshold, verdicts=scored.verdicts)
    lat = torch.tensor(scored.latencies_s)
    report.update({
        "threshold": threshold,
        "clips_per_s": report["clips"] / scored.seconds if scored.seconds > 0 else math.inf,
        "scorer_calls": len(scored.latencies_s),
        "latency_ms_p50": 1e3 * float(lat.quantile(0.5)),
        "latency_ms_p95": 1e3 * float(lat.quantile(0.95)),
        "near_chance": near_chance(report["roc_auc"], report["roc_auc_se"]),
        "calibration": calibration(scored.scores, labels, bins),
    })
    return report


def _fmt(x) -> str:
    if isinstance(x, float):
        return "n/a" if math.isnan(x) else f"{x:.3f}"
    return str(x)


def format_report(report: dict, *, title: str, notes: Sequence[str] = ()) -> str:
    """A readable table of :func:`build_report`'s figures, with the notes under it."""
    rows = [
        ("clips", report["clips"]), ("base rate (positive clips)", report["base_rate"]),
        ("judged positive", report["positive_rate"]),
        ("precision", report["precision"]), ("recall", report["recall"]), ("F1", report["f1"]),
        ("false-positive rate", report["fpr"]), ("false-negative rate", report["fnr"]),
        ("ROC-AUC", f"{_fmt(report['roc_auc'])} ± {_fmt(1.96 * report['roc_auc_se'])} (95%)"),
        ("calibration error (ECE)", report["calibration"]["ece"]),
        ("confusion (tp, fp, tn, fn)", f"{report['tp']}, {report['fp']}, {report['tn']}, {report['fn']}"),
        ("throughput", f"{report['clips_per_s']:.1f} clips/s"),
        ("latency per call (p50, p95)", f"{report['latency_ms_p50']:.1f} ms, {report['latency_ms_p95']:.1f} ms"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [title, "-" * len(title)] + [f"{name:<{width}}  {_fmt(value)}" for name, value in rows]
    return "\n".join(lines + [""] + [f"* {n}" for n in notes])
