"""The λ-annealed mixture sampler of VLM-RB (step 5).

VLM-RB eq. (2): q_t(i) = λ_t · q_P(i) + (1 − λ_t) · q_U(i), where q_U is uniform over
the buffer, q_P(i) ∝ p(i) is proportional to the VLM priority, and λ_t rises
linearly from 0 to λ_max over the first ``warmup`` transitions written.

VLM priorities are binary (a clip is meaningful or not), so q_P is uniform over
the set of positive slots. The sampler keeps that set as a dense array with
O(1) insertion and removal, which makes a draw from q_P as cheap as a uniform
draw: no sum tree and no ``torch.multinomial`` over the whole buffer. A sum tree
(TorchRL's C++ ``SumSegmentTreeFp64``) takes over only when priorities stop
being binary: with TD boosting, or when a caller writes non-binary priorities.
"""
from __future__ import annotations

import math
from multiprocessing.context import get_spawning_popen
from pathlib import Path
from typing import Any

import torch
from torchrl.data.replay_buffers.samplers import Sampler
from torchrl.data.replay_buffers.storages import Storage

try:  # TorchRL's C++ extension; it loads only with the torch build it was compiled for
    from torchrl._torchrl import SumSegmentTreeFp64
except ImportError:  # pragma: no cover - reported when a sum tree is first needed
    SumSegmentTreeFp64 = None

__all__ = ["MixtureSampler", "mixture_lambda"]

_NAN = float("nan")


def mixture_lambda(written: int, lam_max: float | None, warmup: int) -> float:
    """λ_t of VLM-RB: linear from 0 to ``lam_max`` over ``warmup`` transitions written.

    ``lam_max=None`` is pure prioritisation (λ ≡ 1), the paper's ablation.
    """
    if lam_max is None:
        return 1.0
    if warmup <= 0:
        return float(lam_max)
    return float(lam_max) * min(1.0, written / warmup)


