"""COVR's prior, fine-tune and replay: a tiny real VLM, real processes, faults injected, resumes compared."""
import functools
import itertools
import logging
import os
import random
import signal
import time

import pytest
import torch
from _covr_parts import DamagingFineTuner, DyingFineTuner, FramePrior, GarbagePrior, OOMFineTuner
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage

from torchrl_vlm.covr import (
    ActionPrior,
    AdapterError,
    FinetuneBuffer,
    FineTuning,
    LoRAFineTuner,
    PriorReplayBuffer,
    verify_adapter,
)
from torchrl_vlm.covr.adapter import adapter_path
from torchrl_vlm.hf_vlm import to_pil_images, user_turn

torch.set_num_threads(1)

# Four frames of distinct colours, each with the action the agent took there.
FRAMES = torch.zeros(4, 32, 32, 3, dtype=torch.uint8)
for _i in range(4):
    FRAMES[_i, :, :, _i % 3] = 60 * (_i + 1)
ACTIONS = torch.tensor([[0.5, -0.5], [-0.25, 0.75], [0.9, 0.1], [-0.8, -0.3]])
FAST_TUNE = dict(lr=1e-2, epochs=1, batch_size=4, dropout=0.0)


def _request(version, base, reps=30):
    return TensorDict({"frames": FRAMES.repeat(reps, 1, 1, 1)[None], "action": ACTIONS.repeat(reps, 1)[None],
                       "weight": torch.ones(1, 4 * reps), "version": torch.tensor([version]),
                       "base_version": torch.tensor([base])}, [1])


def _ask(prior, version):
    return prior(TensorDict({"frames": FRAMES, "adapter": torch.full((4,), version)}, [4]))


def _distance(answers):
    """Mean |a_v − a| over the dimensions, an unparsed answer counting as 2 (the widest miss)."""
    return torch.where(torch.isnan(answers), torch.full_like(answers, 2.0), (answers - ACTIONS).abs()).mean().item()


def test_a_lora_finetune_brings_the_prior_to_the_actions_it_was_shown(tiny_vlm, tmp_path):
    prior = ActionPrior(tiny_vlm, action_dim=2, adapter_root=tmp_path, max_new_tokens=24)
    tuner = LoRAFineTuner(tiny_vlm, action_dim=2, adapter_root=tmp_path, **FAST_TUNE)
    before = _ask(prior, -1)
    result = tuner(_request(version=0, base=-1))
    loss_before, loss_after, seconds, samples, mass, steps = result[0].tolist()
    assert loss_after < 0.5 * loss_before and samples == 120 and mass == 120 and steps == 30
    manifest = verify_adapter(adapter_path(tmp_path, 0))
    assert manifest["version"] == 0 and manifest["base_version"] == -1
    after = _ask(prior, 0)
    assert prior.stats()["adapter_version"] == 0
    assert _distance(after) < 0.5 * _distance(before), (before, after)
    # The next fine-tune starts from the adapter it names: version 0 here, so it continues.
    assert tuner(_request(version=1, base=0))[0, 0] < loss_before


def test_the_answer_goes_on_from_the_prefilled_prefix(tiny_vlm):
    """The prompt ends with the prefix, so the model writes what follows it; the answer is the prefix and that."""
    prefilled = ActionPrior(tiny_vlm, action_dim=2, max_new_tokens=24)
    bare = ActionPrior(tiny_vlm, action_dim=2, max_new_tokens=24, answer_prefix="")
    inputs = {name: prior.vlm.prepare([[user_turn(1, "Go?")]], [to_pil_images(FRAMES[:1], None)], item="frame",
                                      answer_prefix=prior.answer_prefix)["input_ids"][0]
              for name, prior in (("prefilled", prefilled), ("bare", bare))}
    tokenizer = prefilled.tokenizer
    assert tokenizer.decode(inputs["prefilled"][inputs["bare"].numel():]) == "Action:"
    assert torch.equal(inputs["prefilled"][: inputs["bare"].numel()], inputs["bare"])
    answers = prefilled.answer(FRAMES, [None] * 4)
    assert all(a.startswith("Action:") for a in answers)
    assert not any(a.startswith("Action:") for a in bare.answer(FRAMES, [None] * 4))  # the random model's text


