"""Scoring: scorers, the separate-process service, and the collector hook (VLM-RB steps 2 and 4).

``TransformersScorer`` is imported on first use, so that ``import torchrl_vlm``
does not pay for importing ``transformers``.
"""
from torchrl_vlm.scoring.base import Scorer, check_scores, validate_clips
from torchrl_vlm.scoring.gallery import ClipGallery
from torchrl_vlm.scoring.hook import VLMScoringHook
from torchrl_vlm.scoring.oracle import EVENT_DEFINITIONS, DelayedScorer, MiniGridEventScorer, NoisyScorer
from torchrl_vlm.scoring.service import ScoredBatch, ScoringService, ScoringServiceError

__all__ = [
    "ClipGallery",
    "DelayedScorer",
    "EVENT_DEFINITIONS",
    "MiniGridEventScorer",
    "NoisyScorer",
    "ScoredBatch",
    "Scorer",
    "ScoringService",
    "ScoringServiceError",
    "TransformersScorer",
    "VLMScoringHook",
    "check_scores",
    "validate_clips",
]


def __getattr__(name):
    if name == "TransformersScorer":
        from torchrl_vlm.scoring.transformers import TransformersScorer

        return TransformersScorer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
