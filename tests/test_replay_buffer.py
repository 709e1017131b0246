"""CollectorReplayBuffer: one rb.extend(batch) and one rb.update_tensordict_priority(sample) for every sampler."""
import pytest
import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, TensorDictMaxValueWriter

from torchrl_vlm import CollectorReplayBuffer, MixtureSampler, NStepReturns, make_replay_buffer


def _collector_batch(n_envs=2, steps=10, seed=0):
    """A batch laid out as a collector yields it: [n_envs, T], frames and missions included."""
    g = torch.Generator().manual_seed(seed)
    done = torch.zeros(n_envs, steps, 1, dtype=torch.bool)
    done[0, 4] = True  # env 0's episode ends mid-batch
    return TensorDict(
        {
            "observation": torch.randn(n_envs, steps, 3, generator=g),
            "action": torch.randint(3, (n_envs, steps), generator=g),
            "pixels": torch.zeros(n_envs, steps, 8, 8, 3, dtype=torch.uint8),
            "mission": torch.zeros(n_envs, steps, 96, dtype=torch.uint8),
            "next": {
                "observation": torch.randn(n_envs, steps, 3, generator=g),
                "pixels": torch.zeros(n_envs, steps, 8, 8, 3, dtype=torch.uint8),
                "reward": torch.rand(n_envs, steps, 1, generator=g),
                "done": done,
                "terminated": done.clone(),
                "truncated": torch.zeros_like(done),
            },
        },
        [n_envs, steps],
    )


@pytest.mark.parametrize("sampler", ["uniform", "per", "mixture"])
def test_every_buffer_takes_a_collector_batch_the_same_way(sampler):
    sampler = MixtureSampler(lam_max=0.5) if sampler == "mixture" else sampler
    nstep = NStepReturns(gamma=0.9, n_steps=3)
    rb = make_replay_buffer(100, sampler=sampler, batch_size=8, postproc=nstep)
    batch = _collector_batch()
    index = rb.extend(batch)
    assert index.tolist() == list(range(20))  # the batch's flattened order
    stored = rb[:]
    assert not {"pixels", "mission"} & set(stored.keys()) and ("next", "pixels") not in stored.keys(True)
    # n-step returns were computed in the collector layout (per env, along time), then flattened.
    expected = nstep(batch.exclude("pixels", ("next", "pixels"), "mission")).reshape(-1)
    torch.testing.assert_close(stored["next", "reward"], expected["next", "reward"])
    torch.testing.assert_close(stored["next", "done"], expected["next", "done"])
    # A flat batch goes in as it is (no postproc needed for an already flat layout).
    flat = make_replay_buffer(100, sampler=sampler if isinstance(sampler, str) else MixtureSampler())
    flat.extend(batch.reshape(-1))
    assert len(flat) == 20


def test_per_takes_td_errors_as_priorities_from_update_tensordict_priority():
    rb = make_replay_buffer(20, sampler="per", batch_size=20)
    rb.extend(_collector_batch())
    index = torch.arange(20)  # every slot, as a sample covering the buffer would hold them
    rb.update_tensordict_priority(TensorDict({"index": index, "td_error": torch.where(index == 3, 100.0, 1e-6)}, [20]))
    torch.manual_seed(0)
    assert (rb.sample(200)["index"] == 3).float().mean() > 0.9


def test_update_tensordict_priority_feeds_a_td_boosting_mixture_and_leaves_a_binary_one_alone():
    boost = MixtureSampler(lam_max=1.0, td_boost=True)
    rb = make_replay_buffer(20, sampler=boost, batch_size=20)
    rb.extend(_collector_batch())
    rb.update_priority(torch.tensor([3, 7]), torch.ones(2))
    sample = rb.sample()
    # TorchRL's losses write [N, 1] TD errors; slot 7's is ten times slot 3's.
    sample["td_error"] = torch.where(sample["index"] == 7, 10.0, 1.0).unsqueeze(-1)
    rb.update_tensordict_priority(sample)
    torch.manual_seed(0)
    drawn = rb.sample(20_000)["index"]
    share_7 = float((drawn == 7).float().mean())
    expected = (10 + boost.td_eps) / (11 + 2 * boost.td_eps)
    assert abs(share_7 - expected) < 5 * (expected * (1 - expected) / 20_000) ** 0.5

    binary = MixtureSampler(lam_max=1.0)
    rb = make_replay_buffer(20, sampler=binary, batch_size=20)
    rb.extend(_collector_batch())
    rb.update_priority(torch.tensor([3]), torch.ones(1))
    before = binary.state_dict()
    sample = rb.sample()
    sample["td_error"] = torch.rand(20)
    rb.update_tensordict_priority(sample)  # binary VLM priorities come from the VLM, not from TD errors
    after = binary.state_dict()
    for key in ("priority", "td_error"):
        torch.testing.assert_close(after[key], before[key], equal_nan=True, rtol=0, atol=0)
    assert after["written"] == before["written"]