def test_a_finetune_is_a_function_of_its_request_whatever_the_process_drew_before(tiny_vlm, tmp_path):
    """LoRA dropout draws from torch's global generator: each fine-tune seeds it from (seed, version), so the same
    request gives the same adapter however much randomness the process used in between."""
    tuner = LoRAFineTuner(tiny_vlm, action_dim=2, adapter_root=tmp_path, **{**FAST_TUNE, "dropout": 0.3},
                          max_steps=6)
    files = []
    for draws in (0, 1000):
        torch.rand(draws)
        state = torch.random.get_rng_state()
        tuner(_request(version=0, base=-1, reps=6))
        assert torch.equal(torch.random.get_rng_state(), state)  # the caller's generator is left as it was
        files.append((adapter_path(tmp_path, 0) / "adapter_model.safetensors").read_bytes())
    assert files[0] == files[1]
    other = LoRAFineTuner(tiny_vlm, action_dim=2, adapter_root=tmp_path / "other", **{**FAST_TUNE, "dropout": 0.3},
                          max_steps=6, seed=1)
    other(_request(version=0, base=-1, reps=6))
    assert (adapter_path(tmp_path / "other", 0) / "adapter_model.safetensors").read_bytes() != files[0]


def test_a_damaged_adapter_is_refused_and_the_prior_keeps_its_own(tiny_vlm, tmp_path, caplog):
    prior = ActionPrior(tiny_vlm, action_dim=2, adapter_root=tmp_path, max_new_tokens=24)
    tuner = LoRAFineTuner(tiny_vlm, action_dim=2, adapter_root=tmp_path, **FAST_TUNE)
    tuner(_request(version=0, base=-1))
    good = _ask(prior, 0)
    tuner(_request(version=1, base=0, reps=2))
    path = adapter_path(tmp_path, 1) / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(AdapterError, match="checksum"):
        verify_adapter(adapter_path(tmp_path, 1))
    with caplog.at_level(logging.WARNING):
        answers = _ask(prior, 1)
    assert prior.stats()["adapter_load_failures"] == 1 and prior.stats()["adapter_version"] == 0
    assert torch.equal(torch.nan_to_num(answers, 9.0), torch.nan_to_num(good, 9.0))
    assert "keeps adapter 0" in caplog.text
    (adapter_path(tmp_path, 0) / "manifest.json").unlink()
    with pytest.raises(AdapterError, match="manifest"):
        verify_adapter(adapter_path(tmp_path, 0))


def test_bad_input_is_refused_with_the_argument_named(tiny_vlm, tmp_path):
    with pytest.raises(ValueError, match=r"\{action_dim\}"):
        ActionPrior(tiny_vlm, action_dim=2, prompt="Which way should the cart go?")
    with pytest.raises(ValueError, match="only the fields"):
        ActionPrior(tiny_vlm, action_dim=2, prompt="{action_dim} numbers for {robot}")
    with pytest.raises(ValueError, match="max_new_tokens=4"):
        ActionPrior(tiny_vlm, action_dim=2, max_new_tokens=4)
    with pytest.raises(OSError, match="no folder"):
        ActionPrior(str(tmp_path / "missing-vlm"), action_dim=2)
    with pytest.raises(TypeError, match="action_dim"):
        ActionPrior(tiny_vlm, action_dim=1.5)
    with pytest.raises(ValueError, match="rank"):
        LoRAFineTuner(tiny_vlm, action_dim=2, adapter_root=tmp_path, rank=0)
    with pytest.raises(ValueError, match="answer_prefix='Answer:'"):
        ActionPrior(tiny_vlm, action_dim=2, answer_prefix="Answer:")
    with pytest.raises(ValueError, match=r"answer_prefix='Action: \[0'"):  # "Action: [-0.5]" does not start so
        LoRAFineTuner(tiny_vlm, action_dim=2, adapter_root=tmp_path, answer_prefix="Action: [0")
    with pytest.raises(TypeError, match="answer_prefix"):
        ActionPrior(tiny_vlm, action_dim=2, answer_prefix=None)
    with pytest.raises(ValueError, match="filter"):
        FineTuning(FramePrior, adapter_root=tmp_path, buffer=FinetuneBuffer(10), filter="best")
    with pytest.raises(ValueError, match="min_keep_fraction"):
        FineTuning(FramePrior, adapter_root=tmp_path, buffer=FinetuneBuffer(10), min_keep_fraction=-0.1)
    with pytest.raises(ValueError, match="prior_lag"):
        PriorReplayBuffer(storage=LazyTensorStorage(10), prior=FramePrior, action_dim=1, prior_lag=-1)


