"""FrameStore: the frames of clips not yet shipped to the scorer, each held once (VLM-RB step 3).

A clip's steps arrive over several collector batches, and a VLM scorer reads a few of its frames (the env
renders only those: :class:`~torchrl_vlm.frames.FrameSchedule`). Carrying every step's frame through the
regrouping of steps into clips would copy each frame at every stage, the unrendered zeros included. Instead the
replay buffer puts each batch's *rendered* frames here once, the clip assembler carries a small integer
reference per step, and when clips are complete their frames are packed straight into the block that goes to
the scoring process (:meth:`FrameStore.gather`): two copies of a rendered frame, none of the others.
"""
from __future__ import annotations

from collections import deque

import torch

__all__ = ["FrameStore", "packed_layout"]


def packed_layout(refs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each clip's frames go in a packed block, from the per-step references ``refs`` (int64 ``[B, L]``,
    0 where a step has no frame).

    Returns ``(frame_steps, packed_refs)``, both ``[B, K]`` with ``K`` the most frames any clip has:
    ``frame_steps[b, k]`` is the clip step of clip ``b``'s ``k``-th frame (in step order, ``-1`` past its
    last frame) and ``packed_refs`` its reference (0 there).

    Examples:
        >>> refs = torch.tensor([[3, 0, 0, 4], [0, 7, 0, 0]])
        >>> packed_layout(refs)
        (tensor([[ 0,  3],
                [ 1, -1]]), tensor([[3, 4],
                [7, 0]]))
    """
    has = refs > 0
    counts = has.sum(1)
    width = int(counts.max()) if counts.numel() else 0
    # Steps with a frame first, in step order: a stable sort of "has no frame".
    order = torch.sort((~has).to(torch.uint8), dim=1, stable=True).indices[:, :width]
    valid = torch.arange(width) < counts.unsqueeze(1)
    frame_steps = torch.where(valid, order, torch.full_like(order, -1))
    packed_refs = torch.where(valid, refs.gather(1, order), torch.zeros_like(order))
    return frame_steps, packed_refs


class FrameStore:
    """Frames held once until the clips that show them are shipped, named by a running reference.

    :meth:`add` takes a batch's frames (only the rendered ones) and returns their references (``1, 2, ...``
    in arrival order; 0 is kept for "no frame"); :meth:`gather` copies the frames of given references into
    a block; :meth:`release` forgets every chunk that no live reference points into. References grow
    without bound, and chunks arrive in order, so one bound (the oldest live reference) says what to drop.

    Examples:
        >>> store = FrameStore()
        >>> refs = store.add(torch.arange(3, dtype=torch.uint8).reshape(3, 1, 1, 1).expand(3, 2, 2, 3))
        >>> refs
        tensor([1, 2, 3])
        >>> out = torch.zeros(1, 2, 2, 2, 3, dtype=torch.uint8)
        >>> store.gather(torch.tensor([[3, 0]]), out)
        >>> out[0, :, 0, 0, 0]
        tensor([2, 0], dtype=torch.uint8)
        >>> store.release(torch.tensor([3]))
        >>> len(store)
        3
    """

    def __init__(self):
        self._chunks: deque[tuple[int, torch.Tensor]] = deque()  # (first reference, frames [k, ...])
        self._next = 1

    def __len__(self) -> int:
        """Frames held."""
        return sum(chunk.shape[0] for _, chunk in self._chunks)

    @property
    def frame_shape(self) -> tuple[int, ...] | None:
        """The shape of one frame (``None`` while the store is empty)."""
        return None if not self._chunks else tuple(self._chunks[-1][1].shape[1:])

    def add(self, frames: torch.Tensor) -> torch.Tensor:
        """Keeps ``frames`` (``[k, ...]``, owned by the store from now on: pass a copy of data that others
        may change); returns their references, int64 ``[k]``."""
        first = self._next
        self._next += frames.shape[0]
        if frames.shape[0]:
            self._chunks.append((first, frames))
        return torch.arange(first, self._next, dtype=torch.int64)

    def gather(self, refs: torch.Tensor, out: torch.Tensor) -> None:
        """Copies the frame of each reference in ``refs`` (any shape, 0: none, left as it is in ``out``) into
        ``out`` (``[*refs.shape, *frame_shape]``)."""
        flat_refs = refs.reshape(-1)
        wanted = flat_refs[flat_refs > 0]
        if wanted.numel() and (not self._chunks or int(wanted.min()) < self._chunks[0][0]
                               or int(wanted.max()) >= self._next):
            raise KeyError(f"frames {int(wanted.min())}..{int(wanted.max())} asked for, the store holds "
                           f"{self._chunks[0][0] if self._chunks else self._next}..{self._next - 1}: a reference "
                           "released (release() only what no unshipped clip refers to) or never added")
        flat_out = out.view(-1, *out.shape[refs.ndim:])
        for first, chunk in self._chunks:
            hit = (flat_refs >= first) & (flat_refs < first + chunk.shape[0])
            if bool(hit.any()):
                rows = torch.nonzero(hit).squeeze(1)
                flat_out[rows] = chunk[flat_refs[rows] - first]

    def release(self, live: torch.Tensor | None) -> None:
        """Drops the chunks that hold no reference at or above the oldest in ``live`` (0s ignored); an empty
        ``live`` (or ``None``) drops everything."""
        live = None if live is None else live[live > 0]
        oldest = int(live.min()) if live is not None and live.numel() else self._next
        while self._chunks and self._chunks[0][0] + self._chunks[0][1].shape[0] <= oldest:
            self._chunks.popleft()

    def state_dict(self) -> dict:
        """The held frames and the next reference, as tensors and ints (loads with ``weights_only``)."""
        return {"next": self._next, "first": [first for first, _ in self._chunks],
                "chunks": [chunk for _, chunk in self._chunks]}

    def load_state_dict(self, state: dict) -> None:
        self._next = int(state["next"])
        self._chunks = deque(zip((int(f) for f in state["first"]), state["chunks"], strict=True))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(frames={len(self)}, chunks={len(self._chunks)})"