@pytest.mark.parametrize("td_boost", [False, True])
def test_a_rewritten_priority_column_sets_the_priorities_as_torchrls_contract_says(td_boost):
    """TorchRL's test_prb_ndim writes values into a sample's priority key and reads them back from the sampler."""
    sampler = MixtureSampler(lam_max=1.0, td_boost=td_boost)
    rb = make_replay_buffer(20, sampler=sampler, batch_size=20)
    rb.extend(_collector_batch())
    rb.update_priority(torch.tensor([3]), torch.ones(1))
    sample = rb.storage.get(torch.arange(20))  # every slot once, as a batch drawn with λ = 0 could hold them
    sample["index"] = torch.arange(20)
    sample["td_error"] = torch.rand(20, 1)
    before = sampler.state_dict()
    rb.update_tensordict_priority(sample)  # the column as sampled: nothing written
    assert torch.equal(sampler.state_dict()["priority"], before["priority"])
    chosen = sample["index"] % 2 == 0  # rewrite the even slots of the sample to 1, and slot 3 to 0
    sample["vlm_priority"] = torch.where(chosen, 1.0, sample["vlm_priority"])
    sample["vlm_priority"] = torch.where(sample["index"] == 3, 0.0, sample["vlm_priority"])
    rb.update_tensordict_priority(sample)
    even = torch.unique(sample["index"][chosen])
    priority = sampler.state_dict()["priority"]
    assert bool((priority[even] == 1).all()) and torch.equal(rb[:]["vlm_priority"][even], torch.ones(len(even)))
    assert priority[3] == 0 and rb[:]["vlm_priority"][3] == 0
    drawn = rb.sample(2000)["index"]
    assert set(drawn.tolist()) <= set(even.tolist())  # λ = 1: only the positive slots are drawn


@pytest.mark.parametrize("write", ["in_place", "set", "item"])
def test_a_sampled_column_written_after_the_sample_still_sets_the_priorities(write):
    """update_tensordict_priority skips comparing a column left as sample() handed it out; every way of writing
    it afterwards must still reach the sampler."""
    sampler = MixtureSampler(lam_max=1.0)
    rb = make_replay_buffer(20, sampler=sampler, batch_size=8)
    rb.extend(_collector_batch())
    sample = rb.sample()
    rb.update_tensordict_priority(sample)  # as sampled: nothing to write
    assert float(sampler.state_dict()["priority"].sum()) == 0
    if write == "in_place":
        sample["vlm_priority"].fill_(1.0)
    elif write == "set":
        sample.set("vlm_priority", torch.ones(8))
    else:
        sample["vlm_priority"][0] = 1.0
    rb.update_tensordict_priority(sample)
    written = torch.unique(sample["index"][sample["vlm_priority"] == 1])
    priority = sampler.state_dict()["priority"]
    assert len(written) > 0 and bool((priority[written] == 1).all())
    assert float(priority.sum()) == len(written)


def test_the_buffer_owns_the_priority_column():
    sampler = MixtureSampler(lam_max=None, priority_key="semantic")
    rb = make_replay_buffer(20, sampler=sampler, batch_size=10)
    rb.extend(_collector_batch())
    assert torch.equal(rb[:]["semantic"], torch.zeros(20))  # every row holds the column
    rb.update_priority(torch.tensor([2, 5]), torch.ones(2, 1))  # priorities in TorchRL's [N, 1] layout
    assert torch.nonzero(rb[:]["semantic"]).reshape(-1).tolist() == [2, 5]
    assert sampler.priority(torch.tensor([2, 5, 6])).tolist() == [1.0, 1.0, 0.0]
    # A refused update changes neither the column nor the sampler.
    with pytest.raises(ValueError, match="priority"):
        rb.update_priority(torch.tensor([1, 2]), torch.tensor([1.0, float("nan")]))
    assert torch.nonzero(rb[:]["semantic"]).reshape(-1).tolist() == [2, 5]
    assert sampler.num_positive == 2


def test_rows_a_writer_rejects_touch_neither_the_column_nor_the_last_slot():
    sampler = MixtureSampler(lam_max=0.5)
    rb = CollectorReplayBuffer(storage=LazyTensorStorage(4), sampler=sampler, batch_size=2)
    rb._writer = TensorDictMaxValueWriter(rank_key="score")  # keeps the 4 best rows, rejects the others
    rb._writer.register_storage(rb._storage)
    data = TensorDict({"score": torch.arange(4.0), "vlm_priority": torch.zeros(4)}, [4])
    rb.extend(data)
    rb.update_priority(torch.tensor([3]), torch.ones(1))
    low = TensorDict({"score": torch.tensor([-1.0, 10.0]), "vlm_priority": torch.zeros(2)}, [2])
    index = rb.extend(low)  # -1 for the rejected row
    assert -1 in index.tolist()
    rb.update_priority(index, torch.ones(2))
    column = rb[:]["vlm_priority"]
    assert column[3] == 1.0 and int(column.sum()) == 2


def test_a_storage_with_more_than_one_dimension_is_refused_when_the_buffer_is_built():
    # (MixtureSampler refuses one at the first extend inside TorchRL's own buffers: tests/test_sampler.py.)
    with pytest.raises(ValueError, match="storage must be 1-D; got a storage with ndim=2"):
        CollectorReplayBuffer(storage=LazyTensorStorage(10, ndim=2), sampler=MixtureSampler())


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="capacity"):
        make_replay_buffer(0)
    with pytest.raises(ValueError, match="sampler must be one of"):
        make_replay_buffer(10, sampler="rainbow")
    with pytest.raises(ValueError, match="storage must be one of"):
        make_replay_buffer(10, storage="disk")
    with pytest.raises(TypeError, match="TensorDict"):
        make_replay_buffer(10).extend(torch.zeros(3))
