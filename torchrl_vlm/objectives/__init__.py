"""Losses TorchRL does not have: IQN (implicit quantile networks) for the DQN recipe."""
from torchrl_vlm._lazy import lazy_exports

_EXPORTS = dict.fromkeys(
    ("CosineTauEmbedding", "IQNLoss", "IQNNetwork", "IQNQValues", "quantile_huber_loss"), "torchrl_vlm.objectives.iqn"
)
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
