"""LVLM2P: teachers (distributions over actions) and the losses that distil a student towards them."""
from torchrl_vlm._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("DistillA2CLoss", "DistillClipPPOLoss", "distillation_kl"), "torchrl_vlm.teacher.loss"),
    **dict.fromkeys(("NoisyTeacher", "PlannerTeacher"), "torchrl_vlm.teacher.planner"),
    "RemoteTeacher": "torchrl_vlm.teacher.remote",
    "VLMTeacher": "torchrl_vlm.teacher.vlm",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
