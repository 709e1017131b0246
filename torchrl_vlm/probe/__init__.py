"""The scorer probe: how good is a VLM, with a prompt, on an env's clips, against the simulator's truth?

``python -m torchrl_vlm.probe`` (see :mod:`torchrl_vlm.probe.cli`) collects clips with a mix of
policies (:func:`collect_clips`), labels them from events, scores them and reports precision,
recall, F1, ROC-AUC, calibration, throughput and latency (:func:`binary_report`, :func:`calibration`).
"""
from torchrl_vlm._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("ClipSet", "ClipSetError", "POLICIES", "collect_clips"), "torchrl_vlm.probe.clipset"),
    **dict.fromkeys(("binary_report", "calibration", "roc_auc"), "torchrl_vlm.probe.metrics"),
    **dict.fromkeys(("score_clips", "place_on_gain_table"), "torchrl_vlm.probe.report"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
