"""Environments that tag their steps with clips for VLM scoring."""
from torchrl_vlm.envs.clips import RenderClips, render_gym_frames
from torchrl_vlm.envs.minigrid import (
    MISSION_BYTES,
    decode_mission,
    encode_mission,
    episode_step_limit,
    full_state,
    EVENT_NAMES,
    MINIGRID_ENVS,
    MISSION_WORDS,
    MiniGridObservation,
    make_minigrid_env,
    mission_features,
    register_doorkey_12x12,
)

__all__ = [
    "EVENT_NAMES",
    "MISSION_BYTES",
    "decode_mission",
    "encode_mission",
    "episode_step_limit",
    "full_state",
    "MINIGRID_ENVS",
    "MISSION_WORDS",
    "MiniGridObservation",
    "RenderClips",
    "make_minigrid_env",
    "mission_features",
    "register_doorkey_12x12",
    "render_gym_frames",
]
