"""COVR: a VLM action prior for SAC, fine-tuned with LoRA on the agent's own filtered experience.

The paper (arXiv 2601.06122, AAAI-26; ``PAPERS.md`` §3) in TorchRL pieces:

- the equations, one function each: :func:`parse_action`, :func:`eddf_mask` (eq. 5), :func:`ralw_weights` and
  :func:`ralw_token_nll` (eq. 6), :func:`progressive_schedule`, :func:`returns_to_go`, :func:`prior_penalty` (eq. 4);
- :class:`ActionPrior`: the VLM that writes ``Action: [..]`` for a frame (in its own process);
- :class:`PriorReplayBuffer`: replay whose rows get the prior written back late, generation-checked (the
  write-back path of VLM-RB's verdicts);
- :class:`FinetuneBuffer` (D_f), :class:`FineTuning` (schedule, EDDF, RALW, adapter switch) and
  :class:`LoRAFineTuner` (peft LoRA, in its own process);
- :class:`COVRSACLoss`: SAC's loss plus ``loss_prior``.
"""
from torchrl_vlm.covr.adapter import AdapterError, verify_adapter
from torchrl_vlm.covr.buffer import PriorReplayBuffer
from torchrl_vlm.covr.equations import (
    eddf_mask,
    format_action,
    parse_action,
    progressive_schedule,
    ralw_token_nll,
    ralw_weights,
    returns_to_go,
)
from torchrl_vlm.covr.finetune import LoRAFineTuner
from torchrl_vlm.covr.finetune_buffer import FinetuneBuffer
from torchrl_vlm.covr.finetuning import FineTuning, select_samples
from torchrl_vlm.covr.loss import COVRSACLoss, prior_penalty
from torchrl_vlm.covr.prior import ANSWER_PREFIX, DEFAULT_PROMPT, ActionPrior

__all__ = [
    "ANSWER_PREFIX",
    "ActionPrior",
    "AdapterError",
    "COVRSACLoss",
    "DEFAULT_PROMPT",
    "FineTuning",
    "FinetuneBuffer",
    "LoRAFineTuner",
    "PriorReplayBuffer",
    "eddf_mask",
    "format_action",
    "parse_action",
    "progressive_schedule",
    "prior_penalty",
    "ralw_token_nll",
    "ralw_weights",
    "returns_to_go",
    "select_samples",
    "verify_adapter",
]
