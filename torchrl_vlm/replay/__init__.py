"""Replay: the λ-annealed mixture sampler and buffer factory (VLM-RB step 5)."""
from torchrl_vlm.replay.buffer import make_replay_buffer
from torchrl_vlm.replay.clips import ClipAssembler
from torchrl_vlm.replay.nstep import NStepReturns
from torchrl_vlm.replay.sampler import MixtureSampler, mixture_lambda

__all__ = ["ClipAssembler", "MixtureSampler", "NStepReturns", "make_replay_buffer", "mixture_lambda"]
