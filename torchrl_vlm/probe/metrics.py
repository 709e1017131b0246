"""How well P(yes) separates labelled clips: precision, recall, ROC-AUC, calibration.

Every figure is of a binary classifier against ground truth: a clip is predicted
positive when its verdict is yes (P(yes) >= threshold, or a majority vote), and it is
positive when the simulator's events say so under the chosen definition.
"""
from __future__ import annotations

import math

import torch

__all__ = ["binary_report", "calibration", "roc_auc"]


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """ROC-AUC and its standard error (Hanley & McNeil, 1982); ``(nan, nan)`` without both classes.

    The AUC is the probability that a random positive clip scores above a random negative
    one, ties counting half (the Mann-Whitney statistic, from average ranks).
    """
    scores, labels = scores.double().flatten(), labels.bool().flatten()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan, math.nan
    order = torch.argsort(scores, stable=True)
    ranks = torch.empty_like(scores)
    sorted_scores = scores[order]
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    average = ends - (counts.double() - 1) / 2  # 1-based average rank of each run of ties
    ranks[order] = average[inverse]
    auc = (float(ranks[labels].sum()) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (n_pos * n_neg)
    return auc, math.sqrt(max(var, 0.0))


def _ratio(a: int, b: int) -> float:
    return a / b if b else math.nan


def binary_report(scores: torch.Tensor, labels: torch.Tensor, *, threshold: float = 0.5,
                  verdicts: torch.Tensor | None = None) -> dict[str, float]:
    """The confusion counts and rates of verdicts against labels, and the ROC-AUC of the scores.

    ``verdicts`` (bool) default to ``scores >= threshold``. Keys: ``clips``, ``base_rate``,
    ``tp``/``fp``/``tn``/``fn``, ``precision``, ``recall``, ``f1``, ``fpr`` (P(yes | negative)),
    ``fnr`` (P(no | positive)), ``accuracy``, ``positive_rate`` (share judged yes), ``roc_auc``,
    ``roc_auc_se``. A rate with an empty denominator is ``nan``.
    """
    scores = torch.as_tensor(scores).double().flatten()
    labels = torch.as_tensor(labels).flatten() >= 0.5
    if scores.shape != labels.shape or scores.numel() == 0:
        raise ValueError(f"scores and labels must be two non-empty vectors of one length, got "
                         f"{list(scores.shape)} and {list(labels.shape)}")
    yes = scores >= threshold if verdicts is None else torch.as_tensor(verdicts).bool().flatten()
    tp, fp = int((yes & labels).sum()), int((yes & ~labels).sum())
    fn, tn = int((~yes & labels).sum()), int((~yes & ~labels).sum())
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    auc, se = roc_auc(scores, labels)
    n = scores.numel()
    return {
        "clips": n, "base_rate": (tp + fn) / n, "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "precision": precision, "recall": recall, "f1": f1, "fpr": _ratio(fp, fp + tn), "fnr": _ratio(fn, fn + tp),
        "accuracy": (tp + tn) / n, "positive_rate": (tp + fp) / n, "roc_auc": auc, "roc_auc_se": se,
    }


def calibration(scores: torch.Tensor, labels: torch.Tensor, bins: int = 10) -> dict:
    """Reliability: per equal-width bin of P(yes), the clips, their mean P(yes) and the share positive.

    Returns ``{"bins": [{"low", "high", "clips", "mean_score", "positive_share"}, ...], "ece": e}``,
    where ``ece`` is the expected calibration error, sum over bins of
    ``clips / N * |positive_share - mean_score|``. Empty bins are listed with ``clips = 0``.
    """
    scores = torch.as_tensor(scores).double().flatten()
    labels = (torch.as_tensor(labels).flatten() >= 0.5).double()
    index = (scores * bins).long().clamp(0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        inside = index == b
        count = int(inside.sum())
        mean = float(scores[inside].mean()) if count else math.nan
        share = float(labels[inside].mean()) if count else math.nan
        if count:
            ece += count / scores.numel() * abs(share - mean)
        rows.append({"low": b / bins, "high": (b + 1) / bins, "clips": count, "mean_score": mean,
                     "positive_share": share})
    return {"bins": rows, "ece": ece}


def reliability_diagram(cal: dict, path, title: str) -> None:
    """Draws :func:`calibration`'s bins: share positive against mean P(yes), with the diagonal, and counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = [b for b in cal["bins"] if b["clips"]]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.5, 5.5), sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="calibrated")
    top.plot([b["mean_score"] for b in bins], [b["positive_share"] for b in bins], marker="o", label="scorer")
    top.set_ylabel("share of clips positive")
    top.set_ylim(-0.02, 1.02)
    top.legend(fontsize=8, loc="upper left")
    top.set_title(f"{title}\nECE {cal['ece']:.3f}", fontsize=9)
    width = cal["bins"][0]["high"] - cal["bins"][0]["low"]
    bottom.bar([b["low"] for b in cal["bins"]], [b["clips"] for b in cal["bins"]], width=width, align="edge",
               color="tab:blue", alpha=0.6)
    bottom.set_xlabel("P(yes)")
    bottom.set_ylabel("clips")
    bottom.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
