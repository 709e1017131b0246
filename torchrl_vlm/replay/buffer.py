"""Replay buffers that take collector batches as they come, for VLM-RB and its baselines.

:class:`CollectorReplayBuffer` is a :class:`~torchrl.data.TensorDictReplayBuffer`
whose ``extend`` takes what a TorchRL collector yields (``[n_envs, T]`` or flat):
it drops the frames and missions (they never enter replay), applies an optional
post-processing in the collector layout (n-step returns), flattens and writes.
Uniform, PER and mixture buffers therefore share one ``rb.extend(batch)``, and one
``rb.update_tensordict_priority(sample)`` after the loss: PER takes the TD errors
as priorities, a TD-boosting :class:`MixtureSampler` takes them as its ``|δ|``, and the
other samplers ignore the call.

:func:`make_replay_buffer` builds one. VLM-RB's buffer,
:class:`~torchrl_vlm.VLMReplayBuffer`, subclasses it.
"""
from __future__ import annotations

import json
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
from tensordict import LazyStackedTensorDict, TensorDict, TensorDictBase, is_tensor_collection
from tensordict.utils import NestedKey
from torchrl.data import (
    LazyMemmapStorage,
    LazyTensorStorage,
    PrioritizedSampler,
    RandomSampler,
    TensorDictReplayBuffer,
    TensorDictRoundRobinWriter,
)
from torchrl.data.replay_buffers.checkpointers import TensorStorageCheckpointer
from torchrl.data.replay_buffers.samplers import Sampler
from torchrl.data.replay_buffers.storages import Storage

from torchrl_vlm._checks import check_int
from torchrl_vlm.frames import FRAME_RENDERED_KEY
from torchrl_vlm.replay.sampler import MixtureSampler

__all__ = ["CollectorReplayBuffer", "DEFAULT_EXCLUDE_KEYS", "make_replay_buffer"]

SAMPLER_CHOICES = ("uniform", "per")
STORAGE_CHOICES = ("tensor", "memmap")

#: Entries a collector batch carries that replay never stores: the frames and which of them were rendered
#: (for the VLM only), and the mission bytes (the same for every step of an episode). Every stored entry
#: costs each write and each sample (about 20 µs a sample per entry on a CPU), so none is kept that no
#: learner reads.
DEFAULT_EXCLUDE_KEYS: tuple[NestedKey, ...] = (
    "pixels", ("next", "pixels"), FRAME_RENDERED_KEY, ("next", FRAME_RENDERED_KEY), "mission", ("next", "mission"),
)


class FilledPartCheckpointer(TensorStorageCheckpointer):
    """TorchRL's tensor-storage checkpointer, writing the rows that hold data instead of the whole capacity.

    A storage of 1M rows holding 3,072 transitions is saved as 3,072 rows (TorchRL's checkpointer memory-maps
    all of them: 266 MB for a small run). Loading writes them back into the first rows of the storage, which
    is where a 1-D storage that has not wrapped around keeps them; a full storage is saved whole.
    """

    @staticmethod
    def _saves_whole(storage, path) -> bool:
        """Where TorchRL's own checkpointer is the right one: a full storage, an N-d one (``len`` counts
        elements there), a pytree, or one memory-mapped in ``path`` itself (it refreshes those in place)."""
        data = getattr(storage, "_storage", None)
        if not is_tensor_collection(data) or getattr(storage, "ndim", 1) != 1 or len(storage) >= storage.max_size:
            return True
        target = Path(path).absolute()
        places = (
            getattr(data, "saved_path", None) if data.is_memmap() else None,
            getattr(storage, "scratch_dir", None),
        )
        return any(place and Path(place).absolute() == target for place in places)

    def dumps(self, storage, path):
        n = len(storage)
        if self._save_hooks or self._saves_whole(storage, path):
            return super().dumps(storage, path)
        path = Path(path)
        path.mkdir(exist_ok=True)
        storage._storage[:n].memmap(path, copy_existing=True)
        (path / "storage_metadata.json").write_text(
            json.dumps({"metadata": {}, "is_pytree": False, "len": n, "filled_part": True})
        )

    def loads(self, storage, path):
        path = Path(path)
        metadata = json.loads((path / "storage_metadata.json").read_text())
        if not metadata.get("filled_part"):
            return super().loads(storage, path)
        rows = TensorDict.load_memmap(path)
        n = int(metadata["len"])
        if not storage.initialized:
            storage._init(rows[0])
        storage._storage[:n].update_(rows)
        storage._len = n


