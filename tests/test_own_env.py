"""VLM-RB on an env the project does not ship: the README's guide runs on CartPole from pixels, and each trap a
new user met on that path fails loudly and early (clip length, scorer forms, frames, cache identity, early
scorer failure)."""
import functools
import inspect
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from _scorers import FrameShapeScorer, RaisingScorer, event_in_clip, two_argument_scorer
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage
from torchrl.envs import Compose, GymEnv, RewardSum, StepCounter, ToTensorImage, TransformedEnv
from torchrl.envs.utils import RandomPolicy

from torchrl_vlm import MiniGridEventScorer, RenderClips, Scorer, ScoringServiceError, VLMReplayBuffer
from torchrl_vlm.scoring.cache import cached, read_verdicts, scorer_identity

ROOT = Path(__file__).resolve().parents[1]
# Tests given a running_service (tests/conftest.py) share its scoring process, on one worker.
SHARES_A_SERVICE = pytest.mark.xdist_group("running_services")


def guide_code() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return next(b for b in blocks if "class PoleTilt" in b)


@pytest.mark.slow  # the README guide on rendered cartpole: ~45 s (`make test-slow`)
def test_the_guide_runs_on_cartpole_and_priorities_sit_on_the_clips_the_scorer_said_yes_to(tmp_path):
    out = tmp_path / "replay.pt"
    check = textwrap.indent(textwrap.dedent(f"""
        data = rb[:]
        torch.save({{k: data[k] for k in ("clip_id", "vlm_priority", "vlm_score")}}
                   | {{"events": data["next", "events"]}}, {str(out)!r})
    """), "    ")
    script = tmp_path / "guide.py"
    script.write_text(guide_code() + check)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "SDL_VIDEODRIVER": "dummy"}
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    printed = run.stdout.strip().splitlines()[-1]
    assert "train/episode_return" in printed and "success" not in printed  # CartPole has no success entry
    data = torch.load(out, weights_only=True)
    scored = ~torch.isnan(data["vlm_score"])
    assert float(scored.float().mean()) > 0.9  # clips of 16 as the env cut them: nearly every step scored
    yes = no = 0
    for cid in data["clip_id"][scored].unique().tolist():
        rows = data["clip_id"] == cid
        tilted = bool(data["events"][rows].any())
        assert torch.all(data["vlm_priority"][rows] == float(tilted)), cid
        yes, no = yes + tilted, no + (not tilted)
    assert yes > 5 and no > 5  # random play tilts the pole in some clips, not in all


def _cartpole(transforms=()):
    return TransformedEnv(GymEnv("CartPole-v1", from_pixels=True, pixels_only=False),
                          Compose(*transforms, RenderClips(clip_len=8), StepCounter(), RewardSum()))


def _fill(rb, env, frames=256):
    collector = Collector(env, RandomPolicy(env.full_action_spec), frames_per_batch=64, total_frames=frames)
    for batch in collector:
        rb.extend(batch)
    collector.shutdown()
    rb.drain()
    return rb[:]


@SHARES_A_SERVICE
@pytest.mark.parametrize("transforms", [(), (ToTensorImage(in_keys=["pixels"], out_keys=["pixels"]),)],
                         ids=["uint8", "float_chw"])
def test_frames_reach_the_scorer_at_the_chosen_size(transforms, running_service):
    with VLMReplayBuffer(storage=LazyTensorStorage(1000), scorer=running_service(FrameShapeScorer),
                         frame_size=(64, 96), batch_size=16) as rb:
        data = _fill(rb, _cartpole(transforms))
    scored = ~torch.isnan(data["vlm_score"])
    assert scored.any() and torch.all(data["vlm_score"][scored] == 1.0)
    assert "pixels" not in data.keys()  # frames never enter replay


@pytest.mark.slow  # a scoring process per form: ~35 s (`make test-slow`)
def test_scorers_are_taken_in_the_forms_users_pass_and_refused_early_otherwise():
    for good in (MiniGridEventScorer, functools.partial(MiniGridEventScorer, "goal_only"), MiniGridEventScorer("any"),
                 event_in_clip):
        with VLMReplayBuffer(storage=LazyTensorStorage(10), scorer=good) as rb:
            assert rb.service.worker_pid is not None
    for bad, match in ((lambda clips: clips["mask"].any(-1).float(), r"<lambda> cannot be sent"),
                       (two_argument_scorer, "takes 2 arguments"), ("acme/vlm", "must be a scorer")):
        with pytest.raises(TypeError, match=match) as err:
            VLMReplayBuffer(storage=LazyTensorStorage(10), scorer=bad)
        assert "functools.partial(MyScorer" in str(err.value)  # the error shows the forms that work


def test_the_scorer_protocol_documents_the_clips_with_a_runnable_example():
    import doctest

    import torchrl_vlm.scoring.base as base

    for entry in ("mask", "frames", "events", "mission", "needs_frames", "functools.partial"):
        assert entry in Scorer.__doc__
    assert doctest.testmod(base, optionflags=doctest.ELLIPSIS).failed == 0


def test_a_plain_function_scorer_has_a_stable_cache_identity_and_a_rerun_hits(tmp_path):
    ident = scorer_identity(event_in_clip)
    assert ident == {"model": "_scorers.event_in_clip"} and "0x" not in str(ident)
    env = _cartpole([])
    env.set_seed(0)
    path = tmp_path / "verdicts.sqlite"
    for run in range(2):
        env.set_seed(0)
        torch.manual_seed(0)
        with VLMReplayBuffer(storage=LazyTensorStorage(1000), scorer=cached(event_in_clip, path, run=f"r{run}"),
                             events_key=("next", "terminated"), batch_size=16) as rb:
            _fill(rb, env, 128)
            stats = rb.stats()
    assert stats["cache_hit_rate"] == 1.0  # the identical rerun asked the scorer nothing
    assert {row["model"] for row in read_verdicts(path)} == {"_scorers.event_in_clip"}


