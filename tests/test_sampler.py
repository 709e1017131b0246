"""MixtureSampler: the distribution it draws from, its schedule, its state, its errors."""
import math

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import PrioritizedSampler, RandomSampler

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
    assert rb.storage._storage["vlm_priority"][:10].tolist() == [0.0] * 5 + [1.0] * 5
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
            for i, p in zip(index.tolist(), prio.tolist()):
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


def test_td_boost_new_positives_use_the_largest_td_error():
    sampler = MixtureSampler(lam_max=None, td_boost=True, td_eps=1e-3)
    rb, index = _filled_buffer(sampler, 10)
    rb.update_priority(index[:2], 1.0)
    sampler.update_td_error(index[:1], 3.0)
    rb.update_priority(index[2:3], 1.0)  # no TD error yet
    w = sampler._weights(index[:3], sampler._prio[index[:3]])
    assert w.tolist() == pytest.approx([3.001, 3.001, 3.001])


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
    assert torch.equal(restored.storage._storage["vlm_priority"], rb.storage._storage["vlm_priority"])


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


def test_bad_priorities_and_missing_column():
    sampler = MixtureSampler()
    rb, index = _filled_buffer(sampler, 10)
    with pytest.raises(ValueError, match="finite"):
        rb.update_priority(index[:2], torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match=">= 0"):
        rb.update_priority(index[:2], torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="one value per index"):
        rb.update_priority(index[:3], torch.ones(2))
    assert sampler.num_positive == 0  # nothing was half-written

    rb2 = make_replay_buffer(10, sampler=MixtureSampler(), batch_size=2)
    idx = rb2.extend(TensorDict({"obs": torch.zeros(10, 1)}, [10]))
    with pytest.raises(ValueError, match="no priority column 'vlm_priority'"):
        rb2.update_priority(idx[:2], 1.0)
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
    assert float(rb.storage._storage["vlm_priority"][3]) == 1.0