def own_signature(cls):
    """Shows ``cls.__init__``'s parameters in ``inspect.signature(cls)`` and ``help(cls)``: TorchRL's replay
    buffers' metaclass defines ``__call__(*args, **kwargs)``, which would hide them."""
    import inspect

    sig = inspect.signature(cls.__init__)
    cls.__signature__ = sig.replace(parameters=list(sig.parameters.values())[1:])
    return cls


@own_signature
class CollectorReplayBuffer(TensorDictReplayBuffer):
    """A ``TensorDictReplayBuffer`` whose ``extend`` takes collector batches.

    ``rb.extend(batch)`` accepts a batch laid out ``[*envs, T]`` (time last, as a
    collector yields it, dense or lazily stacked) or flat ``[N]``. It removes
    ``exclude_keys``, applies ``postproc`` in that layout (n-step returns need
    the time dimension), flattens to ``[N]`` and writes; it returns the storage
    indices of the rows in the batch's flattened order. It also works as
    ``Collector(..., replay_buffer=rb)``, where TorchRL calls ``rb.extend``.

    With a :class:`MixtureSampler`, the buffer owns the priority column
    ``sampler.priority_key`` (``"vlm_priority"``): rows arrive with 0 there unless
    the batch brings its own values, and ``rb.update_priority(index, p)`` writes
    the column and hands ``p`` to the sampler, so the two never disagree.
    ``rb.update_tensordict_priority(sample)`` passes ``sample[td_error_key]`` to a
    TD-boosting sampler (``MixtureSampler(td_boost=True)``) and does nothing for a
    binary one, whose priorities come from the VLM; PER takes the TD errors as its
    priorities, as in TorchRL.

    Args:
        storage: a 1-D TorchRL storage (e.g. ``LazyTensorStorage(capacity)``).
        sampler: any TorchRL sampler (default: uniform).
        batch_size: default batch size of ``rb.sample()``.
        postproc: applied to each batch, frames removed, in its collector layout
            before writing (e.g. :class:`~torchrl_vlm.NStepReturns`).
        exclude_keys: entries never written.
        td_error_key: where ``update_tensordict_priority`` reads TD errors
            (TorchRL's losses write ``"td_error"``).
        transform: TorchRL replay-buffer transforms (inverse at extend, forward at sample).
        prefetch: batches to prefetch in background threads.
    """

    def __init__(
        self,
        *,
        storage: Storage,
        sampler: Sampler | None = None,
        batch_size: int | None = None,
        postproc: Callable[[TensorDictBase], TensorDictBase] | None = None,
        exclude_keys: tuple[NestedKey, ...] = DEFAULT_EXCLUDE_KEYS,
        td_error_key: NestedKey = "td_error",
        transform=None,
        prefetch: int | None = None,
    ):
        sampler = RandomSampler() if sampler is None else sampler
        if not isinstance(sampler, Sampler):
            raise TypeError(f"sampler must be a torchrl Sampler, got {type(sampler).__name__}")
        if not isinstance(storage, Storage):
            raise TypeError(f"storage must be a torchrl Storage (e.g. LazyTensorStorage), got {type(storage).__name__}")
        if getattr(storage, "ndim", 1) != 1:
            raise ValueError(
                f"{type(self).__name__} writes collector batches as flat rows, so its storage must be 1-D; "
                f"got a storage with ndim={storage.ndim}"
            )
        if isinstance(sampler, MixtureSampler) and getattr(storage, "max_size", None):
            sampler.reserve(storage.max_size)
        priority_key = sampler.priority_key if isinstance(sampler, MixtureSampler) else td_error_key
        super().__init__(
            storage=storage,
            sampler=sampler,
            # Generations let a late write-back (a VLM verdict) skip slots reused meanwhile.
            writer=TensorDictRoundRobinWriter(track_generations=True),
            batch_size=batch_size,
            priority_key=priority_key,
            transform=transform,
            prefetch=prefetch,
        )
        if type(self._storage.checkpointer) is TensorStorageCheckpointer:  # TorchRL's: it saves the whole capacity
            self._storage.checkpointer = FilledPartCheckpointer()
        self.postproc = postproc
        self.exclude_keys = tuple(exclude_keys)
        self.td_error_key = td_error_key
        # Priority columns handed out by sample(), by id: (a weak reference, the tensor's version then).
        self._sampled_columns: dict[int, tuple[weakref.ref, int]] = {}

    # ---------------------------------------------------------------- writes
    def rows(self, batch: TensorDictBase) -> TensorDictBase:
        """What ``extend`` would write for ``batch``: excluded keys gone, ``postproc`` applied, flat ``[N]``."""
        if not isinstance(batch, TensorDictBase):
            raise TypeError(f"batch must be a TensorDict, got {type(batch).__name__}")
        data = batch.exclude(*self.exclude_keys)
        if isinstance(data, LazyStackedTensorDict):
            # Collector(replay_buffer=rb) hands over a lazy stack over time; one dense copy, frames already gone.
            data = data.contiguous()
        if self.postproc is not None:
            data = self.postproc(data)
        return data.reshape(-1)

    def extend(self, batch: TensorDictBase, *, update_priority: bool | None = None) -> torch.Tensor:
        """Writes a collector batch (``[*envs, T]`` or flat); returns the rows' storage indices."""
        data = self.rows(batch)
        if isinstance(self._sampler, MixtureSampler) and self.priority_key not in data.keys():
            # Every row holds the column; fresh slots start at the sampler's 0 already.
            data.set(self.priority_key, torch.zeros(data.batch_size[0], device=data.device))
            update_priority = False
        return super().extend(data, update_priority=update_priority)

    def sample(self, batch_size: int | None = None, return_info: bool = False, include_info: bool | None = None):
        """Samples as TorchRL does; with a :class:`MixtureSampler`, remembers the priority column it handed out, so
        that :meth:`update_tensordict_priority` sees at no cost that the caller left it as it was."""
        out = super().sample(batch_size, return_info=return_info, include_info=include_info)
        data = out[0] if return_info else out
        if isinstance(self._sampler, MixtureSampler) and is_tensor_collection(data):
            column = data.get(self.priority_key, None)
            if isinstance(column, torch.Tensor):
                if len(self._sampled_columns) >= 64:  # samples are usually dropped after their update
                    self._sampled_columns = {k: v for k, v in self._sampled_columns.items() if v[0]() is not None}
                self._sampled_columns[id(column)] = (weakref.ref(column), column._version)
        return out

    def _as_sampled(self, column: torch.Tensor) -> bool:
        """Whether ``column`` is a priority column that :meth:`sample` handed out and nothing wrote since (an
        in-place write bumps a tensor's version; ``sample.set(key, new)`` puts another tensor there)."""
        entry = self._sampled_columns.get(id(column))
        return entry is not None and entry[0]() is column and entry[1] == column._version

    def stats(self) -> dict[str, float]:
        """TorchRL's snapshot, plus a :class:`MixtureSampler`'s λ, last-batch prioritised share and positive slots."""
        out = {key: float(value) for key, value in super().stats().items()}
        if isinstance(self._sampler, MixtureSampler):
            out.update({key: float(value) for key, value in self._sampler.stats().items()})
        return out

    # --------------------------------------------------------- checkpointing
    # TorchRL pickles batches sampled ahead (prefetch) into dumps() and unpickles them in
    # loads(): a planted file would run code. They are only cached samples, so they are
    # neither saved nor read: a loaded buffer samples them afresh.
    def _dump_prefetch_state(self, path, prefetch_state) -> None:
        return None

    def _load_prefetch_state(self, path):
        return None

    # ------------------------------------------------------------ priorities
    def update_priority(self, index, priority) -> None:
        """Sets priorities; with a :class:`MixtureSampler`, also its storage column (one owner: this buffer)."""
        if not isinstance(self._sampler, MixtureSampler):
            return super().update_priority(index, priority)
        index = torch.as_tensor(index)
        priority = torch.as_tensor(priority)
        # The sampler checks everything before it changes anything, so a refused
        # update leaves both it and the column as they were.
        super().update_priority(index, priority)
        index = index.reshape(-1)
        column = priority.reshape(-1).to(torch.float32).expand(index.shape)
        kept = index >= 0  # a writer that rejects rows (TensorDictMaxValueWriter) marks them -1
        if bool(kept.any()):
            self.set_at_(self.priority_key, column[kept], index[kept])

    def update_tensordict_priority(self, data: TensorDictBase) -> None:
        """After the loss: TD errors to PER or to a TD-boosting :class:`MixtureSampler`.

        With a :class:`MixtureSampler`, a sample whose priority column (``sampler.priority_key``) the caller
        rewrote sets those priorities, as TorchRL's contract has it; only the rows whose value differs from the
        stored one are written, so the usual call (the column as sampled) writes nothing, and costs nothing: a
        column that :meth:`sample` handed out and nothing wrote since is not even compared. TD errors never
        change a binary sampler's priorities: those come from the VLM.
        """
        if not isinstance(self._sampler, MixtureSampler):
            return super().update_tensordict_priority(data)
        index = data.get("index", None)
        if self._sampler.td_boost:
            self._sampler.update_td_error(index, data.get(self.td_error_key))
        written = data.get(self.priority_key, None)
        if written is None or index is None or self._as_sampled(written):
            return
        index = torch.as_tensor(index).reshape(-1)
        written = written.reshape(-1).to(torch.float32)
        kept = index >= 0
        index, written = index[kept], written[kept]
        changed = written != self._sampler.priority(index)  # the column and the sampler agree (one owner)
        if bool(changed.any()):
            self.update_priority(index[changed], written[changed])


