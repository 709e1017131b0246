"""Scoring: scorers, the separate-process service, and the VLM-RB replay buffer (VLM-RB steps 2–4).

Names are imported on first use, so that a scoring process imports only what its
scorer needs (``TransformersScorer`` pulls in ``transformers``).
"""
from torchrl_vlm._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("Scorer", "check_scores", "unpack_frames", "validate_clips"), "torchrl_vlm.scoring.base"),
    "VLMReplayBuffer": "torchrl_vlm.scoring.buffer",
    **dict.fromkeys(
        ("CachedScorer", "VerdictCacheError", "cached", "read_verdicts", "verdict_gallery"), "torchrl_vlm.scoring.cache"
    ),
    "ClipGallery": "torchrl_vlm.scoring.gallery",
    **dict.fromkeys(
        (
            "DMCEventScorer",
            "EVENT_DEFINITIONS",
            "DelayedScorer",
            "MiniGridEventScorer",
            "NoisyScorer",
            "OGBENCH_EVENT_DEFINITIONS",
            "OGBenchEventScorer",
        ),
        "torchrl_vlm.scoring.oracle",
    ),
    **dict.fromkeys(("ScoredBatch", "ScoringService", "ScoringServiceError"), "torchrl_vlm.scoring.service"),
    "TransformersScorer": "torchrl_vlm.scoring.transformers",
    **dict.fromkeys(("OpenAIScorer", "OpenAIScorerError"), "torchrl_vlm.scoring.openai"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
