"""COVR's equations and its loss, against hand-computed cases and their documented edge cases."""
import itertools
import math

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from torchrl_vlm.covr import (
    eddf_mask,
    format_action,
    parse_action,
    prior_penalty,
    progressive_schedule,
    ralw_token_nll,
    ralw_weights,
    returns_to_go,
    select_samples,
)
from torchrl_vlm.covr.equations import MAX_ANSWER_CHARS


# ------------------------------------------------------------------ parse_action
@pytest.mark.parametrize("text, dim, expected", [
    ("Action: [0.43, 0.37]", 2, [0.43, 0.37]),
    ("I would push. Action: [0.43, -1.7]", 2, [0.43, -1.0]),  # clipped to [-1, 1]
    ("first [0.1, 0.2] then Action: [-0.5, .25]", 2, [-0.5, 0.25]),  # the last list
    ("[+1e-1]", 1, [0.1]),
    ("Action:[ 3 , -2 ,0 ]", 3, [1.0, -1.0, 0.0]),
])
def test_parse_action_reads_the_last_list(text, dim, expected):
    out = parse_action(text, dim)
    assert out.dtype == torch.float32 and out.shape == (dim,)
    assert torch.allclose(out, torch.tensor(expected))


@pytest.mark.parametrize("text", [
    "Action: [0.4]",  # wrong length
    "Action: [0.4, 0.1, 0.2]",
    "Action: [0.4, nan]", "Action: [inf, 0]", "Action: [1e999, 0]",  # not finite
    "Action: [0.4, left]", "Action: [1/2, 0]", "Action: [0x1, 0]", "Action: [, 0.3]",  # not numbers
    "Action: 0.4, 0.1", "", "[0.1, [0.2]]",  # no list of the right shape
    None, 42, b"[0.1, 0.2]",  # not text
])
def test_parse_action_gives_none_never_an_exception(text):
    assert parse_action(text, 2) is None


def test_parse_action_reads_a_bounded_tail():
    assert parse_action("x" * 10_000_000 + "Action: [0.5, 0.5]", 2) is not None  # the tail is read
    # A list that starts before the bounded tail is not read.
    assert parse_action("Action: [0.5, " + " " * MAX_ANSWER_CHARS + "0.5]", 2) is None
    with pytest.raises(ValueError, match="action_dim"):
        parse_action("[0.1]", 0)


def test_format_action_round_trips_through_parse_action():
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        a = torch.rand(3, generator=g) * 2 - 1
        assert (parse_action(format_action(a), 3) - a).abs().max() <= 0.005 + 1e-6
    assert format_action(torch.tensor([-0.001, 0.5])) == "Action: [0.00, 0.50]"


# ------------------------------------------------------------------ returns_to_go
def test_returns_to_go_by_hand():
    assert torch.allclose(returns_to_go(torch.tensor([1.0, 0.0, 2.0]), 0.5), torch.tensor([1.5, 1.0, 2.0]))
    assert returns_to_go(torch.zeros(0), 0.9).shape == (0,)
    with pytest.raises(ValueError, match="gamma"):
        returns_to_go(torch.ones(2), 1.5)


# ------------------------------------------------------------------ EDDF (eq. 5)
def _eddf_by_hand(g, entropy, sign):
    n = len(g)
    mean = sum(g) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in g) / n)
    z = sorted((x - mean) / std for x in g)

    def q(p):  # linear interpolation between order statistics
        pos = p * (n - 1)
        lo = math.floor(pos)
        return z[lo] + (pos - lo) * (z[min(lo + 1, n - 1)] - z[lo])

    tau = q(0.5) + 1 / (1 + math.exp(-sign * entropy)) * (q(0.75) - q(0.25))
    return [(x - mean) / std > tau for x in g]


@pytest.mark.parametrize("entropy", [-3.0, 0.0, 0.7, 4.0])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_eddf_matches_eq5_by_hand(entropy, sign):
    g = [3.0, -1.0, 7.5, 0.0, 2.0, 9.0, 4.0, 4.5, -2.0, 6.0, 1.0]
    assert eddf_mask(torch.tensor(g), entropy, entropy_sign=sign).tolist() == _eddf_by_hand(g, entropy, sign)