def test_a_scorer_that_fails_from_the_start_stops_the_run_early_with_its_own_error():
    env = _cartpole([])
    with VLMReplayBuffer(storage=LazyTensorStorage(2000), scorer=RaisingScorer, batch_size=16, batch_clips=1,
                         max_consecutive_errors=10) as rb:
        with pytest.raises(ScoringServiceError, match="failed on each of its first 3 batches.*"):
            for _ in range(20):
                _fill(rb, env, 64)


@SHARES_A_SERVICE
def test_a_missing_frame_entry_is_refused_at_the_first_batch_for_a_scorer_that_needs_frames(running_service):
    env = _cartpole([])
    with VLMReplayBuffer(storage=LazyTensorStorage(1000), scorer=running_service(FrameShapeScorer),
                         frame_key="pixel") as rb:
        with pytest.raises(ValueError, match="no 'pixel' entry.*pixels"):
            _fill(rb, env, 64)


def test_the_public_classes_show_their_own_signatures_and_docstrings():
    assert "storage" in inspect.signature(VLMReplayBuffer).parameters
    assert "clip_len" in inspect.signature(RenderClips).parameters
    assert "Module" not in (RenderClips.__init__.__doc__ or "")


@SHARES_A_SERVICE
def test_a_prioritized_sampler_that_ignores_verdicts_is_warned_about(running_service):
    from torchrl.data import PrioritizedSampler

    with pytest.warns(UserWarning, match="never change what is sampled.*MixtureSampler"):
        VLMReplayBuffer(storage=LazyTensorStorage(100), scorer=running_service(MiniGridEventScorer),
                        sampler=PrioritizedSampler(100, 0.6, 0.4)).close()


def test_the_summary_names_the_logger_used_and_where_a_resumed_run_logged_before():
    from omegaconf import OmegaConf

    from torchrl_vlm.training import describe_logs

    cfg = OmegaConf.create({"logger": {"backend": "csv", "mode": None, "project": None},
                            "checkpoint": {"resume": "/runs/a/checkpoint"}})
    line = describe_logs(cfg, "/runs/b")
    assert "wandb" not in line and "csv" in line and "/runs/b/logs" in line and "/runs/a/logs" in line


def test_the_verdict_audit_fails_on_a_model_the_cache_does_not_hold(tmp_path):
    path = tmp_path / "verdicts.sqlite"
    env = _cartpole([])
    with VLMReplayBuffer(storage=LazyTensorStorage(500), scorer=cached(event_in_clip, path),
                         events_key=("next", "terminated")) as rb:
        _fill(rb, env, 64)
    run = subprocess.run([sys.executable, "-m", "torchrl_vlm.verdicts", str(path), "--model", "nosuchmodel"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "no verdicts of --model 'nosuchmodel'" in run.stderr
    assert "_scorers.event_in_clip" in run.stderr


def test_each_form_is_read_by_the_arguments_it_still_needs():
    from _scorers import FactoryObject, PropertyScorer, keyword_scorer

    from torchrl_vlm.scoring.base import _same, as_scorer_factory, factory_needs_frames

    assert as_scorer_factory(functools.partial(keyword_scorer, k=2.0)).func is _same  # still needs the clips
    assert as_scorer_factory(FactoryObject()).__class__ is FactoryObject  # needs nothing: a factory
    made = as_scorer_factory(MiniGridEventScorer("any"))
    assert as_scorer_factory(made) is made  # not wrapped (nor pickled) twice
    assert factory_needs_frames(PropertyScorer) is None  # a property cannot be read on the class
    assert factory_needs_frames(cached(MiniGridEventScorer, "unused.sqlite")) is False


def test_scorers_that_differ_get_different_cache_identities():
    from _scorers import keyword_scorer

    from torchrl_vlm import NoisyScorer

    class Holder:
        def __init__(self, k):
            self.k = k

        def score(self, clips):
            return clips["mask"].any(-1).float()

    pairs = [
        (functools.partial(keyword_scorer, k=2.0), functools.partial(keyword_scorer, k=3.0)),
        (Holder(1).score, Holder(2).score),
        (NoisyScorer(MiniGridEventScorer, 0.1, 0.1, seed=0), NoisyScorer(MiniGridEventScorer, 0.1, 0.1, seed=1)),
        (MiniGridEventScorer("any"), MiniGridEventScorer("goal_only")),
    ]
    for a, b in pairs:
        assert scorer_identity(a) != scorer_identity(b), (a, b)
        assert scorer_identity(a) == scorer_identity(a) and "0x" not in str(scorer_identity(a))
    assert scorer_identity(len) == {"model": "builtins.len"}


def test_a_memmap_storage_checkpointed_into_its_own_folder_falls_back_to_torchrl(tmp_path):
    from tensordict import TensorDict
    from torchrl.data import LazyMemmapStorage

    from torchrl_vlm.replay.buffer import CollectorReplayBuffer

    folder = tmp_path / "rb"
    rb = CollectorReplayBuffer(storage=LazyMemmapStorage(100, scratch_dir=folder / "storage"), batch_size=4)
    rb.extend(TensorDict({"observation": torch.randn(7, 3)}, [7]))
    rb.dumps(folder)
    again = CollectorReplayBuffer(storage=LazyMemmapStorage(100, scratch_dir=folder / "storage"), batch_size=4)
    again.loads(folder)
    assert len(again) == 7 and torch.equal(again[:]["observation"], rb[:]["observation"])
