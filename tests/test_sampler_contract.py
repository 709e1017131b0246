"""TorchRL's sampler contract, checked against MixtureSampler inside TorchRL's own buffers.

Each test mirrors a generic test of TorchRL's replay-buffer suite (pytorch/rl
``test/rb/``), named in its docstring, re-written for this sampler and run for
its three kinds: binary VLM priorities, TD boosting, and pure prioritisation
(``lam_max=None``). Rows are given unique values so that "this sample came from
the buffer" is a membership check.
"""
import copy
import pickle

import pytest
import torch
from _state import assert_same_state
from tensordict import TensorDict, TensorDictBase, is_tensor_collection
from torch.utils._pytree import tree_map
from torchrl.data import (
    LazyMemmapStorage,
    LazyTensorStorage,
    ListStorage,
    ReplayBuffer,
    RoundRobinWriter,
    TensorDictMaxValueWriter,
    TensorDictReplayBuffer,
    TensorDictRoundRobinWriter,
)

import torchrl_vlm.replay.sampler as sampler_module
from torchrl_vlm.replay.sampler import MixtureSampler

pytestmark = pytest.mark.filterwarnings("ignore:Got conflicting batch_sizes:UserWarning")

KINDS = {
    "binary": dict(lam_max=0.5),
    "td_boost": dict(lam_max=0.5, td_boost=True, importance_weights=True),
    "pure_priority": dict(lam_max=None),
}


@pytest.fixture(params=list(KINDS))
def make_sampler(request):
    return lambda **kwargs: MixtureSampler(**{**KINDS[request.param], **kwargs})


def _score(rb, index):
    """Gives every other written row priority 1 (and TD errors with td_boost); -1 rows are skipped."""
    index = torch.as_tensor(index).reshape(-1)
    rb.update_priority(index, (torch.arange(index.numel()) % 2 == 0).float())
    if rb.sampler.td_boost:
        rb.sampler.update_td_error(index, torch.linspace(0.1, 2.0, index.numel()))


# -------------------------------------------------- TestComposableBuffers
# (test/rb/test_composable.py): buffer types x storages x data types x writers x sizes.
# TensorDictMaxValueWriter takes tensor collections only (TorchRL checks that it
# refuses the rest; that is the writer's contract, not the sampler's).
LAYOUTS = [
    (rb_type, storage, datatype, writer)
    for rb_type, storage, datatype in [
        (ReplayBuffer, ListStorage, "list"),
        (ReplayBuffer, LazyTensorStorage, "tensor"),
        (ReplayBuffer, LazyTensorStorage, "pytree"),
        (ReplayBuffer, LazyMemmapStorage, "tensordict"),
        (TensorDictReplayBuffer, ListStorage, "tensordict"),
        (TensorDictReplayBuffer, LazyTensorStorage, "tensordict"),
        (TensorDictReplayBuffer, LazyMemmapStorage, "tensordict"),
    ]
    for writer in (["round_robin", "max_value"] if datatype == "tensordict" else ["round_robin"])
]
composable = pytest.mark.parametrize(
    "rb_type, storage, datatype, writer",
    LAYOUTS,
    ids=[f"{r.__name__}-{s.__name__}-{d}-{w}" for r, s, d, w in LAYOUTS],
)
sizes = pytest.mark.parametrize("size", [3, 100])  # below and above the 5 rows written


def _rb(rb_type, storage, writer, size, sampler, **kwargs):
    if writer == "max_value":
        writer = TensorDictMaxValueWriter()  # ranks rows by ("next", "reward")
    else:
        writer = TensorDictRoundRobinWriter() if rb_type is TensorDictReplayBuffer else RoundRobinWriter()
    return rb_type(storage=storage(size), sampler=sampler, writer=writer, batch_size=3, **kwargs)


def _data(datatype, n, start=0):
    a = torch.arange(start, start + n)
    if datatype == "list":
        return [x.view(1) for x in a]
    if datatype == "tensor":
        return a.view(n, 1)
    if datatype == "pytree":
        return {"a": a.view(n, 1), "b": {"c": [torch.zeros(n, 3), (torch.ones(n, 2),)]}}
    # the reward ranks rows for TensorDictMaxValueWriter: later rows rank higher
    return TensorDict({"a": a.view(n, 1), "next": {"reward": a.float().view(n, 1)}}, [n])