def test_eddf_by_hand_on_ten_returns():
    # 0..9: median 4.5, IQR 2.25..6.75 = 4.5; σ(0) = 0.5 → τ = 6.75 in return units: keeps 7, 8, 9.
    assert eddf_mask(torch.arange(10.0), 0.0).nonzero().reshape(-1).tolist() == [7, 8, 9]
    # σ(+10) = 1 − 4.5e-5 → τ just under 9: keeps 9 alone; σ(-10) ≈ 0 → τ just over 4.5: keeps 5..9.
    assert eddf_mask(torch.arange(10.0), 10.0).nonzero().reshape(-1).tolist() == [9]
    assert eddf_mask(torch.arange(10.0), 10.0, entropy_sign=-1.0).nonzero().reshape(-1).tolist() == [5, 6, 7, 8, 9]


def test_eddf_high_entropy_raises_the_threshold_as_printed_and_lowers_it_as_intended():
    g = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    kept = [int(eddf_mask(g, e).sum()) for e in (-4.0, 0.0, 4.0)]
    assert kept[0] > kept[1] > kept[2]  # the formula as written
    intent = [int(eddf_mask(g, e, entropy_sign=-1.0).sum()) for e in (-4.0, 0.0, 4.0)]
    assert intent[0] < intent[1] < intent[2]
    assert max(kept + intent) <= 500  # τ ≥ median: at most half


def test_eddf_degenerate_inputs():
    assert eddf_mask(torch.zeros(0), 0.0).shape == (0,)
    assert eddf_mask(torch.tensor([5.0]), 0.0).tolist() == [False]
    assert eddf_mask(torch.full((6,), 2.0), 0.0).sum() == 0  # equal returns: none better than another
    g = torch.tensor([float("nan"), 0.0, 1.0, 2.0, 3.0, float("inf"), 10.0, -float("inf")])
    mask = eddf_mask(g, 0.0)
    assert not mask[[0, 5, 7]].any()  # non-finite returns are never kept...
    finite = torch.tensor([0.0, 1.0, 2.0, 3.0, 10.0])
    assert mask[[1, 2, 3, 4, 6]].tolist() == eddf_mask(finite, 0.0).tolist()  # ...and do not enter the statistics
    with pytest.raises(ValueError, match="entropy"):
        eddf_mask(torch.arange(4.0), float("nan"))
    with pytest.raises(ValueError, match="entropy_sign"):
        eddf_mask(torch.arange(4.0), 0.0, entropy_sign=0.5)


# ------------------------------------------------------------------ the samples a fine-tune keeps
def test_select_samples_is_eddf_when_eddf_keeps_enough():
    g = torch.randn(500, generator=torch.Generator().manual_seed(1))
    for entropy, sign in itertools.product((-4.0, 0.0, 4.0), (1.0, -1.0)):
        keep, floored = select_samples(g, entropy, entropy_sign=sign, min_keep_fraction=0.0)
        assert keep.tolist() == eddf_mask(g, entropy, entropy_sign=sign).tolist() and not floored
        # EDDF keeps between 25% (sigma -> 1) and 50% (sigma -> 0) of normal returns: a 10% floor never applies.
        keep, floored = select_samples(g, entropy, entropy_sign=sign, min_keep_fraction=0.1)
        assert keep.tolist() == eddf_mask(g, entropy, entropy_sign=sign).tolist() and not floored


def test_select_samples_keeps_the_highest_returns_when_returns_saturate():
    # A reacher-like D_f: a third of the samples far from the target, the rest at or near the maximum of 100.
    gen = torch.Generator().manual_seed(2)
    g = torch.cat([torch.rand(300, generator=gen) * 10, torch.full((500,), 100.0), 95 + 5 * torch.rand(200,
                                                                                                    generator=gen)])
    g = g[torch.randperm(g.numel(), generator=gen)]
    assert not eddf_mask(g, -4.0, entropy_sign=-1.0).any()  # tau above the maximum: eq. 5 keeps nothing
    keep, floored = select_samples(g, -4.0, entropy_sign=-1.0, min_keep_fraction=0.1)
    assert floored and int(keep.sum()) == 100
    assert bool((g[keep] == 100.0).all())  # the highest returns (ties at the maximum: the earliest)...
    assert keep.nonzero().reshape(-1).tolist() == (g == 100.0).nonzero().reshape(-1)[:100].tolist()
    keep, floored = select_samples(g, -4.0, entropy_sign=-1.0, min_keep_fraction=0.0)
    assert not keep.any() and not floored  # ...and 0 is eq. 5 alone
    # The floor counts finite returns and never keeps a non-finite one.
    g[:10] = float("nan")
    keep, _ = select_samples(g, -4.0, entropy_sign=-1.0, min_keep_fraction=1.0)
    assert int(keep.sum()) == 990 and not keep[:10].any()


