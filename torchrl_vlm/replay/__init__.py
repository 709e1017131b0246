"""Replay: the λ-annealed mixture sampler, collector-batch buffers, clip assembly and its frame store, n-step
returns."""
from torchrl_vlm._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("CollectorReplayBuffer", "make_replay_buffer"), "torchrl_vlm.replay.buffer"),
    "ClipAssembler": "torchrl_vlm.replay.clips",
    **dict.fromkeys(("FrameStore", "packed_layout"), "torchrl_vlm.replay.frame_store"),
    "NStepReturns": "torchrl_vlm.replay.nstep",
    **dict.fromkeys(("MixtureSampler", "mixture_lambda"), "torchrl_vlm.replay.sampler"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
