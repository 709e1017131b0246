"""torchrl_vlm: TorchRL-native components that let a frozen VLM guide reinforcement learning.

The public names below are the contract that recipes, tests and users rely on.
``TransformersScorer`` is imported on first use (it pulls in ``transformers``).
"""
from torchrl_vlm.envs import (
    EVENT_NAMES,
    MINIGRID_ENVS,
    RenderClips,
    decode_mission,
    episode_step_limit,
    make_minigrid_env,
)
from torchrl_vlm.replay import ClipAssembler, MixtureSampler, NStepReturns, make_replay_buffer, mixture_lambda
from torchrl_vlm.scoring import (
    ClipGallery,
    EVENT_DEFINITIONS,
    DelayedScorer,
    MiniGridEventScorer,
    NoisyScorer,
    Scorer,
    ScoringService,
    ScoringServiceError,
    VLMScoringHook,
)
from torchrl_vlm.teacher import (
    DistillA2CLoss,
    DistillClipPPOLoss,
    NoisyTeacher,
    PlannerTeacher,
    VLMTeacher,
    distillation_kl,
)

__version__ = "0.1.0"

__all__ = [
    "ClipAssembler",
    "ClipGallery",
    "DelayedScorer",
    "DistillA2CLoss",
    "DistillClipPPOLoss",
    "EVENT_DEFINITIONS",
    "EVENT_NAMES",
    "MINIGRID_ENVS",
    "MiniGridEventScorer",
    "MixtureSampler",
    "NStepReturns",
    "NoisyScorer",
    "NoisyTeacher",
    "PlannerTeacher",
    "RenderClips",
    "Scorer",
    "ScoringService",
    "ScoringServiceError",
    "TransformersScorer",
    "VLMScoringHook",
    "VLMTeacher",
    "decode_mission",
    "distillation_kl",
    "episode_step_limit",
    "make_minigrid_env",
    "make_replay_buffer",
    "mixture_lambda",
]


def __getattr__(name):
    if name == "TransformersScorer":
        from torchrl_vlm import scoring

        return scoring.TransformersScorer  # imported on first use there
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
