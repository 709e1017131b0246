"""MixtureSampler: the distribution it draws from, its schedule, its state, its errors."""
import copy
import math
import pickle

import pytest
import torch
from _state import assert_same_state
from tensordict import TensorDict
from torch import multiprocessing as mp
from torchrl.data import (
    LazyMemmapStorage,
    LazyTensorStorage,
    PrioritizedSampler,
    RandomSampler,
    TensorDictMaxValueWriter,
    TensorDictReplayBuffer,
)

from torchrl_vlm import MixtureSampler, make_replay_buffer, mixture_lambda


def _filled_buffer(sampler, n=1000, capacity=None, batch_size=250):
    rb = make_replay_buffer(capacity or n, sampler=sampler, batch_size=batch_size)
    index = rb.extend(
        TensorDict({"obs": torch.arange(n).float().unsqueeze(-1), "vlm_priority": torch.zeros(n)}, [n])
    )
    return rb, index


def _chi2_bound(dof: int, sigmas: float = 5.0) -> float:
    # chi2 with k dof has mean k and sd sqrt(2k); 5 sd is far beyond any seed's luck.
    return dof + sigmas * math.sqrt(2 * dof)


@pytest.mark.parametrize("lam_max", [0.0, 0.25, 0.5, 0.9])
def test_empirical_distribution_matches_q_t(lam_max):
    torch.manual_seed(0)
    n, n_pos, draws = 1000, 100, 200_000
    sampler = MixtureSampler(lam_max=lam_max, warmup=0)
    rb, index = _filled_buffer(sampler, n)
    positive = index[torch.randperm(n)[:n_pos]]
    rb.update_priority(positive, torch.ones(n_pos))

    counts = torch.zeros(n)
    from_priority = 0
    for _ in range(draws // 250):
        batch = rb.sample()
        counts += torch.bincount(batch["index"], minlength=n).float()
        from_priority += int(batch["from_priority"].sum())
        assert float(batch["mixture_lambda"][0]) == pytest.approx(lam_max)

    is_pos = torch.zeros(n, dtype=torch.bool)
    is_pos[positive] = True
    q = torch.full((n,), (1 - lam_max) / n)
    q[is_pos] += lam_max / n_pos  # VLM-RB eq. (2)
    expected = q * draws
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < _chi2_bound(n - 1), chi2
    # The prioritised share is exactly λ (remainders are carried between batches).
    assert abs(from_priority - lam_max * draws) <= 1
    # Mass on the positive set: λ·M exactly plus Binomial((1-λ)M, n_pos/n).
    p = n_pos / n
    uniform_draws = (1 - lam_max) * draws
    mean = lam_max * draws + uniform_draws * p
    sd = math.sqrt(uniform_draws * p * (1 - p))
    assert abs(float(counts[is_pos].sum()) - mean) < 5 * sd + 1


def test_lambda_schedule_follows_transitions_written():
    sampler = MixtureSampler(lam_max=0.5, warmup=1000)
    rb = make_replay_buffer(5000, sampler=sampler, batch_size=10)
    data = TensorDict({"obs": torch.zeros(250, 1), "vlm_priority": torch.zeros(250)}, [250])
    seen = []
    for _ in range(6):
        rb.extend(data)
        seen.append(sampler.lam)
    assert seen == pytest.approx([0.125, 0.25, 0.375, 0.5, 0.5, 0.5])
    assert mixture_lambda(0, 0.5, 1000) == 0.0
    assert mixture_lambda(10, 0.5, 0) == 0.5
    assert mixture_lambda(10, None, 1000) == 1.0


def test_pure_priority_draws_only_positives():
    torch.manual_seed(1)
    sampler = MixtureSampler(lam_max=None, warmup=10_000)
    rb, index = _filled_buffer(sampler, 200)
    rb.update_priority(index[:5], 1.0)
    batch = rb.sample()
    assert bool(batch["from_priority"].all())
    assert set(batch["index"].tolist()) <= set(range(5))


def test_uniform_fallback_without_positives():
    torch.manual_seed(2)
    sampler = MixtureSampler(lam_max=None)
    rb, _ = _filled_buffer(sampler, 100, batch_size=100)
    counts = torch.zeros(100)
    for _ in range(200):
        batch = rb.sample()
        assert not bool(batch["from_priority"].any())
        counts += torch.bincount(batch["index"], minlength=100).float()
    chi2 = float(((counts - 200) ** 2 / 200).sum())
    assert chi2 < _chi2_bound(99)
    assert sampler.stats()["priority_fraction"] == 0.0


def test_overwritten_slots_lose_their_priority():
    sampler = MixtureSampler(lam_max=None)
    rb, index = _filled_buffer(sampler, 100)
    rb.update_priority(index[:10], torch.ones(10))
    assert sampler.num_positive == 10
    # The round-robin writer wraps around and overwrites slots 0..4.
    rb.extend(TensorDict({"obs": torch.zeros(5, 1), "vlm_priority": torch.zeros(5)}, [5]))
    assert sampler.num_positive == 5
    assert sampler.priority(index[:10]).tolist() == [0.0] * 5 + [1.0] * 5
    torch.manual_seed(0)
    assert set(rb.sample(500)["index"].tolist()) == set(range(5, 10))


def test_positive_set_stays_consistent_under_random_writes():
    gen = torch.Generator().manual_seed(3)
    sampler = MixtureSampler(lam_max=0.5, max_capacity=64)
    reference = torch.zeros(64)
    for step in range(300):
        index = torch.randint(64, (int(torch.randint(1, 20, (1,), generator=gen)),), generator=gen)
        if step % 7 == 0:
            sampler.extend(index)
            reference[index] = 0
        else:
            prio = (torch.rand(index.numel(), generator=gen) < 0.5).float()
            sampler.update_priority(index, prio)
            # duplicates: the last value written wins
            for i, p in zip(index.tolist(), prio.tolist(), strict=True):
                reference[i] = p
        members = sampler._pos_list[: sampler.num_positive]
        assert sorted(members.tolist()) == torch.nonzero(reference).squeeze(-1).tolist()
        assert torch.equal(sampler._pos_slot[members], torch.arange(sampler.num_positive))


def test_td_boost_is_proportional_to_priority_times_td_error():
    torch.manual_seed(4)
    sampler = MixtureSampler(lam_max=None, td_boost=True, td_eps=1e-3)
    rb, index = _filled_buffer(sampler, 100, batch_size=500)
    rb.update_priority(index[:4], torch.ones(4))
    td = torch.tensor([0.1, 0.5, 1.0, 2.0])
    sampler.update_td_error(index[:4], -td)  # the sign of δ does not matter
    draws = 100_000
    counts = torch.zeros(100)
    for _ in range(draws // 500):
        counts += torch.bincount(rb.sample()["index"], minlength=100).float()
    assert counts[4:].sum() == 0
    weight = td + 1e-3
    expected = weight / weight.sum() * draws
    chi2 = float(((counts[:4] - expected) ** 2 / expected).sum())
    assert chi2 < _chi2_bound(3)


def test_non_binary_priorities_switch_to_the_sum_tree():
    torch.manual_seed(5)
    sampler = MixtureSampler(lam_max=None)
    rb, index = _filled_buffer(sampler, 10, batch_size=1000)
    rb.update_priority(index[:2], torch.tensor([1.0, 3.0]))
    counts = torch.bincount(rb.sample()["index"], minlength=10).float()
    for _ in range(49):
        counts += torch.bincount(rb.sample()["index"], minlength=10).float()
    assert counts[2:].sum() == 0
    # Binomial(50000, 1/4): sd ≈ 97
    assert abs(counts[0].item() - 12_500) < 5 * 97


def test_importance_weights_follow_q_t():
    sampler = MixtureSampler(lam_max=0.5, importance_weights=True, beta=1.0)
    rb, index = _filled_buffer(sampler, 100, batch_size=64)
    rb.update_priority(index[:10], 1.0)
    batch = rb.sample()
    q = torch.where(batch["index"] < 10, 0.5 / 10 + 0.5 / 100, torch.tensor(0.5 / 100))
    w = 1.0 / (100 * q)
    torch.testing.assert_close(batch["priority_weight"], w / w.max())
    assert not MixtureSampler().importance_weights


def test_state_round_trip_restores_lambda_and_priorities(tmp_path):
    sampler = MixtureSampler(lam_max=0.5, warmup=4000, td_boost=True)
    rb, index = _filled_buffer(sampler, 1000)
    rb.update_priority(index[:50], 1.0)
    sampler.update_td_error(index[:50], torch.linspace(0, 1, 50))
    rb.sample()

    clone = MixtureSampler()
    clone.load_state_dict(sampler.state_dict())
    assert clone.lam == sampler.lam == pytest.approx(0.125)
    assert clone.num_positive == 50 and clone.td_boost
    torch.manual_seed(7)
    a = sampler.sample(rb.storage, 64)[0]
    torch.manual_seed(7)
    b = clone.sample(rb.storage, 64)[0]
    assert torch.equal(a, b)

    # The whole buffer, through TorchRL's own checkpointing.
    rb.dumps(tmp_path / "rb")
    restored = make_replay_buffer(1000, sampler=MixtureSampler(), batch_size=250)
    restored.loads(tmp_path / "rb")
    assert restored.sampler.lam == pytest.approx(0.125)
    assert restored.sampler.num_positive == 50
    every_slot = torch.arange(1000)
    assert torch.equal(restored.sampler.priority(every_slot), sampler.priority(every_slot))
    assert_same_state(restored.sampler.state_dict(), sampler.state_dict())


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"lam_max": 1.5}, ValueError),
        ({"lam_max": -0.1}, ValueError),
        ({"lam_max": float("nan")}, ValueError),
        ({"lam_max": "0.5"}, TypeError),
        ({"warmup": -1}, ValueError),
        ({"warmup": 1.5}, TypeError),
    ],
)
def test_bad_constructor_arguments(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        MixtureSampler(**kwargs)


def test_bad_priorities():
    sampler = MixtureSampler()
    rb, index = _filled_buffer(sampler, 10)
    with pytest.raises(ValueError, match="finite"):
        rb.update_priority(index[:2], torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match=">= 0"):
        rb.update_priority(index[:2], torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="one value per index"):
        rb.update_priority(index[:3], torch.ones(2))
    assert sampler.num_positive == 0  # nothing was half-written
    with pytest.raises(RuntimeError, match="td_boost=True"):
        sampler.update_td_error(index[:1], 1.0)


def test_make_replay_buffer_choices_and_generations():
    assert isinstance(make_replay_buffer(10, sampler="uniform").sampler, RandomSampler)
    per = make_replay_buffer(10, sampler="per", batch_size=2)
    assert isinstance(per.sampler, PrioritizedSampler) and per.priority_key == "td_error"
    with pytest.raises(ValueError, match="sampler must be one of"):
        make_replay_buffer(10, sampler="vlm")
    with pytest.raises(ValueError, match="storage must be one of"):
        make_replay_buffer(10, storage="disk")
    with pytest.raises(ValueError, match="capacity"):
        make_replay_buffer(0)

    rb = make_replay_buffer(4, sampler=MixtureSampler(), batch_size=2)
    data = TensorDict({"obs": torch.zeros(4, 1), "vlm_priority": torch.zeros(4)}, [4])
    index = rb.extend(data)
    generation = rb.writer.generations_of(index)
    rb.extend(data[:2])  # overwrites slots 0 and 1
    result = rb.update_if_present(
        index=index, generation=generation, patch={"vlm_priority": torch.ones(4)}
    )
    assert result.updated.tolist() == [False, False, True, True]


def test_memmap_storage(tmp_path):
    sampler = MixtureSampler(lam_max=None)
    rb = make_replay_buffer(20, sampler=sampler, storage="memmap", scratch_dir=tmp_path, batch_size=8)
    index = rb.extend(TensorDict({"obs": torch.zeros(20, 1), "vlm_priority": torch.zeros(20)}, [20]))
    rb.update_priority(index[3:4], 1.0)
    assert rb.sample()["index"].tolist() == [3] * 8
    assert float(sampler.priority(3)) == 1.0


# ---------------------------------------------------------------------------
# TorchRL's sampler contract, one defect at a time. These use TorchRL's own
# buffers (not make_replay_buffer) so that they test the sampler alone.
# ---------------------------------------------------------------------------
def _rows(n, **columns):
    return TensorDict({"obs": torch.arange(n).float().unsqueeze(-1), **columns}, [n])


def _td_rb(sampler, capacity=10, batch_size=None, **kwargs):
    return TensorDictReplayBuffer(
        storage=LazyTensorStorage(capacity), sampler=sampler, batch_size=batch_size, **kwargs
    )


def _snapshot(sampler):
    return copy.deepcopy(sampler.state_dict())


# 1. One owner of the priority column: the sampler keeps its own state only.
def test_sampler_never_touches_the_storage():
    sampler = MixtureSampler(lam_max=None)
    rb = _td_rb(sampler, 20, batch_size=200, priority_key="vlm_priority")
    index = rb.extend(_rows(20, vlm_priority=torch.zeros(20)))
    before = rb[:].clone()
    sampler.update_priority(index[:3], 1.0, storage=rb.storage)  # storage is accepted and ignored
    rb.update_priority(index[3:5], torch.ones(2))
    assert torch.equal(rb[:]["vlm_priority"], before["vlm_priority"])  # the buffer owns the column
    assert sampler.priority(index[:6]).tolist() == [1.0] * 5 + [0.0]
    assert sampler.priority(int(index[0])).shape == ()
    assert sampler.num_positive == 5 and sampler.priority_key == "vlm_priority"
    torch.manual_seed(0)
    assert set(rb.sample()["index"].tolist()) <= set(index[:5].tolist())

    # A storage without the column is no concern of the sampler's.
    rb2 = _td_rb(MixtureSampler(lam_max=None), 10, batch_size=50)
    index2 = rb2.extend(_rows(10))
    rb2.update_priority(index2[7:8], 1.0)
    assert rb2.sample()["index"].tolist() == [int(index2[7])] * 50


# 2. Rejected rows (TensorDictMaxValueWriter's index -1).
def test_rejected_rows_leave_the_sampler_and_its_last_slot_alone():
    # max_capacity == storage size: the sampler's slot -1 is the storage's slot 3.
    sampler = MixtureSampler(lam_max=0.5, warmup=100, td_boost=True, max_capacity=4)
    rb = TensorDictReplayBuffer(
        storage=LazyTensorStorage(4),
        sampler=sampler,
        writer=TensorDictMaxValueWriter(rank_key="rank"),
        priority_key="vlm_priority",
    )
    index = rb.extend(_rows(6, rank=torch.arange(6.0)))
    accepted = index[index >= 0]
    assert (index < 0).sum() == 2 and accepted.numel() == 4
    assert sampler.transitions_written == 4 and sampler.lam == pytest.approx(0.5 * 4 / 100)
    rb.update_priority(index, torch.ones(6))  # the buffer hands the -1s on as they are
    sampler.update_td_error(index, torch.full((6,), 2.0))
    assert sampler.num_positive == 4
    assert sampler.state_dict()["td_error"].tolist() == [2.0] * 4

    snapshot = _snapshot(sampler)
    assert rb.extend(_rows(3, rank=torch.full((3,), -1.0))).tolist() == [-1, -1, -1]
    assert rb.add(TensorDict({"obs": torch.zeros(1), "rank": torch.tensor(-1.0)}, [])) is None
    assert_same_state(sampler.state_dict(), snapshot)

    # Rows that carry the priority column: TorchRL's extend updates them with the -1s in.
    index = rb.extend(_rows(2, rank=torch.tensor([100.0, -1.0]), vlm_priority=torch.tensor([1.0, 1.0])))
    assert int(index[1]) == -1 and int(index[0]) >= 0
    assert sampler.transitions_written == 5
    assert sampler.priority(torch.arange(4)).tolist() == [1.0] * 4
    td = sampler.state_dict()["td_error"]
    assert math.isnan(td[int(index[0])]) and int(torch.isnan(td).sum()) == 1


# 3. Priorities laid out [N, 1], as TorchRL's td_error usually is.
def test_priorities_and_td_errors_shaped_n_by_1():
    index = torch.arange(6)
    prio = torch.tensor([1.0, 0.0, 1.0, 2.0, 0.0, 1.0])
    td = torch.linspace(-1.0, 2.0, 6)
    flat, column = MixtureSampler(td_boost=True), MixtureSampler(td_boost=True)
    for sampler, p, d in ((flat, prio, td), (column, prio[:, None], td[:, None])):
        sampler.extend(index)
        sampler.update_priority(index, p)
        sampler.update_td_error(index, d)
    assert_same_state(flat.state_dict(), column.state_dict())

    # Through TorchRL's extend, with a priority column of shape [N, 1].
    sampler = MixtureSampler(lam_max=None)
    rb = _td_rb(sampler, 6, priority_key="vlm_priority")
    rb.extend(_rows(6, vlm_priority=prio[:, None]))
    assert sampler.priority(index).tolist() == prio.tolist()

    # Anything else with the right number of elements is still refused.
    with pytest.raises(ValueError, match=r"priority must be a scalar or hold one value per index.*\[3, 2\]"):
        flat.update_priority(index, torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"priority .*\[6, 2\]"):
        flat.update_priority(index, torch.ones(6, 2))
    with pytest.raises(ValueError, match=r"td_error must be a scalar or hold one value per index.*\[2, 3\]"):
        flat.update_td_error(index, torch.ones(2, 3))
    assert_same_state(flat.state_dict(), column.state_dict())


# 4. A refused update changes nothing, capacity included.
@pytest.mark.parametrize("td_boost", [False, True])
def test_a_refused_update_leaves_the_sampler_unchanged(td_boost):
    sampler = MixtureSampler(lam_max=0.5, td_boost=td_boost, max_capacity=16)
    sampler.extend(torch.arange(16))
    sampler.update_priority(torch.arange(4), 1.0)
    if td_boost:
        sampler.update_td_error(torch.arange(2), torch.tensor([0.5, 3.0]))
    snapshot = _snapshot(sampler)
    far = torch.tensor([1, 5000])  # valid, but it would grow the state to 5000 slots
    bad_updates = [
        (ValueError, "finite", lambda: sampler.update_priority(far, torch.tensor([1.0, float("nan")]))),
        (ValueError, "finite", lambda: sampler.update_priority(far, torch.tensor([1.0, 1e40], dtype=torch.float64))),
        (ValueError, ">= 0", lambda: sampler.update_priority(far, torch.tensor([1.0, -1.0]))),
        (ValueError, "one value per index", lambda: sampler.update_priority(far, torch.ones(3))),
        (TypeError, "index must hold integers", lambda: sampler.update_priority(torch.tensor([1.0, 2.0]), 1.0)),
        (ValueError, "index must be >= 0", lambda: sampler.update_priority(torch.tensor([-3, 5000]), 1.0)),
        (ValueError, "1-D storages", lambda: sampler.update_priority(torch.tensor([[1, 2]]), 1.0)),
    ]
    if td_boost:
        bad_updates += [
            (ValueError, "td_error must be finite", lambda: sampler.update_td_error(far, torch.tensor([0, math.inf]))),
            (ValueError, "td_error", lambda: sampler.update_td_error(far, torch.ones(3))),
            (TypeError, "index must hold integers", lambda: sampler.update_td_error(torch.tensor([0.5]), 1.0)),
        ]
    else:
        bad_updates.append((RuntimeError, "td_boost=True", lambda: sampler.update_td_error(far, 1.0)))
    for error, match, update in bad_updates:
        with pytest.raises(error, match=match):
            update()
        assert_same_state(sampler.state_dict(), snapshot)
    assert sampler.num_positive == 4


# 5. Multi-dimensional storages are refused clearly.
def test_multidimensional_storage_is_refused_at_extend_and_sample():
    sampler = MixtureSampler()
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(100, ndim=2), sampler=sampler, batch_size=4)
    message = r"MixtureSampler supports 1-D storages only.*ndim=2"
    with pytest.raises(ValueError, match=message):
        rb.extend(TensorDict({"obs": torch.zeros(4, 5, 1)}, [4, 5]))
    assert sampler.transitions_written == 0
    with pytest.raises(ValueError, match=message):
        rb.sample()


