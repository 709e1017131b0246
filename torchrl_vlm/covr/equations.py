"""COVR's equations, one function each (``PAPERS.md`` §3; arXiv 2601.06122, AAAI-26).

- :func:`parse_action`: Algorithm 1's string-to-float step, the VLM's text to a_v;
  :func:`format_action` is its inverse, the label text a fine-tune teaches;
- :func:`returns_to_go`: step 4's g_t = Σ_k γ^(k−t) r_k, what the fine-tuning buffer stores;
- :func:`eddf_mask`: eq. 5, the exploration-driven dynamic filter;
- :func:`ralw_weights`: eq. 6's return-aware weights, and :func:`ralw_token_nll` eq. 6's loss;
- :func:`progressive_schedule`: the agent steps at which the VLM is fine-tuned.

The prior term of eq. 4, λ‖a_v − a_r‖², is :func:`torchrl_vlm.covr.loss.prior_penalty`.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterator

import torch

from torchrl_vlm._checks import check_int

__all__ = [
    "MAX_ANSWER_CHARS",
    "eddf_mask",
    "format_action",
    "parse_action",
    "progressive_schedule",
    "ralw_token_nll",
    "ralw_weights",
    "returns_to_go",
]

#: The most characters of a VLM's answer that :func:`parse_action` reads (its tail): a VLM's text is
#: untrusted, and a runaway generation must not cost the learner a regex over megabytes.
MAX_ANSWER_CHARS = 4096

# A list with no nested brackets and a bounded body; the numbers are checked one by one below.
_LIST = re.compile(r"\[([^\[\]]{0,1024})\]")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def parse_action(text: str, action_dim: int) -> torch.Tensor | None:
    """The last ``[x1, ..., xn]`` list in a VLM's answer as a float32 action ``[action_dim]`` in [−1, 1]
    (COVR Algorithm 1, step 1: "a string-to-float parser turns it into a continuous a_v,t").

    ``"Action: [0.43, 0.37]"`` gives ``tensor([0.43, 0.37])``; values outside [−1, 1] are clipped to it.
    Anything else gives ``None``, never an exception: text that is not a string, no list, a list of the
    wrong length, an entry that is not a plain decimal number (``nan``, ``inf``, ``1/2``, words), or a
    number too large to be finite. Only the last :data:`MAX_ANSWER_CHARS` characters are read.

    Examples:
        >>> parse_action("I would push right. Action: [0.43, -1.7]", 2)
        tensor([ 0.4300, -1.0000])
        >>> parse_action("Action: [0.4, nan]", 2) is None
        True
    """
    action_dim = check_int("action_dim", action_dim, 1)
    if not isinstance(text, str):
        return None
    lists = _LIST.findall(text[-MAX_ANSWER_CHARS:])
    if not lists:
        return None
    parts = [p.strip() for p in lists[-1].split(",")]
    if len(parts) != action_dim or not all(_NUMBER.fullmatch(p) for p in parts):
        return None
    values = [float(p) for p in parts]
    if not all(math.isfinite(v) for v in values):  # "1e999" parses to inf
        return None
    return torch.tensor(values, dtype=torch.float32).clamp_(-1.0, 1.0)


def format_action(action: torch.Tensor, decimals: int = 2) -> str:
    """An action as the answer text COVR's VLM writes and is fine-tuned to write: ``"Action: [0.43, -0.12]"``.

    :func:`parse_action` reads it back to within ``0.5·10^-decimals``.
    """
    decimals = check_int("decimals", decimals, 0)
    values = torch.as_tensor(action, dtype=torch.float32).reshape(-1).clamp(-1.0, 1.0).tolist()
    texts = [f"{v:.{decimals}f}" for v in values]
    # "-0.00" and "0.00" are the same action: one spelling, one label.
    return "Action: [" + ", ".join(t.lstrip("-") if float(t) == 0 else t for t in texts) + "]"


def returns_to_go(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """g_t = Σ_{k≥t} γ^(k−t) r_k over one finished trajectory ``rewards [T]`` (COVR Algorithm 1, step 4).

    The sum runs to the trajectory's last step, as the paper writes it: an episode cut by a time limit
    (every DMControl episode) gets the return of the steps it had, with no bootstrapped tail.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma!r}")
    rewards = torch.as_tensor(rewards, dtype=torch.float64).reshape(-1)
    out = torch.empty_like(rewards)
    running = 0.0
    for t in range(rewards.numel() - 1, -1, -1):
        running = float(rewards[t]) + gamma * running
        out[t] = running
    return out.float()