def _values(sample, datatype):
    """The unique row values ("a") a sample holds, as a list."""
    if datatype in ("list", "tensor"):
        return torch.as_tensor(sample).reshape(-1).tolist()
    return sample["a"].reshape(-1).tolist()


@composable
@sizes
def test_add(rb_type, storage, datatype, writer, size, make_sampler):
    """TestComposableBuffers.test_add: one row added, then sampled with its info."""
    sampler = make_sampler()
    rb = _rb(rb_type, storage, writer, size, sampler)
    datum = _data(datatype, 1, start=7)
    datum = datum[0] if datatype in ("list", "tensor", "tensordict") else tree_map(lambda x: x[0], datum)
    index = rb.add(datum)
    _score(rb, index)
    sample, info = rb.sample(1, return_info=True)
    assert len(rb) == 1 and sampler.transitions_written == 1
    assert _values(sample, datatype) == [7]
    assert info["index"].tolist() == [0]
    assert info["from_priority"].shape == (1,) and info["mixture_lambda"].ndim == 0


@composable
@sizes
def test_extend(rb_type, storage, datatype, writer, size, make_sampler):
    """TestComposableBuffers.test_extend: the last rows written are in the storage, then more rows."""
    sampler = make_sampler()
    rb = _rb(rb_type, storage, writer, size, sampler)
    data = _data(datatype, 5)
    index = rb.extend(data)
    _score(rb, index)
    kept = min(size, 5)
    assert len(rb) == kept
    stored = _values(rb[:], datatype)
    assert sorted(stored) == list(range(5 - kept, 5))  # round robin keeps the last, max-value the largest
    # TensorDictMaxValueWriter rejects rows with -1; the sampler counts only the rows written.
    accepted = int((torch.as_tensor(index) >= 0).sum())
    assert sampler.transitions_written == accepted
    index = rb.extend(_data(datatype, 2 * size + 2, start=5))
    _score(rb, index)
    assert set(_values(rb.sample(), datatype)) <= set(_values(rb[:], datatype))


@composable
@sizes
def test_sample(rb_type, storage, datatype, writer, size, make_sampler):
    """TestComposableBuffers.test_sample: every sampled row is one that was written."""
    torch.manual_seed(0)
    rb = _rb(rb_type, storage, writer, size, make_sampler())
    data = _data(datatype, 5)
    _score(rb, rb.extend(data))
    for _ in range(5):
        sample, info = rb.sample(return_info=True)
        assert set(_values(sample, datatype)) <= set(_values(rb[:], datatype))
        assert info["index"].shape == (3,) and info["from_priority"].shape == (3,)


@composable
def test_pickable(rb_type, storage, datatype, writer, make_sampler):
    """TestComposableBuffers.test_pickable and test_rb_repr: a whole buffer pickles and prints."""
    rb = _rb(rb_type, storage, writer, 5, make_sampler(), delayed_init=False)
    rb2 = pickle.loads(pickle.dumps(rb))
    assert rb.__dict__.keys() == rb2.__dict__.keys()
    for key in rb.__dict__:
        assert isinstance(rb.__dict__[key], type(rb2.__dict__[key])), key
    _score(rb, rb.extend(_data(datatype, 5)))
    rb.sample()
    assert str(rb) and "MixtureSampler" in repr(rb.sampler)
    if storage is not LazyMemmapStorage:  # a filled memmap storage does not pickle (TorchRL's, not ours)
        rb2 = pickle.loads(pickle.dumps(rb))
        assert_same_state(rb2.sampler.state_dict(), rb.sampler.state_dict())