class MixtureSampler(Sampler):
    """Samples from λ_t · q_P + (1 − λ_t) · q_U (VLM-RB eq. 2).

    How priorities arrive:

    * **Semantic (VLM) priorities** take TorchRL's standard path,
      ``rb.update_priority(index, priority)``, which reaches
      :meth:`update_priority`. The sampler keeps the priorities it draws from,
      one per storage slot, and never reads or writes the storage: the buffer
      that holds it (:class:`~torchrl_vlm.VLMReplayBuffer`, or the buffer of
      :func:`~torchrl_vlm.make_replay_buffer`) writes the storage column
      ``priority_key`` (``"vlm_priority"``) itself through TorchRL's public
      paths, then calls the sampler. :meth:`priority` reads what the sampler uses.
    * **TD errors** (for ``td_boost``) go through :meth:`update_td_error`;
      then ``q_P(i) ∝ p(i) · (|δ_i| + ε)``. A slot without a TD error of its own
      follows PER's rule for new data: when it becomes positive (its priority
      goes from 0 to > 0), it is assigned the largest ``|δ|`` seen so far, and at
      least 1.0, and it keeps that value until its own TD error arrives. A
      later, larger ``|δ|`` elsewhere or a rewrite of its priority does not change
      it. Draws, importance weights and checkpoints all use that value.

    A slot that is overwritten loses its priority and TD error: new data
    starts at priority 0 ("not known to be meaningful") and is still drawn by
    the uniform part. Index -1, with which TorchRL's
    ``TensorDictMaxValueWriter`` marks the rows it rejected, is skipped
    everywhere, and λ's progress counts only the rows actually written.

    The number of draws from q_P in a batch of B is ⌊λ_t·B⌋ or ⌈λ_t·B⌉, with
    the rounding remainder carried from batch to batch, so that exactly a λ_t
    fraction of all draws comes from q_P. Within each part the draws are
    i.i.d.; the prioritised draws come first in the batch. If no slot has a
    positive priority, the whole batch is uniform.

    Each sample's info holds ``from_priority`` (bool, per item) and
    ``mixture_lambda`` (a scalar), and ``priority_weight`` with
    ``importance_weights=True``. :meth:`stats` returns the same numbers for logging.

    Only 1-D storages are supported (refused at the first ``extend`` and at
    ``sample`` otherwise). Like TorchRL's ``PrioritizedSampler``, the sampler
    cannot be sent to another process (its state would silently diverge);
    ``pickle`` and ``copy.deepcopy`` within a process copy it.

    Args:
        lam_max: the final mixture weight λ_max in [0, 1] (paper: 0.5), or
            ``None`` for pure prioritised sampling.
        warmup: number of transitions written over which λ rises from 0 to
            ``lam_max`` (paper: half of training).
        priority_key: the storage column that holds the VLM priorities; the
            buffer reads it to know which column to write.
        td_boost: weight q_P by ``|δ| + td_eps`` (VLM-RB's continuous-control variant).
        td_eps: ε of the TD boost.
        importance_weights: return ``priority_weight`` = (N · q_t(i))^−β,
            normalised by the batch maximum. Off by default, as in the paper.
        beta: β of the importance weights.
        max_capacity: pre-allocates the per-slot state; it grows on demand otherwise.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_vlm import MixtureSampler, make_replay_buffer
        >>> rb = make_replay_buffer(100, sampler=MixtureSampler(lam_max=0.5, warmup=0), batch_size=8)
        >>> index = rb.extend(TensorDict({"obs": torch.zeros(100, 2),
        ...     "vlm_priority": torch.zeros(100)}, [100]))
        >>> rb.update_priority(index[:10], torch.ones(10))
        >>> batch = rb.sample()
        >>> batch["from_priority"].sum().item()
        4
    """

    def __init__(
        self,
        lam_max: float | None = 0.5,
        warmup: int = 0,
        *,
        priority_key: str = "vlm_priority",
        td_boost: bool = False,
        td_eps: float = 1e-3,
        importance_weights: bool = False,
        beta: float = 0.4,
        max_capacity: int | None = None,
    ):
        if lam_max is not None:
            if isinstance(lam_max, bool) or not isinstance(lam_max, (int, float)):
                raise TypeError(f"lam_max must be a float in [0, 1] or None, got {lam_max!r}")
            if not 0.0 <= float(lam_max) <= 1.0 or math.isnan(lam_max):
                raise ValueError(f"lam_max must lie in [0, 1] (or be None for pure priority), got {lam_max}")
        if isinstance(warmup, bool) or not isinstance(warmup, int):
            raise TypeError(f"warmup must be an int number of transitions, got {warmup!r}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0 transitions, got {warmup}")
        if not isinstance(priority_key, str):
            raise TypeError(f"priority_key must be a str, got {priority_key!r}")
        for name, value in (("td_boost", td_boost), ("importance_weights", importance_weights)):
            if not isinstance(value, bool):  # bool("false") is True: refuse strings rather than guess
                raise TypeError(f"{name} must be a bool, got {value!r}")
        for name, value in (("td_eps", td_eps), ("beta", beta)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {value!r}")
        if not td_eps > 0:
            raise ValueError(f"td_eps must be > 0, got {td_eps}")
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.lam_max = None if lam_max is None else float(lam_max)
        self.warmup = warmup
        self.priority_key = priority_key
        self.td_boost = bool(td_boost)
        self.td_eps = float(td_eps)
        self.importance_weights = bool(importance_weights)
        self.beta = float(beta)
        self._written = 0
        self._lam = mixture_lambda(0, self.lam_max, self.warmup)
        self._carry = 0.0
        self._last_priority_fraction = 0.0
        self._td_max = 0.0  # the largest |δ| seen since the sampler was made (or emptied)
        self._capacity = 0
        self._alloc(max_capacity or 0)
        self._lam_t: torch.Tensor | None = None
        self._lam_t_value = 0.0
        self._masks: list[torch.Tensor] = []
        self._masks_batch = -1

    # ------------------------------------------------------------------ state
    def _alloc(self, capacity: int) -> None:
        """(Re)allocates the per-slot state for ``capacity`` slots, keeping what is there."""
        old = self._capacity
        prio = torch.zeros(capacity, dtype=torch.float32)
        td = torch.full((capacity,), _NAN, dtype=torch.float32)
        td_fill = torch.full((capacity,), _NAN, dtype=torch.float32)
        if old:
            prio[:old] = self._prio
            td[:old] = self._td
            td_fill[:old] = self._td_fill
        self._prio = prio
        self._td = td  # a slot's own |δ|, NaN until its first TD error
        self._td_fill = td_fill  # the |δ| PER's rule assigned it when it turned positive
        self._capacity = capacity
        self._rebuild_index()

    def reserve(self, capacity: int) -> None:
        """Pre-allocates the per-slot state for ``capacity`` slots (a buffer calls it with its storage's size)."""
        self._ensure_capacity(int(capacity))

    def _ensure_capacity(self, size: int) -> None:
        if size > self._capacity:
            self._alloc(max(size, 2 * self._capacity, 1024))

    def _rebuild_index(self) -> None:
        """Rebuilds the positive set (binary mode) or the sum tree from the per-slot state."""
        cap = self._capacity
        self._pos_slot = torch.full((cap,), -1, dtype=torch.int64)
        self._pos_list = torch.empty(cap, dtype=torch.int64)
        self._tree = None
        if self.td_boost or not _is_binary(self._prio):
            self._build_tree()
        else:
            pos = torch.nonzero(self._prio > 0).squeeze(-1)
            self._n_pos = pos.numel()
            self._pos_list[: self._n_pos] = pos
            self._pos_slot[pos] = torch.arange(self._n_pos)

    def _build_tree(self) -> None:
        _require_sum_tree()
        self._tree = SumSegmentTreeFp64(max(self._capacity, 1))
        self._n_pos = int((self._prio > 0).sum())
        if self._capacity:
            index = torch.arange(self._capacity)
            self._tree[index] = self._weights(index, self._prio).double()

    def _weights(self, index: torch.Tensor, prio: torch.Tensor) -> torch.Tensor:
        """q_P's unnormalised weight: p(i), or p(i)·(|δ_i| + ε) with TD boosting.

        |δ_i| is the slot's own TD error, or else what PER's rule assigned it
        when it turned positive; slots at priority 0 weigh 0 whatever they hold.
        """
        if not self.td_boost:
            return prio
        td = self._td[index]
        td = torch.where(torch.isnan(td), self._td_fill[index], td)
        return torch.where(prio > 0, prio * (td + self.td_eps), torch.zeros_like(prio))

    @property
    def _td_default(self) -> float:
        # PER gives new data the largest priority seen so far, starting from 1.
        return max(self._td_max, 1.0)

    # ------------------------------------------------------------- properties
    @property
    def lam(self) -> float:
        """λ_t for the number of transitions written so far."""
        return self._lam

    @property
    def num_positive(self) -> int:
        """Number of slots with a positive priority: the rows q_P draws from (``stats()["positive_slots"]``)."""
        return self._n_pos

    @property
    def transitions_written(self) -> int:
        """Rows written to the storage so far (rows a writer rejected do not count)."""
        return self._written

    def priority(self, index: int | torch.Tensor) -> torch.Tensor:
        """The priority p(i) the sampler draws with, for each slot in ``index`` (a copy).

        Slots never written read 0. The result has the shape of ``index``.
        """
        shape = torch.as_tensor(index).shape
        flat, lo, _ = _flat_index(index)
        if lo < 0:
            raise ValueError(f"index must be >= 0, got {lo}")
        out = torch.zeros(flat.numel(), dtype=torch.float32)
        inside = flat < self._capacity
        out[inside] = self._prio[flat[inside]]
        return out.reshape(shape)

    def stats(self) -> dict[str, float]:
        """What a trainer logs: λ, the last batch's share drawn from q_P, and the positive slots; with
        ``td_boost``, the mean ``|δ|`` of the slots that have one (``td_error_mean``) and of the positive ones
        (``td_error_positive_mean``): whether the clips the VLM liked are the ones the critic gets wrong."""
        out = {
            "lambda": self.lam,
            "priority_fraction": self._last_priority_fraction,
            "positive_slots": float(self._n_pos),
            "transitions_written": float(self._written),
        }
        if self.td_boost:
            known = ~torch.isnan(self._td)
            positive = known & (self._prio > 0)
            out["td_error_mean"] = float(self._td[known].mean()) if bool(known.any()) else float("nan")
            out["td_error_positive_mean"] = float(self._td[positive].mean()) if bool(positive.any()) else float("nan")
        return out

    @property
    def default_priority(self) -> float:
        # New data is "not known to be meaningful" (PAPERS.md step 2: we choose 0).
        return 0.0

    # ---------------------------------------------------------------- writes
    def add(self, index: int | torch.Tensor | None) -> None:
        if index is None:  # TensorDictMaxValueWriter.add did not write the row
            return
        if isinstance(index, tuple) or torch.as_tensor(index).numel() > 1:
            raise _multidim_error(index)  # one row of a multi-dimensional storage
        self.extend(torch.as_tensor(index).reshape(1))

    def extend(self, index: torch.Tensor) -> None:
        index, lo, hi = _flat_index(index)
        if lo < 0:  # rows the writer rejected (-1): nothing was written there
            index = index[index >= 0]
        if index.numel() == 0:
            return
        self._written += index.numel()
        self._lam = mixture_lambda(self._written, self.lam_max, self.warmup)
        self._ensure_capacity(hi + 1)
        # The slots now hold new data: their old priority and TD error are void.
        index = index.unique()
        self._td[index] = _NAN
        self._td_fill[index] = _NAN
        self._set(index, torch.zeros(index.numel()), 0.0, 0.0)

    @torch.no_grad()
    def update_priority(
        self,
        index: int | torch.Tensor,
        priority: float | torch.Tensor,
        *,
        storage: Storage | None = None,
    ) -> None:
        """Sets the semantic priority p(i) of the slots in ``index``.

        ``priority`` is a scalar or one value per index (shaped ``[N]`` or
        ``[N, 1]``), finite and >= 0; VLM priorities are 0 or 1. When an index
        appears several times, the last value wins; index -1 (a row the writer
        rejected) is skipped. ``storage``, which TorchRL's buffers pass, is only
        read to refuse slots it does not hold yet (a positive slot beyond the
        data would be drawn and fail every later sample); the buffer writes the
        storage column, the sampler keeps its own state. Every input is checked
        before anything changes.
        """
        index, lo, hi = _flat_index(index)
        if storage is not None and hi >= len(storage):
            raise ValueError(
                f"index {hi} has not been written yet: the storage holds {len(storage)} rows "
                f"(valid indices: 0 to {len(storage) - 1}, or -1 for a row the writer rejected)"
            )
        checked = _per_index(priority, index.numel(), "priority")
        p_lo, p_hi = _check_values(checked, "priority", nonnegative=True)
        index, priority = _last_wins(*_drop_rejected(index, checked, lo))
        if index.numel() == 0:
            return
        if priority is not checked:  # rows were dropped: the fast paths need the exact range
            p_lo, p_hi = (float(x) for x in torch.aminmax(priority))
        if self._tree is None and SumSegmentTreeFp64 is None and not _is_binary(priority):
            _require_sum_tree()  # fail now rather than half-way through the write
        self._ensure_capacity(hi + 1)
        self._set(index, priority, p_lo, p_hi)

    @torch.no_grad()
    def update_td_error(self, index: int | torch.Tensor, td_error: float | torch.Tensor) -> None:
        """Records TD errors δ for TD boosting: ``q_P(i) ∝ p(i)·(|δ_i| + ε)``.

        Call it with the sampled indices after computing the loss, e.g.
        ``rb.sampler.update_td_error(batch["index"], batch["td_error"])``;
        ``td_error`` is a scalar or one finite value per index (``[N]`` or
        ``[N, 1]``). The sign of δ does not matter; index -1 is skipped, and
        every input is checked before anything changes.
        """
        if not self.td_boost:
            raise RuntimeError("update_td_error needs MixtureSampler(td_boost=True)")
        index, lo, hi = _flat_index(index)
        td_error = _per_index(td_error, index.numel(), "td_error")
        _check_values(td_error, "td_error", nonnegative=False)
        index, td_error = _last_wins(*_drop_rejected(index, td_error.abs(), lo))
        if index.numel() == 0:
            return
        self._ensure_capacity(hi + 1)
        self._td[index] = td_error
        self._td_fill[index] = _NAN  # its own TD error replaces what PER's rule assigned
        self._td_max = max(self._td_max, float(td_error.max()))
        self._tree[index] = self._weights(index, self._prio[index]).double()

    def mark_update(self, index, *, storage=None) -> None:
        return

    def _set(self, index: torch.Tensor, prio: torch.Tensor, lo: float, hi: float) -> None:
        """Writes p(index) (unique indices, values in [lo, hi]) and syncs the positive set or tree."""
        old = self._prio.index_select(0, index)
        self._prio.index_copy_(0, index, prio)
        if self._tree is None:
            if lo == hi and lo in (0.0, 1.0):
                # One verdict for all (a clip's write-back, or fresh slots): one direction only.
                if lo:
                    self._append(index[old == 0])
                else:
                    self._remove(index[old > 0])
                return
            if hi <= 1 and torch.equal(prio, (prio > 0).to(prio.dtype)):
                change = prio - old  # +1 joins the positive set, -1 leaves it
                self._remove(index[change < 0])
                self._append(index[change > 0])
                return
            self._build_tree()  # priorities stopped being binary: switch to the sum tree
            return
        if self.td_boost and hi > 0:
            # PER's rule, applied once, at the moment a slot turns positive.
            turned_on = index[(old == 0) & (prio > 0)]
            if turned_on.numel():
                has_own = ~torch.isnan(self._td[turned_on])
                self._td_fill[turned_on] = torch.where(has_own, _NAN, self._td_default)
        self._n_pos += int((prio > 0).sum()) - int((old > 0).sum())
        self._tree[index] = self._weights(index, prio).double()

    def _append(self, index: torch.Tensor) -> None:
        n, k = self._n_pos, index.numel()
        if k == 0:
            return
        self._pos_list[n : n + k] = index
        self._pos_slot[index] = torch.arange(n, n + k)
        self._n_pos = n + k

    def _remove(self, index: torch.Tensor) -> None:
        """Swap-removes unique members from the dense positive list, vectorised."""
        n, k = self._n_pos, index.numel()
        if k == 0:
            return
        slots = self._pos_slot[index]
        self._pos_slot[index] = -1
        # Survivors in the last k positions move into the holes left below n - k.
        tail = self._pos_list[n - k : n]
        movers = tail[self._pos_slot[tail] >= 0]
        holes = slots[slots < n - k]
        self._pos_list[holes] = movers
        self._pos_slot[movers] = holes
        self._n_pos = n - k

    # ----------------------------------------------------------------- sample
    def _from_priority_masks(self, batch_size: int) -> list[torch.Tensor]:
        # masks[k] marks "the first k items". They are views of one fixed
        # [True]*B + [False]*B pattern, made once per batch size, so a draw costs a
        # list lookup. Samples share them: treat ``from_priority`` as read-only.
        if self._masks_batch != batch_size:
            pattern = torch.zeros(2 * batch_size, dtype=torch.bool)
            pattern[:batch_size] = True
            self._masks = [pattern[batch_size - k : 2 * batch_size - k] for k in range(batch_size + 1)]
            self._masks_batch = batch_size
        return self._masks

    def sample(self, storage: Storage, batch_size: int) -> tuple[torch.Tensor, dict]:
        ndim = getattr(storage, "ndim", 1)
        if ndim != 1:
            raise ValueError(
                f"MixtureSampler supports 1-D storages only; got a {type(storage).__name__} with "
                f"ndim={ndim}. Use a 1-D storage (e.g. LazyTensorStorage(capacity), ndim=1)."
            )
        n = len(storage)
        if n == 0:
            raise RuntimeError("Cannot sample from an empty storage.")
        lam = self._lam
        k = 0
        if self._n_pos and lam:
            carry = self._carry + lam * batch_size
            k = min(int(carry), batch_size)
            self._carry = carry - k
        index = torch.randint(n, (batch_size,), generator=self._rng)
        if k:  # the first k draws come from q_P instead
            self._sample_priority(k, out=index[:k])
        self._last_priority_fraction = k / batch_size
        if self._lam_t is None or self._lam_t_value != lam:
            # A fresh scalar whenever λ moves: earlier samples hold views of the old one.
            self._lam_t, self._lam_t_value = torch.tensor(lam), lam
        info = {"from_priority": self._from_priority_masks(batch_size)[k], "mixture_lambda": self._lam_t}
        if self.importance_weights:
            info["priority_weight"] = self._importance_weights(index, lam, n)
        return index, info

    def _sample_priority(self, k: int, out: torch.Tensor) -> None:
        """Writes k i.i.d. draws from q_P into ``out``."""
        if self._tree is None:
            pick = torch.randint(self._n_pos, (k,), generator=self._rng)
            torch.index_select(self._pos_list, 0, pick, out=out)
            return
        total = self._tree.query(0, self._capacity)
        mass = torch.rand(k, generator=self._rng, dtype=torch.float64) * total
        index = torch.as_tensor(self._tree.scan_lower_bound(mass)).clamp_(0, self._capacity - 1)
        # Floating-point round-off can land on a zero-weight neighbour: step back to a positive slot.
        zero = self._prio[index] == 0
        if bool(zero.any()):
            positive = torch.nonzero(self._prio > 0).squeeze(-1)
            index[zero] = positive[torch.searchsorted(positive, index[zero]).clamp_(max=positive.numel() - 1)]
        out.copy_(index)

    def _importance_weights(self, index: torch.Tensor, lam: float, n: int) -> torch.Tensor:
        if self._n_pos == 0 or lam == 0:
            return torch.ones(index.numel())
        if self._tree is None:
            q_p = self._prio[index] / self._n_pos
        else:
            q_p = self._weights(index, self._prio[index]) / self._tree.query(0, self._capacity)
        q = lam * q_p + (1.0 - lam) / n
        weight = (n * q).pow(-self.beta)
        return (weight / weight.max()).float()

    # --------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        # Tensors, floats, ints, bools and None only: loads() reads it with weights_only=True.
        return {
            "lam_max": self.lam_max,
            "warmup": self.warmup,
            "td_boost": self.td_boost,
            "td_eps": self.td_eps,
            "importance_weights": self.importance_weights,
            "beta": self.beta,
            "written": self._written,
            "carry": self._carry,
            "td_max": self._td_max,
            "priority": self._prio.clone(),
            "td_error": self._td.clone(),
            "td_fill": self._td_fill.clone(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.lam_max = state_dict["lam_max"]
        self.warmup = state_dict["warmup"]
        self.td_boost = state_dict["td_boost"]
        self.td_eps = state_dict["td_eps"]
        self.importance_weights = state_dict["importance_weights"]
        self.beta = state_dict["beta"]
        self._written = int(state_dict["written"])
        self._lam = mixture_lambda(self._written, self.lam_max, self.warmup)
        self._carry = float(state_dict["carry"])
        self._prio = state_dict["priority"].clone().float()
        self._td = state_dict["td_error"].clone().float()
        self._capacity = self._prio.numel()
        self._td_max = float(state_dict["td_max"])
        self._td_fill = state_dict["td_fill"].clone().float()
        self._rebuild_index()

    def dumps(self, path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), path / "mixture_sampler.pt")

    def loads(self, path) -> None:
        self.load_state_dict(torch.load(Path(path) / "mixture_sampler.pt", weights_only=True))

    def _empty(self) -> None:
        self._written = 0
        self._lam = mixture_lambda(0, self.lam_max, self.warmup)
        self._carry = 0.0
        self._td_max = 0.0
        self._prio.zero_()
        self._td.fill_(_NAN)
        self._td_fill.fill_(_NAN)
        self._rebuild_index()

    def __getstate__(self):
        # As TorchRL's PrioritizedSampler: a copy in another process would silently
        # keep its own priorities and λ while the learner's diverge.
        if get_spawning_popen() is not None:
            raise RuntimeError(
                f"{type(self).__name__} cannot be shared between processes: its priorities, "
                "TD errors and λ schedule live in this process, and a copy in another process "
                "would silently diverge from them. Keep the sampler (and the buffer that holds "
                "it) in the learner process, and send workers data, not the sampler."
            )
        return super().__getstate__()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(lam_max={self.lam_max}, warmup={self.warmup}, "
            f"lambda={self.lam:.3f}, positive={self._n_pos}, td_boost={self.td_boost})"
        )


def _require_sum_tree() -> None:
    if SumSegmentTreeFp64 is None:
        raise ImportError(
            "MixtureSampler needs TorchRL's C++ sum tree for TD boosting or non-binary "
            "priorities, and torchrl._torchrl failed to load (torch must be the build "
            "torchrl was compiled for: torch==2.14.1 for torchrl 0.14.1)"
        )


def _is_binary(prio: torch.Tensor) -> bool:
    return bool(((prio == 0) | (prio == 1)).all()) if prio.numel() else True


def _multidim_error(index) -> ValueError:
    if isinstance(index, tuple):
        ndim, what = len(index), f"a tuple of {len(index)} index tensors"
    else:
        index = torch.as_tensor(index)
        ndim, what = index.shape[-1], f"an index of shape {list(index.shape)}"
    return ValueError(
        f"MixtureSampler supports 1-D storages only; got {what}, as a storage with ndim={ndim} "
        "writes. Use a 1-D storage (e.g. LazyTensorStorage(capacity), ndim=1) and flatten the "
        "data before writing it."
    )


def _flat_index(index) -> tuple[torch.Tensor, int, int]:
    """A scalar or 1-D integer index as a flat int64 CPU tensor, with its min and max (0, -1 if empty)."""
    if isinstance(index, tuple):
        raise _multidim_error(index)
    index = torch.as_tensor(index)
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise TypeError(f"index must hold integers, got dtype {index.dtype}")
    if index.dim() > 1:
        if index.dim() == 2 and index.shape[-1] > 1:
            raise _multidim_error(index)
        raise ValueError(f"index must be a scalar or 1-D, got shape {list(index.shape)}")
    index = index.reshape(-1).to("cpu", torch.int64)
    if index.numel() == 0:
        return index, 0, -1
    lo, hi = (int(x) for x in torch.aminmax(index))
    return index, lo, hi


def _per_index(values, n: int, name: str) -> torch.Tensor:
    """``values`` as n float32 values: a scalar is broadcast; ``[n]`` and ``[n, 1]`` are accepted."""
    values = torch.as_tensor(values).detach()
    if values.numel() == 1:
        values = values.reshape(1).expand(n)
    elif tuple(values.shape) not in ((n,), (n, 1)):
        raise ValueError(
            f"{name} must be a scalar or hold one value per index, shaped [N] or [N, 1]: "
            f"got shape {list(values.shape)} for N={n} indices"
        )
    return values.reshape(n).to("cpu", torch.float32)


def _check_values(values: torch.Tensor, name: str, *, nonnegative: bool) -> tuple[float, float]:
    """Returns (min, max); raises unless all values are finite (and >= 0).

    One reduction does it: NaN propagates into min and max.
    """
    if values.numel() == 0:
        return 0.0, 0.0
    lo, hi = (float(x) for x in torch.aminmax(values))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} must be finite (in float32); got NaN or inf")
    if nonnegative and lo < 0:
        raise ValueError(f"{name} must be >= 0; got a minimum of {lo}")
    return lo, hi


def _drop_rejected(index: torch.Tensor, values: torch.Tensor, lo: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Drops the rows a writer rejected (index -1, from ``TensorDictMaxValueWriter``)."""
    if lo >= 0:
        return index, values
    if lo < -1:
        raise ValueError(f"index must be >= 0 (or -1 for a row the writer rejected), got {lo}")
    keep = index >= 0
    return index[keep], values[keep]


def _last_wins(index: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Deduplicates ``index`` keeping the last value written to each slot."""
    n = index.numel()
    # A clip's write-back is small and duplicate-free: a Python set answers faster than torch.unique.
    if n <= 256 and len(set(index.tolist())) == n:
        return index, values
    unique, inverse = torch.unique(index, return_inverse=True)
    if unique.numel() == n:
        return index, values
    last = torch.full((unique.numel(),), -1, dtype=torch.int64).scatter_reduce(
        0, inverse, torch.arange(n), reduce="amax"
    )
    return unique, values[last]