def make_replay_buffer(
    capacity: int,
    *,
    sampler: str | Sampler = "uniform",
    batch_size: int | None = None,
    storage: str = "tensor",
    device: str | torch.device = "cpu",
    per_alpha: float = 0.6,
    per_beta: float = 0.4,
    scratch_dir: str | Path | None = None,
    prefetch: int | None = None,
    postproc: Callable[[TensorDictBase], TensorDictBase] | None = None,
    exclude_keys: tuple[NestedKey, ...] = DEFAULT_EXCLUDE_KEYS,
) -> CollectorReplayBuffer:
    """Builds a :class:`CollectorReplayBuffer` for VLM-RB's baselines (or a mixture buffer fed by hand).

    The writer tracks slot generations, so that a value computed long after a
    transition was written can be written back with
    ``rb.update_if_present(index=..., generation=..., patch=...)`` and is skipped
    if the slot has been reused meanwhile.

    Args:
        capacity: number of transitions the buffer holds.
        sampler: ``"uniform"`` (TorchRL's ``RandomSampler``), ``"per"``
            (TorchRL's ``PrioritizedSampler`` with ``per_alpha``/``per_beta``, fed
            the ``"td_error"`` of each sample), a :class:`MixtureSampler`, or any
            other TorchRL ``Sampler``.
        batch_size: default batch size of ``rb.sample()``.
        storage: ``"tensor"`` (``LazyTensorStorage``, in RAM or on ``device``) or
            ``"memmap"`` (``LazyMemmapStorage`` under ``scratch_dir``).
        device: where the storage lives.
        per_alpha, per_beta: PER's exponents, used with ``sampler="per"``.
        scratch_dir: memmap folder (a temporary one when ``None``).
        prefetch: batches to prefetch in a background thread.
        postproc: applied to each collector batch before writing (n-step returns).
        exclude_keys: entries of a collector batch never written (frames, missions).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_vlm import make_replay_buffer
        >>> rb = make_replay_buffer(100, sampler="per", batch_size=8)
        >>> batch = TensorDict({"observation": torch.zeros(4, 25, 3), "pixels": torch.zeros(4, 25, 8, 8, 3)}, [4, 25])
        >>> rb.extend(batch).shape, "pixels" in rb[:].keys()
        (torch.Size([100]), False)
    """
    check_int("capacity", capacity)
    check_int("batch_size", batch_size, none_means="sample(batch_size) gives it")
    if isinstance(sampler, str):
        if sampler == "uniform":
            sampler = RandomSampler()
        elif sampler == "per":
            sampler = PrioritizedSampler(capacity, alpha=per_alpha, beta=per_beta)
        else:
            raise ValueError(
                f"sampler must be one of {SAMPLER_CHOICES} or a Sampler instance (e.g. MixtureSampler), got {sampler!r}"
            )
    elif not isinstance(sampler, Sampler):
        raise TypeError(
            f"sampler must be a str in {SAMPLER_CHOICES} or a torchrl Sampler, got {type(sampler).__name__}"
        )
    return CollectorReplayBuffer(
        storage=make_storage(capacity, storage=storage, device=device, scratch_dir=scratch_dir),
        sampler=sampler,
        batch_size=batch_size,
        prefetch=prefetch,
        postproc=postproc,
        exclude_keys=exclude_keys,
    )


def make_storage(
    capacity: int, *, storage: str = "tensor", device: str | torch.device = "cpu", scratch_dir: str | Path | None = None
) -> Storage:
    """A 1-D TorchRL storage: ``"tensor"`` (``LazyTensorStorage``) or ``"memmap"`` (``LazyMemmapStorage``)."""
    if storage == "tensor":
        return LazyTensorStorage(capacity, device=device)
    if storage == "memmap":
        return LazyMemmapStorage(capacity, device=device, scratch_dir=scratch_dir)
    raise ValueError(f"storage must be one of {STORAGE_CHOICES}, got {storage!r}")