# ----------------------------------------------------- generic sampler calls
@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_sample_returns_index_and_info(make_sampler, batch_size):
    """Sampler.sample(storage, batch_size) -> (index, info), as every TorchRL sampler."""
    sampler = make_sampler()
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(20), sampler=sampler)
    with pytest.raises(RuntimeError, match="Cannot sample from an empty storage"):
        sampler.sample(rb.storage, batch_size)
    _score(rb, rb.extend(_data("tensordict", 12)))
    index, info = sampler.sample(rb.storage, batch_size)
    assert index.dtype == torch.int64 and index.shape == (batch_size,)
    assert bool(((index >= 0) & (index < len(rb.storage))).all())
    assert info["from_priority"].dtype == torch.bool and info["from_priority"].shape == (batch_size,)
    assert info["mixture_lambda"].ndim == 0
    if sampler.importance_weights:
        weight = info["priority_weight"]
        assert weight.shape == (batch_size,) and bool(((weight > 0) & (weight <= 1)).all())
    assert sampler.can_sample(rb.storage, batch_size)


def test_draws_stay_within_the_filled_part_of_the_storage(make_sampler):
    """TestBuffers.test_index_nonfull / len(storage) growth: draws only reach written slots."""
    torch.manual_seed(0)
    sampler = make_sampler()
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(10), sampler=sampler, batch_size=50)
    for step in range(4):
        _score(rb, rb.extend(_data("tensordict", 3, start=3 * step)))
        assert len(rb.storage) == min(10, 3 * (step + 1))
        assert int(rb.sample()["index"].max()) < len(rb.storage)


def test_empty(make_sampler):
    """TestBuffers.test_empty: after rb.empty() sampling raises, and the sampler starts over."""
    torch.manual_seed(0)
    sampler = make_sampler(warmup=100)
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(5), sampler=sampler, batch_size=2)
    for _ in range(2):
        index = rb.add(TensorDict({"a": torch.tensor([3])}, []))
        _score(rb, index)
        assert rb.sample(1)["a"].tolist() == [[3]]
        assert sampler.num_positive == 1 and sampler.transitions_written == 1
        rb.empty()
        with pytest.raises(RuntimeError, match="Cannot sample from an empty storage"):
            rb.sample()
        assert sampler.num_positive == 0 and sampler.transitions_written == 0
        assert sampler.lam == (1.0 if sampler.lam_max is None else 0.0)  # λ restarts its warmup


# --------------------------------------------------------- state and files
def _filled(sampler, storage, n=27, batch_size=8):
    rb = TensorDictReplayBuffer(storage=storage, sampler=sampler, batch_size=batch_size)
    _score(rb, rb.extend(TensorDict({"a": torch.arange(n), ("b", "c"): torch.arange(1, n + 1)}, [n])))
    rb.sample()
    return rb


def test_state_dict_round_trip_through_the_buffer(make_sampler):
    """TestSamplers.test_sampler_without_rep_state_dict: a new buffer loads the state and draws alike."""
    rb = _filled(make_sampler(warmup=200), LazyTensorStorage(100))
    rb.extend(TensorDict({"a": torch.zeros(3, dtype=torch.long), ("b", "c"): torch.ones(3, dtype=torch.long)}, [3]))
    new = TensorDictReplayBuffer(storage=LazyTensorStorage(100), sampler=make_sampler(), batch_size=8)
    new.load_state_dict(rb.state_dict())
    assert_same_state(new.sampler.state_dict(), rb.sampler.state_dict())
    assert new.sampler.lam == rb.sampler.lam and new.sampler.num_positive == rb.sampler.num_positive
    torch.manual_seed(5)
    a = rb.sample()
    torch.manual_seed(5)
    b = new.sample()
    assert torch.equal(a["index"], b["index"]) and torch.equal(a["from_priority"], b["from_priority"])


@pytest.mark.parametrize("save, load", [("dumps", "loads"), ("save", "load")])
def test_dumps_loads_with_memmap_storage(make_sampler, tmp_path, save, load):
    """TestSamplers.test_sampler_without_rep_dumps_loads and test_prb_serialization (memmap storage)."""
    rb = _filled(make_sampler(warmup=100), LazyMemmapStorage(100, scratch_dir=tmp_path / "s0"))
    rb2 = TensorDictReplayBuffer(
        storage=LazyMemmapStorage(100, scratch_dir=tmp_path / "s1"), sampler=make_sampler(), batch_size=8
    )
    getattr(rb, save)(tmp_path / "dump")
    getattr(rb2, load)(tmp_path / "dump")
    assert_same_state(rb2.sampler.state_dict(), rb.sampler.state_dict())
    s = rb2.sample(3)
    assert (s["a"] == s["b", "c"] - 1).all()