# 6. Sending the sampler to another process is refused, as PrioritizedSampler does.
def _child(obj):  # pragma: no cover - never runs: pickling fails first
    pass


def _start_in_spawned_process(obj):
    proc = mp.get_context("spawn").Process(target=_child, args=(obj,))
    try:
        proc.start()
    finally:
        if proc.pid is not None:  # it did start (the defect): do not leave it behind
            proc.join(60)


def test_sending_the_sampler_to_another_process_is_refused():
    sampler = MixtureSampler(td_boost=True)
    sampler.extend(torch.arange(4))
    with pytest.raises(RuntimeError, match="cannot be shared between processes"):
        _start_in_spawned_process(sampler)
    # ... also inside a buffer whose storage could be shared.
    rb = TensorDictReplayBuffer(storage=LazyMemmapStorage(10), sampler=MixtureSampler(), batch_size=2)
    rb.extend(_rows(4))
    with pytest.raises(RuntimeError, match="MixtureSampler.*cannot be shared between processes"):
        _start_in_spawned_process(rb)


@pytest.mark.parametrize("td_boost", [False, True])
def test_pickle_and_deepcopy_within_a_process_copy_the_state(td_boost):
    sampler = MixtureSampler(lam_max=0.5, warmup=40, td_boost=td_boost)
    rb = _td_rb(sampler, 20, batch_size=8, generator=torch.Generator().manual_seed(0))
    index = rb.extend(_rows(20))
    rb.update_priority(index[:5], torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0]))
    if td_boost:
        sampler.update_td_error(index[:2], torch.tensor([0.5, 2.0]))
    rb.sample()
    for clone in (pickle.loads(pickle.dumps(sampler)), copy.deepcopy(sampler)):
        assert clone._rng is None  # the buffer's generator stays with the buffer, as in TorchRL
        assert_same_state(clone.state_dict(), sampler.state_dict())
        clone.update_priority(index[5:6], 1.0)  # independent copies
        assert clone.num_positive == sampler.num_positive + 1
        torch.manual_seed(3)
        a = clone.sample(rb.storage, 64)[0]
        torch.manual_seed(3)
        b = copy.deepcopy(clone).sample(rb.storage, 64)[0]
        assert torch.equal(a, b)