def test_select_samples_random_filter_keeps_as_many_at_random():
    g = torch.cat([torch.zeros(50), torch.full((150,), 100.0)])
    floored_top = select_samples(g, -4.0, entropy_sign=-1.0, min_keep_fraction=0.25)[0]
    draws = [select_samples(g, -4.0, entropy_sign=-1.0, min_keep_fraction=0.25, filter="random",
                            rng=np.random.default_rng(seed))[0] for seed in (0, 0, 1)]
    assert all(int(d.sum()) == int(floored_top.sum()) == 50 for d in draws)
    assert draws[0].tolist() == draws[1].tolist() and draws[0].tolist() != draws[2].tolist()
    # 50 of 200 at random: the low-return quarter holds ~12.5 of them; P(none) = C(150,50)/C(200,50) < 1e-6.
    assert 0 < int(draws[0][:50].sum()) < 50


def test_select_samples_bad_input():
    with pytest.raises(ValueError, match="min_keep_fraction"):
        select_samples(torch.arange(4.0), 0.0, min_keep_fraction=1.5)
    with pytest.raises(ValueError, match="filter='best'"):
        select_samples(torch.arange(4.0), 0.0, filter="best")
    with pytest.raises(ValueError, match="rng"):
        select_samples(torch.arange(4.0), 0.0, filter="random")


# ------------------------------------------------------------------ RALW (eq. 6)
def test_ralw_weights_by_hand():
    # min-max onto [-1, 1]: 1 → -1, 2 → -0.5, 3 → 0, 5 → 1; w = max(ḡ, 0).
    assert ralw_weights(torch.tensor([1.0, 2.0, 3.0, 5.0])).tolist() == [0.0, 0.0, 0.0, 1.0]
    assert torch.allclose(ralw_weights(torch.tensor([0.0, 8.0, 6.0])), torch.tensor([0.0, 1.0, 0.5]))
    assert ralw_weights(torch.tensor([4.0, 4.0])).tolist() == [1.0, 1.0]  # none worse than another
    assert ralw_weights(torch.tensor([-3.0])).tolist() == [1.0]
    assert ralw_weights(torch.zeros(0)).shape == (0,)
    with pytest.raises(ValueError, match="finite"):
        ralw_weights(torch.tensor([1.0, float("nan")]))


def test_ralw_weights_are_monotone_in_the_return():
    g = torch.randn(200, generator=torch.Generator().manual_seed(1))
    w = ralw_weights(g)
    order = g.argsort()
    assert bool((w[order].diff() >= 0).all()) and w.min() == 0 and w.max() == 1


def test_ralw_token_nll_by_hand():
    # Two samples, vocab 3; sample 0 has two answer tokens, sample 1 one (its first position is the prompt).
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]], [[1 / 3] * 3, [0.2, 0.2, 0.6]]]))
    labels = torch.tensor([[0, 1], [-100, 2]])
    weights = torch.tensor([1.0, 0.5])
    expected = (1.0 * (-math.log(0.5) - math.log(0.8)) + 0.5 * -math.log(0.6)) / 3  # N_v = 3 valid tokens
    assert ralw_token_nll(logits, labels, weights, label_smoothing=0.0).item() == pytest.approx(expected, rel=1e-5)
    # Label smoothing ε: (1 - ε)·NLL + ε·mean over the vocabulary of -log p.
    eps = 0.1
    smooth = lambda p, y: (1 - eps) * -math.log(p[y]) + eps * sum(-math.log(x) for x in p) / 3  # noqa: E731
    expected = (smooth([0.5, 0.25, 0.25], 0) + smooth([0.1, 0.8, 0.1], 1) + 0.5 * smooth([0.2, 0.2, 0.6], 2)) / 3
    assert ralw_token_nll(logits, labels, weights, label_smoothing=eps).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="label_smoothing"):
        ralw_token_nll(logits, labels, weights, label_smoothing=1.0)