def test_load_state_dict_decouples_from_the_source(make_sampler):
    """test_prioritized_sampler_load_state_dict_decouples_from_source (test/rb/test_samplers.py)."""
    sampler = make_sampler()
    _filled(sampler, LazyTensorStorage(30))
    sd = sampler.state_dict()
    clone = make_sampler()
    clone.load_state_dict(sd)
    assert {"priority", "td_error"} <= sd.keys()  # the source keeps its keys
    before = clone.state_dict()
    for value in sd.values():
        if isinstance(value, torch.Tensor):
            value.fill_(5.0)
    assert_same_state(clone.state_dict(), before)
    sampler.state_dict()["priority"].fill_(7.0)  # state_dict hands out copies too
    assert_same_state(sampler.state_dict(), before)


def test_copies_keep_the_priorities(make_sampler):
    """test_prioritized_sampler_lazy_copy_keeps_pending_priorities: deepcopy and pickle clones."""
    sampler = make_sampler()
    rb = _filled(sampler, LazyTensorStorage(30))
    for clone in (copy.deepcopy(sampler), pickle.loads(pickle.dumps(sampler))):
        assert_same_state(clone.state_dict(), sampler.state_dict())
        assert clone.num_positive == sampler.num_positive
        torch.manual_seed(1)
        a = clone.sample(rb.storage, 32)[0]
        torch.manual_seed(1)
        assert torch.equal(a, sampler.sample(rb.storage, 32)[0])


def test_sharing_with_another_process_is_refused(make_sampler, monkeypatch):
    """TestMultiProc.test_error_prb / test_prioritized_sampler_shared_error_mentions_sync_false."""
    sampler = make_sampler()
    sampler.__getstate__()  # within a process: fine
    monkeypatch.setattr(sampler_module, "get_spawning_popen", lambda: object())
    with pytest.raises(RuntimeError, match="MixtureSampler cannot be shared between processes"):
        sampler.__getstate__()
    rb = TensorDictReplayBuffer(storage=LazyMemmapStorage(10), sampler=sampler)
    with pytest.raises(RuntimeError, match="cannot be shared between processes"):
        pickle.dumps(rb)


# ---------------------------------------------------------- RNG, prefetch
def test_buffer_generator_makes_draws_reproducible(make_sampler):
    """TestRNG.test_prb_rng and test_rng_state_dict: the buffer's generator drives the draws."""
    rb = ReplayBuffer(sampler=make_sampler(), storage=LazyTensorStorage(100), generator=torch.Generator())
    _score(rb, rb.extend(torch.arange(100)))
    state = torch.Generator().manual_seed(0).get_state()
    rb._rng.set_state(state)  # as TorchRL's test does
    a = rb.sample(32)
    rb._rng.set_state(state)
    b = rb.sample(32)
    assert torch.equal(a, b)
    assert not torch.equal(a, rb.sample(32))

    sd = rb.state_dict()
    c = rb.sample(32)
    rb.load_state_dict(sd)
    assert torch.equal(rb.sample(32), c)


def test_prefetch(make_sampler):
    """TestSamplers.test_sampler_without_replacement_cap_prefetch: batches drawn in a background thread."""
    torch.manual_seed(0)
    sampler = make_sampler()
    rb = ReplayBuffer(storage=LazyTensorStorage(11), sampler=sampler, batch_size=4, prefetch=3)
    rb.extend(TensorDict({"a": torch.arange(11)}, [11]))
    rb.update_priority(torch.arange(5), 1.0)
    lam = 1.0 if sampler.lam_max is None else sampler.lam_max
    for _ in range(30):
        batch, info = rb.sample(return_info=True)
        assert set(batch["a"].tolist()) <= set(range(11))
        # the carry rule holds batch by batch, whichever thread drew it
        assert int(info["from_priority"].sum()) in (int(lam * 4), -int(-lam * 4))
        assert set(info["index"][info["from_priority"]].tolist()) <= set(range(5))


