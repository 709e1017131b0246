"""Environments that tag their steps with clips for VLM scoring (imported on first use)."""
from torchrl_vlm._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(
        ("RenderClips", "render_gym_frames"), "torchrl_vlm.envs.clips"
    ),
    **dict.fromkeys(
        (
            "MISSION_WORDS",
            "MiniGridObservation",
            "episode_step_limit",
            "full_state",
            "make_minigrid_env",
            "mission_features",
            "register_doorkey_12x12",
            "render_full_grid",
        ),
        "torchrl_vlm.envs.minigrid",
    ),
    **dict.fromkeys(
        (
            "EVENT_NAMES",
            "LVLM2P_ENVS",
            "MINIGRID_ACTIONS",
            "MINIGRID_ENVS",
            "MISSION_BYTES",
            "decode_mission",
            "encode_mission",
        ),
        "torchrl_vlm.envs.minigrid_names",
    ),
    **dict.fromkeys(("DMCTaskState", "dmc_tasks", "make_dmc_env"), "torchrl_vlm.envs.dmc"),
    **dict.fromkeys(
        (
            "DMC_ACTION_REPEAT",
            "DMC_EVENT_DEFINITIONS",
            "DMC_EVENT_NAMES",
            "DMC_GOALS",
            "DMCGoal",
            "default_action_repeat",
            "dmc_goal",
            "dmc_mission",
        ),
        "torchrl_vlm.envs.dmc_goals",
    ),
    **dict.fromkeys(
        (
            "EPISODE_STEPS",
            "OGBENCH_ENVS",
            "OGBENCH_EVENT_NAMES",
            "OGBENCH_SUBGOALS",
            "OGBenchObservation",
            "make_ogbench_env",
        ),
        "torchrl_vlm.envs.ogbench",
    ),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
