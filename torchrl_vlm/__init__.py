"""torchrl_vlm: TorchRL-native components that let a frozen VLM guide reinforcement learning.

See DESIGN in the repository for the data flow. Public names are re-exported here.
"""
from torchrl_vlm.envs import EVENT_NAMES, RenderClips, make_minigrid_env
from torchrl_vlm.replay import MixtureSampler, make_replay_buffer, mixture_lambda

__version__ = "0.1.0"

__all__ = [
    "EVENT_NAMES",
    "MixtureSampler",
    "RenderClips",
    "make_minigrid_env",
    "make_replay_buffer",
    "mixture_lambda",
]