# ------------------------------------------------------------------ the replay buffer
def _batches(n_batches, envs=2, steps=16, seed=0, episode=24):
    """Collector-like batches [envs, steps]: random frames, the frame's mean pixel as the observation (so a row's
    own prior can be recomputed), episodes of ``episode`` steps with a reward that rewards positive actions."""
    g = torch.Generator().manual_seed(seed)
    t = 0
    for _ in (itertools.count() if n_batches is None else range(n_batches)):
        frames = torch.randint(0, 256, (envs, steps, 16, 16, 3), generator=g, dtype=torch.uint8)
        action = torch.rand(envs, steps, 1, generator=g) * 2 - 1
        done = ((torch.arange(steps) + t + 1) % episode == 0).expand(envs, steps).unsqueeze(-1)
        t += steps
        yield TensorDict({
            "pixels": frames, "observation": frames.float().mean((2, 3, 4)).unsqueeze(-1), "action": action,
            ("next", "reward"): action.clamp_min(0), ("next", "done"): done, ("next", "terminated"): done.clone(),
            "mission": [["swing the pole up"] * steps] * envs,
        }, [envs, steps])


def _own_prior(rows):
    """What FramePrior answered for each row, from the observation its frame left."""
    return (rows["observation"] / 127.5 - 1.0).clamp(-1, 1)


def test_a_prior_never_lands_on_a_slot_that_was_overwritten():
    """A slow prior and a buffer that wraps twice per answer: the late answers must be dropped as stale."""
    with PriorReplayBuffer(storage=LazyTensorStorage(48), prior=functools.partial(FramePrior, 1, 0.05),
                           action_dim=1, batch_size=8, batch_clips=32) as rb:
        for batch in _batches(40):
            rb.extend(batch)
            rb.sample()
        rb.drain()
        stats = rb.stats()
        rows = rb[:]
    assert stats["stale_rejected"] > 0 and stats["prior_rows_written"] > 0
    valid = rows["vlm_action_valid"]
    assert valid.any()
    assert torch.allclose(rows["vlm_action"][valid], _own_prior(rows)[valid], atol=1e-5)
    assert (rows["vlm_action"][~valid] == 0).all()