# -------------------------------------------------------------- writers
@pytest.mark.parametrize("size, batch_size", [(20, 1), (25, 10)])
def test_max_value_writer(make_sampler, size, batch_size):
    """TestMaxValueWriter.test_max_value_writer (test/rb/test_writers.py), with rejected rows."""
    torch.manual_seed(0)
    sampler = make_sampler()
    rb = TensorDictReplayBuffer(
        storage=LazyTensorStorage(size),
        sampler=sampler,
        batch_size=batch_size,
        writer=TensorDictMaxValueWriter(rank_key="key"),
    )
    written = 0
    for low, high in ((0.0, 0.25), (0.25, 0.5)):
        td = TensorDict({"key": low + (high - low) * torch.rand(size), "obs": torch.rand(size)}, [size])
        index = rb.extend(td)
        written += int((index >= 0).sum())
        _score(rb, index)
        for _ in range(5):
            key = rb.sample()["key"]
            assert bool(((key >= low) & (key <= high)).all())
    for key in 0.5 + 0.5 * torch.rand(size):  # one by one
        index = rb.add(TensorDict({"key": key, "obs": torch.rand(())}, []))
        written += index is not None
    assert bool((rb.sample()["key"] >= 0.5).all())
    index = rb.extend(TensorDict({"key": torch.zeros(size), "obs": torch.rand(size)}, [size]))
    assert bool((index == -1).all())  # nothing good enough: every row rejected
    assert bool((rb.sample()["key"] != 0).all())
    assert sampler.transitions_written == written


# ------------------------------------------------------ update_priority
def test_update_priority_paths(make_sampler):
    """test_prb_ndim: the ways a buffer updates priorities (1-D), and the refusal of a 2-D storage."""
    sampler = make_sampler()
    rb = ReplayBuffer(sampler=sampler, storage=LazyTensorStorage(100), batch_size=4)
    idx = rb.extend(TensorDict({"a": torch.arange(10), "p": torch.ones(10) / 2}, [10]))
    assert sampler.priority(idx).tolist() == [0.0] * 10  # new data: "not known to be meaningful"
    rb.update_priority(idx, 2)
    assert sampler.priority(idx).tolist() == [2.0] * 10
    _, info = rb.sample(return_info=True)
    rb.update_priority(info["index"], 3)
    assert set(sampler.priority(info["index"]).tolist()) == {3.0}

    # A TensorDictReplayBuffer reads the priority_key column of the data it writes.
    sampler = make_sampler()
    rb = TensorDictReplayBuffer(
        sampler=sampler, storage=LazyTensorStorage(100), batch_size=4, priority_key=sampler.priority_key
    )
    idx = rb.extend(TensorDict({"a": torch.arange(10), sampler.priority_key: torch.arange(10) % 2}, [10]))
    assert sampler.priority(idx).tolist() == (torch.arange(10) % 2).float().tolist()
    sample = rb.sample()
    rb.update_priority(sample["index"], torch.zeros(4, 1))
    assert sampler.priority(sample["index"]).tolist() == [0.0] * 4

    # 2-D storages (test_prb_ndim's second half) are refused.
    rb = ReplayBuffer(sampler=make_sampler(), storage=LazyTensorStorage(100, ndim=2), batch_size=4)
    with pytest.raises(ValueError, match="MixtureSampler supports 1-D storages only.*ndim=2"):
        rb.extend(TensorDict({"a": torch.arange(10).view(2, 5)}, [2, 5]))
    with pytest.raises(ValueError, match="MixtureSampler supports 1-D storages only.*ndim=2"):
        rb.sample()


def test_add_with_tensordict_data_is_collated(make_sampler):
    """TestBuffers.test_add: a sampled TensorDict keeps its keys and holds the row that was added."""
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(5), sampler=make_sampler(), batch_size=3)
    datum = TensorDict({"a": torch.tensor([42]), "next": {"reward": torch.tensor([1.0])}}, [])
    rb.add(datum)
    sample = rb.sample(1)
    assert isinstance(sample, TensorDictBase) and is_tensor_collection(sample)
    assert sample["a"].tolist() == [[42]] and sample["index"].tolist() == [0]
