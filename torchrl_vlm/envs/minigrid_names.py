"""MiniGrid's names, defined once: env ids, actions, event columns, and the mission encoding.

This module imports neither minigrid nor gymnasium nor torchrl, so that a scoring
process (which needs :data:`EVENT_NAMES` and :func:`decode_mission`) starts fast.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "EVENT_NAMES",
    "LVLM2P_ENVS",
    "MINIGRID_ACTIONS",
    "MINIGRID_ENVS",
    "MISSION_BYTES",
    "decode_mission",
    "encode_mission",
]

#: Environments the project's recipes and tests are known to work with.
MINIGRID_ENVS = (
    "MiniGrid-DoorKey-5x5-v0",
    "MiniGrid-DoorKey-6x6-v0",
    "MiniGrid-DoorKey-8x8-v0",
    "MiniGrid-DoorKey-12x12-v0",
    "MiniGrid-DoorKey-16x16-v0",
    "MiniGrid-LavaGapS7-v0",
    "MiniGrid-Dynamic-Obstacles-6x6-v0",
    "MiniGrid-Fetch-6x6-N2-v0",
    "MiniGrid-GoToDoor-6x6-v0",
)

#: The four MiniGrid tasks of LVLM2P.
LVLM2P_ENVS = (
    "MiniGrid-LavaGapS7-v0",
    "MiniGrid-Dynamic-Obstacles-6x6-v0",
    "MiniGrid-Fetch-6x6-N2-v0",
    "MiniGrid-GoToDoor-6x6-v0",
)

#: MiniGrid's actions in the order of their integer codes, named as a VLM teacher reads them.
MINIGRID_ACTIONS = ("turn left", "turn right", "move forward", "pick up", "drop", "toggle", "done")

#: Names of the columns of the ``events`` flag vector, in order. ``first_*``
#: flags fire only for the first such event of an episode (a key dropped and
#: picked up again is not progress).
EVENT_NAMES = (
    "key_pickup",
    "door_open",
    "goal",
    "first_key_pickup",
    "first_door_open",
)

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
