"""LVLM2P: teachers (distributions over actions) and the losses that distil a student towards them."""
from torchrl_vlm.teacher.loss import DistillA2CLoss
from torchrl_vlm.teacher.loss import DistillClipPPOLoss
from torchrl_vlm.teacher.loss import distillation_kl
from torchrl_vlm.teacher.planner import NoisyTeacher
from torchrl_vlm.teacher.planner import PlannerTeacher
from torchrl_vlm.teacher.remote import RemoteTeacher
from torchrl_vlm.teacher.vlm import VLMTeacher

__all__ = [
    "DistillA2CLoss",
    "DistillClipPPOLoss",
    "NoisyTeacher",
    "PlannerTeacher",
    "RemoteTeacher",
    "VLMTeacher",
    "distillation_kl",
]