def eddf_mask(returns: torch.Tensor, entropy: float | torch.Tensor, *, entropy_sign: float = 1.0) -> torch.Tensor:
    """COVR eq. 5, the exploration-driven dynamic filter: which fine-tuning samples to keep.

    G_z = z-score(g) over the samples; τ = median(G_z) + σ(entropy_sign · ε)·IQR(G_z), with IQR the spread
    between the 25th and 75th percentiles (both interpolated linearly, as ``torch.quantile``); a sample is kept
    when G_z > τ. ε is the policy's entropy.

    ``entropy_sign=1.0`` (the default) is the formula as the paper writes it: σ is increasing, so *high* entropy
    *raises* the threshold. The paper's text says the opposite is meant (early, exploratory training keeps more
    samples); ``entropy_sign=-1.0`` gives that. Either way τ stays at or above the median, so at most half of the
    samples are kept (fewer with ties). The z-score does not change which samples pass (τ is affine-invariant);
    it is kept because the paper states it.

    Degenerate inputs: fewer than two finite returns, or returns all equal (no sample is better than another),
    keep nothing; non-finite returns are never kept and do not enter the statistics.

    Args:
        returns: ``[N]`` returns-to-go g_i.
        entropy: the policy entropy ε (a finite number).
        entropy_sign: +1 (the formula) or −1 (the stated intent).

    Returns:
        bool ``[N]``.
    """
    if entropy_sign not in (1.0, -1.0):
        raise ValueError(
            f"entropy_sign must be 1.0 (eq. 5 as written) or -1.0 (its stated intent), got {entropy_sign!r}")
    entropy = float(entropy)
    if not math.isfinite(entropy):
        raise ValueError(f"entropy must be finite, got {entropy!r}")
    returns = torch.as_tensor(returns, dtype=torch.float64).reshape(-1)
    keep = torch.zeros(returns.shape, dtype=torch.bool)
    finite = torch.isfinite(returns)
    g = returns[finite]
    if g.numel() < 2 or bool((g == g[0]).all()):
        return keep
    z = (g - g.mean()) / g.std(unbiased=False)
    q25, q50, q75 = torch.quantile(z, torch.tensor([0.25, 0.5, 0.75], dtype=z.dtype)).unbind()
    tau = q50 + torch.sigmoid(torch.tensor(entropy_sign * entropy, dtype=z.dtype)) * (q75 - q25)
    keep[finite] = z > tau
    return keep


def ralw_weights(returns: torch.Tensor) -> torch.Tensor:
    """COVR eq. 6's return-aware loss weights of the kept samples: w = max(ḡ, 0).

    The paper normalises the returns to [−1, 1] without saying how; here ḡ is the min-max map
    ḡ = 2(g − g_min)/(g_max − g_min) − 1 (monotone: the lowest return gets −1, the highest 1), so the
    samples below the kept returns' midpoint get weight 0 and the best weight 1. All returns equal (or one
    sample): every weight is 1, as no sample is worse than another. Returns must be finite.

    Returns:
        float32 ``[N]`` in [0, 1].
    """
    returns = torch.as_tensor(returns, dtype=torch.float64).reshape(-1)
    if not bool(torch.isfinite(returns).all()):
        raise ValueError("ralw_weights needs finite returns (eddf_mask never keeps a non-finite one)")
    if returns.numel() == 0:
        return torch.zeros(0)
    low, high = returns.min(), returns.max()
    if high == low:
        return torch.ones(returns.shape)
    g_bar = 2.0 * (returns - low) / (high - low) - 1.0
    return g_bar.clamp_min(0.0).float()


def ralw_token_nll(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    *,
    label_smoothing: float = 0.1,
    ignore_index: int = -100,
) -> torch.Tensor:
    """COVR eq. 6: L = (1/N_v) Σ_b w_b Σ_t −log p(y_b,t | x_b, y_b,<t), with label smoothing.

    Args:
        logits: ``[B, T, V]``, the model's logits where position t predicts ``labels[:, t]`` (already shifted).
        labels: ``[B, T]`` token ids of the answer text; ``ignore_index`` marks the prompt and padding.
        weights: ``[B]`` RALW weights w_b.
        label_smoothing: the paper uses label smoothing without giving its value; 0.1 is the common one.

    N_v counts the valid label tokens of the whole batch (weighted or not), as the paper writes it.
    """
    if logits.ndim != 3 or labels.shape != logits.shape[:2] or weights.shape != logits.shape[:1]:
        raise ValueError(
            f"logits [B, T, V], labels [B, T] and weights [B] expected, got {list(logits.shape)}, "
            f"{list(labels.shape)} and {list(weights.shape)}"
        )
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    nll = torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2),
        labels,
        ignore_index=ignore_index,
        reduction="none",
        label_smoothing=label_smoothing,
    )  # [B, T], 0 where ignored
    valid = labels != ignore_index
    n_valid = valid.sum().clamp_min(1)
    return (weights.to(nll.dtype).unsqueeze(1) * nll * valid).sum() / n_valid


def progressive_schedule(psi0: int = 5000) -> Iterator[int]:
    """The agent steps at which COVR fine-tunes its VLM: ψ_{c+1} = ψ_c + ψ_c·c from ψ_0 = ``psi0``.

    Intervals ψ0, 2ψ0, 6ψ0, 24ψ0, ... (the paper calls it linear; it grows factorially), so with the
    paper's ψ0 = 5000 the fine-tunes come after 5000, 15000, 45000, 165000, ... steps. Infinite.

    Examples:
        >>> import itertools
        >>> list(itertools.islice(progressive_schedule(5000), 4))
        [5000, 15000, 45000, 165000]
    """
    psi = check_int("psi0", psi0, 1)
    step, c = psi, 1
    while True:
        yield step
        psi = psi + psi * c
        step += psi
        c += 1
