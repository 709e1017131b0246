"""MiniGrid's names, defined once: env ids, actions, event columns, and the mission encoding.

This module imports neither minigrid nor gymnasium nor torchrl, so that a scoring
process (which needs :data:`EVENT_NAMES` and :func:`decode_mission`) starts fast.
"""
from __future__ import annotations

from torchrl_vlm.missions import MISSION_BYTES, decode_mission, encode_mission

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

