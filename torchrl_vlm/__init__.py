"""torchrl_vlm: TorchRL-native components that let a frozen VLM guide reinforcement learning.

The public names below are the contract that recipes, tests and users rely on.
Each is imported the first time it is read (``torchrl_vlm._lazy``): a scoring
process then imports only what its scorer needs, and ``import torchrl_vlm`` is cheap.
"""
from torchrl_vlm import envs, objectives, replay, scoring, teacher
from torchrl_vlm._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    **{name: envs._EXPORTS[name] for name in (
        "EVENT_NAMES", "LVLM2P_ENVS", "MINIGRID_ACTIONS", "MINIGRID_ENVS", "RenderClips", "decode_mission",
        "episode_step_limit", "make_minigrid_env", "OGBENCH_ENVS", "OGBENCH_EVENT_NAMES", "make_ogbench_env",
        "DMC_EVENT_NAMES", "DMC_GOALS", "make_dmc_env",
    )},
    **objectives._EXPORTS,
    # The clip-protocol helpers stay in their subpackages: users of the top level never need them.
    **{name: module for name, module in replay._EXPORTS.items() if name not in ("FrameStore", "packed_layout")},
    **{name: module for name, module in scoring._EXPORTS.items()
       if name not in ("check_scores", "unpack_frames", "validate_clips")},
    **teacher._EXPORTS,
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