# 7. TD boosting: a new positive slot keeps the largest |δ| of the moment it turned positive.
def _shares(sampler, rb, draws):
    counts = torch.zeros(len(rb))
    for _ in range(draws // 1000):
        counts += torch.bincount(sampler.sample(rb.storage, 1000)[0], minlength=len(rb)).float()
    return counts


def test_td_boost_follows_pers_rule_for_slots_without_td_error():
    eps = 1e-3
    sampler = MixtureSampler(lam_max=None, td_boost=True, td_eps=eps, importance_weights=True, beta=1.0)
    rb = _td_rb(sampler, 10)
    index = rb.extend(_rows(10))
    rb.update_priority(index[[0, 1, 5]], 1.0)  # no |δ| seen yet: 1.0 each
    sampler.update_td_error(index[[0]], 3.0)  # max |δ| = 3
    rb.update_priority(index[[2]], 1.0)  # assigned 3
    rb.update_priority(index[[5]], 0.0)
    sampler.update_td_error(index[[3]], -5.0)  # a zero-priority slot: max |δ| = 5
    rb.update_priority(index[[3]], 1.0)  # its own |δ| = 5
    rb.update_priority(index[[4]], 2.0)  # p = 2, assigned 5
    rb.update_priority(index[[5]], 1.0)  # positive again: assigned 5
    rb.update_priority(index[[1]], 1.0)  # a rewrite: slot 1 was positive already and keeps 1
    # The oracle, by hand: p(i) · (|δ_i| + ε) with the |δ| each slot holds.
    weight = torch.zeros(10, dtype=torch.float64)
    weight[:6] = torch.tensor([3.0, 1.0, 3.0, 5.0, 2 * 5.0, 5.0]) + torch.tensor([1, 1, 1, 1, 2, 1]) * eps
    share = weight / weight.sum()

    def check(s, draws, seed):
        torch.manual_seed(seed)
        counts = _shares(s, rb, draws).double()
        assert counts[6:].sum() == 0
        expected = share[:6] * draws
        chi2 = float(((counts[:6] - expected) ** 2 / expected).sum())
        assert chi2 < _chi2_bound(5), (chi2, (counts[:6] / draws).tolist(), share[:6].tolist())

    check(sampler, 60_000, 0)
    # Importance weights follow the same weights: (N · q(i))^-1, normalised by the batch maximum.
    idx, info = sampler.sample(rb.storage, 200)
    w = 1.0 / (10 * share[idx])
    torch.testing.assert_close(info["priority_weight"].double(), w / w.max(), rtol=1e-5, atol=0)
    # A checkpoint, or growing the state, keeps each slot's |δ|.
    clone = MixtureSampler()
    clone.load_state_dict(sampler.state_dict())
    check(clone, 30_000, 1)
    sampler.reserve(5000)
    check(sampler, 30_000, 2)


# 8. loads reads tensors only (torch.load(weights_only=True)).
_UNPICKLED = []


class _Payload:
    def __reduce__(self):
        return (_UNPICKLED.append, ("code ran",))


def test_loads_refuses_anything_but_tensors_and_numbers(tmp_path):
    sampler = MixtureSampler(lam_max=0.5, warmup=10, td_boost=True)
    sampler.extend(torch.arange(8))
    sampler.update_priority(torch.arange(3), 1.0)
    sampler.update_td_error(torch.arange(2), torch.tensor([0.25, 4.0]))
    sampler.dumps(tmp_path / "ok")
    assert torch.load(tmp_path / "ok" / "mixture_sampler.pt", weights_only=True).keys() == sampler.state_dict().keys()
    clone = MixtureSampler()
    clone.loads(tmp_path / "ok")
    assert_same_state(clone.state_dict(), sampler.state_dict())

    (tmp_path / "bad").mkdir()
    torch.save({**sampler.state_dict(), "extra": _Payload()}, tmp_path / "bad" / "mixture_sampler.pt")
    with pytest.raises(pickle.UnpicklingError):
        MixtureSampler().loads(tmp_path / "bad")
    assert _UNPICKLED == []


def test_td_boost_stats_compare_the_positive_slots_td_errors_with_all():
    from tensordict import TensorDict
    from torchrl.data import LazyTensorStorage

    from torchrl_vlm.replay.buffer import CollectorReplayBuffer

    sampler = MixtureSampler(td_boost=True, warmup=10)
    rb = CollectorReplayBuffer(storage=LazyTensorStorage(100), sampler=sampler, batch_size=8)
    rb.extend(TensorDict({"observation": torch.randn(50, 3)}, [50]))
    assert math.isnan(sampler.stats()["td_error_mean"])  # no TD error yet
    rb.update_priority(torch.arange(10), torch.ones(10))
    sampler.update_td_error(torch.arange(5, 20), torch.linspace(0.1, 1.5, 15))
    stats = sampler.stats()
    # Slots 5..19 have |δ| 0.1..1.5; of them, 5..9 are positive: 0.1..0.5.
    assert stats["positive_slots"] == 10
    assert stats["td_error_mean"] == pytest.approx(0.8) and stats["td_error_positive_mean"] == pytest.approx(0.3)