# ------------------------------------------------------------------ schedule
def test_progressive_schedule():
    assert list(itertools.islice(progressive_schedule(), 5)) == [5000, 15000, 45000, 165000, 765000]
    assert list(itertools.islice(progressive_schedule(10), 4)) == [10, 30, 90, 330]
    for bad in (0, -5):
        with pytest.raises(ValueError, match="psi0"):
            next(progressive_schedule(bad))
    with pytest.raises(TypeError, match="psi0"):
        next(progressive_schedule(5000.0))


# ------------------------------------------------------------------ the loss (eq. 4)
def test_prior_penalty_by_hand_and_without_valid_rows():
    prior = torch.tensor([[0.5, 0.5], [9.0, 9.0], [0.0, -1.0]])
    action = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], requires_grad=True)
    valid = torch.tensor([True, False, True])
    assert prior_penalty(prior, action, valid).item() == pytest.approx((0.5 + 1.0) / 2)
    none = prior_penalty(prior, action, torch.zeros(3, dtype=torch.bool))
    assert none.item() == 0.0 and not torch.isnan(none)


def _sac_loss(prior_coeff=2.0):
    from tensordict.nn import NormalParamExtractor, TensorDictModule
    from torchrl.data import Bounded
    from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator

    from torchrl_vlm.covr import COVRSACLoss

    torch.manual_seed(0)
    spec = Bounded(-1, 1, shape=(2,))
    actor = ProbabilisticActor(
        TensorDictModule(
            torch.nn.Sequential(MLP(in_features=3, out_features=4, num_cells=[16]), NormalParamExtractor()),
            in_keys=["observation"],
            out_keys=["loc", "scale"],
        ),
        in_keys=["loc", "scale"],
        spec=spec,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": spec.space.low, "high": spec.space.high},
    )
    qvalue = ValueOperator(MLP(in_features=5, out_features=1, num_cells=[16]), in_keys=["action", "observation"])
    return COVRSACLoss(actor, qvalue, num_qvalue_nets=2, prior_coeff=prior_coeff)


def _batch(valid):
    n = len(valid)
    return TensorDict(
        {
            "observation": torch.randn(n, 3),
            "action": torch.rand(n, 2) * 2 - 1,
            ("next", "observation"): torch.randn(n, 3),
            ("next", "reward"): torch.randn(n, 1),
            ("next", "done"): torch.zeros(n, 1, dtype=torch.bool),
            ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool),
            "vlm_action": torch.full((n, 2), 0.9),
            "vlm_action_valid": torch.tensor(valid),
        },
        [n],
    )


def test_covr_sac_loss_pulls_the_actor_only_on_rows_with_a_prior():
    loss = _sac_loss()
    out = loss(_batch([True, False, True, False]))
    assert out["loss_prior"] > 0 and out["prior_valid_fraction"].item() == 0.5
    out["loss_prior"].backward()
    actor_grads = [p.grad for p in loss.actor_network_params.values(True, True) if p.grad is not None]
    assert actor_grads and any(g.abs().sum() > 0 for g in actor_grads)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in loss.qvalue_network_params.values(True, True))
    # No valid row, no column, or λ = 0: a zero term, never NaN; SAC's own terms unchanged.
    assert _sac_loss()(_batch([False] * 4))["loss_prior"].item() == 0.0
    assert _sac_loss()(_batch([True] * 4).exclude("vlm_action", "vlm_action_valid"))["loss_prior"].item() == 0.0
    assert _sac_loss(0.0)(_batch([True] * 4))["loss_prior"].item() == 0.0
    with pytest.raises(ValueError, match="prior_coeff"):
        _sac_loss(-1.0)


def test_the_prior_term_moves_the_policy_towards_the_prior():
    loss = _sac_loss(prior_coeff=50.0)
    optim = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=1e-2)
    batch = _batch([True] * 64)
    before = loss.actor_network(batch.clone())["loc"].tanh().mean().item()
    for _ in range(100):
        optim.zero_grad()
        loss(batch.clone())["loss_prior"].backward()
        optim.step()
    after = loss.actor_network(batch.clone())["loc"].tanh().mean().item()
    assert abs(after - 0.9) < abs(before - 0.9) and abs(after - 0.9) < 0.2