def test_a_vlm_that_answers_garbage_leaves_no_prior_and_says_so(caplog):
    from torchrl_vlm.covr import buffer as covr_buffer

    with caplog.at_level(logging.WARNING, logger=covr_buffer.__name__):
        with PriorReplayBuffer(storage=LazyTensorStorage(4096), prior=GarbagePrior, action_dim=1, prior_lag=0) as rb:
            for batch in _batches(covr_buffer.GARBAGE_WARN_ROWS // 32 + 1):
                rb.extend(batch)
            stats = rb.stats()
    assert stats["prior_rows_answered"] >= covr_buffer.GARBAGE_WARN_ROWS and stats["prior_rows_valid"] == 0
    assert stats["prior_coverage"] == 0 and not rb[:]["vlm_action_valid"].any()
    assert "answers garbage" in caplog.text


@pytest.mark.slow  # a kill loop: ~20 s (`make test-slow`)
def test_prior_process_kills_at_random_moments_end_in_counted_restarts():
    rng = random.Random(0)
    kills = 5
    with PriorReplayBuffer(storage=LazyTensorStorage(4096), prior=functools.partial(FramePrior, 1, 0.01),
                           action_dim=1, batch_size=8, max_restarts=kills, start_timeout_s=120) as rb:
        batches = _batches(None)
        for kill in range(kills):
            until = time.monotonic() + rng.uniform(0.05, 1.0)
            while time.monotonic() < until:
                rb.extend(next(batches))
                rb.sample()
            os.kill(rb.service.worker_pid, signal.SIGKILL)
            while rb.stats()["worker_restarts"] < kill + 1:
                rb.extend(next(batches))
                time.sleep(0.01)
        rb.drain()
        stats = rb.stats()
        rows = rb[:]
    assert stats["worker_restarts"] == kills and stats["clips_lost"] > 0
    # Every row asked about was answered, dropped or lost (rows count as "clips" in the service's counters).
    assert stats["clips_scored"] + stats["clips_dropped"] + stats["clips_lost"] == stats["clips_submitted"]
    assert stats["prior_rows_answered"] == stats["clips_scored"]
    valid = rows["vlm_action_valid"]
    assert valid.any()
    assert torch.allclose(rows["vlm_action"][valid], _own_prior(rows)[valid], atol=1e-5)


def _finetuning(tuner_class, tiny_vlm, root, **kwargs):
    tuner = functools.partial(tuner_class, str(tiny_vlm), action_dim=1, adapter_root=str(root), max_steps=5,
                              **{**FAST_TUNE, "batch_size": 8})
    return FineTuning(tuner, adapter_root=root, buffer=FinetuneBuffer(1000), psi0=96, min_samples=2,
                      **{"start_timeout_s": 120, **kwargs})


@pytest.mark.parametrize("tuner_class, counter", [(OOMFineTuner, "covr_finetunes_failed"),
                                                  (DyingFineTuner, "covr_finetunes_failed"),
                                                  (DamagingFineTuner, "covr_adapters_rejected")])
@pytest.mark.slow  # three COVR runs whose fine-tunes fail: ~90 s (`make test-slow`)
def test_a_failed_finetune_is_counted_and_training_goes_on_with_the_adapter_it_had(tiny_vlm, tmp_path, tuner_class,
                                                                                    counter):
    with PriorReplayBuffer(storage=LazyTensorStorage(4096), prior=functools.partial(FramePrior, 1), action_dim=1,
                           finetuning=_finetuning(tuner_class, tiny_vlm, tmp_path, lag=2), prior_lag=1) as rb:
        for batch in _batches(16):  # 512 agent steps: fine-tunes due at 96 and 288
            rb.extend(batch)
            rb.sample(8)
        stats = rb.stats()
    assert stats[counter] >= 1 and stats["covr_finetunes"] == 0 and stats["covr_adapter_version"] == -1
    assert stats["prior_coverage"] > 0.5  # the prior went on answering


@pytest.mark.slow  # two COVR runs and a resume: ~60 s (`make test-slow`)
def test_covr_fine_tunes_on_schedule_and_resumes_bit_identically_under_prior_lag(tiny_vlm, tmp_path):
    """The tiny VLM as prior and fine-tuner, psi0=96: fine-tunes at 96 and 288 agent steps. A run checkpointed
    after 9 extends and resumed gives the same rows, priors, adapter and counters as the run that went on."""
    def make(root):
        prior = functools.partial(ActionPrior, str(tiny_vlm), action_dim=1, adapter_root=str(root), max_new_tokens=24)
        return PriorReplayBuffer(storage=LazyTensorStorage(4096), prior=prior, action_dim=1, prior_lag=2,
                                 finetuning=_finetuning(LoRAFineTuner, tiny_vlm, root, lag=3), frame_size=32,
                                 start_timeout_s=120)

    batches = list(_batches(14))
    with make(tmp_path / "a") as rb:
        for i, batch in enumerate(batches):
            rb.extend(batch)
            rb.policy_entropy = 0.1 * i
            if i == 8:
                rb.dumps(tmp_path / "ckpt")
        rb.drain()
        full, full_stats = rb[:], rb.stats()
    with make(tmp_path / "b") as rb:
        rb.loads(tmp_path / "ckpt")
        for i, batch in enumerate(batches[9:], start=9):
            rb.extend(batch)
            rb.policy_entropy = 0.1 * i
        rb.drain()
        resumed, resumed_stats = rb[:], rb.stats()
    assert full_stats["covr_finetunes"] == 2 and full_stats["covr_adapter_version"] == 1
    for key in ("covr_finetunes", "covr_adapter_version", "prior_rows_answered", "prior_rows_valid",
                "covr_last_loss_before", "covr_last_loss_after", "covr_last_kept"):
        assert resumed_stats[key] == full_stats[key], key
    assert (full == resumed).all()
    a, b = (adapter_path(tmp_path / r, 1) / "adapter_model.safetensors" for r in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()
