"""Missions as fixed-size UTF-8 byte tensors, the form any env can give them in.

A mission string travels through envs, collectors and replay as uint8 ``[MISSION_BYTES]``: it then batches,
stacks and stores like any other entry, at no cost per step. The MiniGrid and DMControl factories encode their
missions so; the replay buffers decode what they get back (string missions are passed on as they are). Nothing
here knows an env family.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["MISSION_BYTES", "decode_mission", "encode_mission", "mission_strings"]

#: Length of the byte encoding of a mission string (longer missions are refused).
MISSION_BYTES = 96


def encode_mission(text: str) -> np.ndarray:
    """A mission string as zero-padded UTF-8 bytes (uint8 ``[MISSION_BYTES]``).

    Missions travel as fixed-size tensors rather than Python strings: they then
    batch, stack and store like any other entry, at no cost per step.
    """
    raw = text.encode("utf-8")
    if len(raw) > MISSION_BYTES:
        raise ValueError(f"mission {text!r} is longer than MISSION_BYTES={MISSION_BYTES} bytes")
    out = np.zeros(MISSION_BYTES, dtype=np.uint8)
    out[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return out


def decode_mission(mission) -> str | list:
    """The string(s) behind an encoded ``mission`` entry (``[..., MISSION_BYTES]``), nested like its batch."""
    array = np.asarray(torch.as_tensor(mission).cpu(), dtype=np.uint8)
    if array.ndim == 1:
        return array.tobytes().rstrip(b"\0").decode("utf-8")
    return [decode_mission(row) for row in array]


def mission_strings(value) -> list[str]:
    """A batch's missions as a flat list of strings: byte tensors decoded, nested strings (a ``NonTensorStack``,
    lists) flattened in order."""
    if isinstance(value, torch.Tensor):
        return list(_flat(decode_mission(value)))
    if hasattr(value, "tolist"):
        value = value.tolist()
    return [str(v) for v in _flat(value)]


def _flat(value):
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from _flat(v)
    else:
        yield value
