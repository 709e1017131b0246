"""VLMTeacher (LVLM2P's teacher) on a tiny, random, architecturally real Idefics3 model built offline."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: tests never reach a hub

import functools
import pickle

import pytest
import torch
from tensordict import NonTensorStack, TensorDict

from torchrl_vlm.envs import MINIGRID_ACTIONS
from torchrl_vlm.envs.minigrid import encode_mission, make_minigrid_env
from torchrl_vlm.teacher.vlm import DEFAULT_TEACHER_PROMPT, VLMTeacher

MISSIONS = ["go to the red door", "go to the grey door", "get to the green goal square", "pick up the blue key"]


@pytest.fixture(scope="session")
def teacher(tiny_vlm):
    return VLMTeacher(tiny_vlm, batch_size=4)


def make_states(batch, *, size=24, seed=0, missions=None):
    """Random uint8 frames ``[*batch, size, size, 3]`` with byte-encoded missions ``[*batch, 96]``."""
    g = torch.Generator().manual_seed(seed)
    batch = tuple(batch)
    n = int(torch.tensor(batch).prod()) if batch else 1
    pixels = torch.randint(0, 256, (*batch, size, size, 3), generator=g, dtype=torch.uint8)
    missions = missions or [MISSIONS[i % len(MISSIONS)] for i in range(n)]
    mission = torch.stack([torch.from_numpy(encode_mission(m)) for m in missions]).reshape(*batch, -1)
    return TensorDict({"pixels": pixels, "mission": mission}, batch_size=batch)


def assert_distributions(probs, shape):
    assert probs.dtype == torch.float32 and probs.shape == shape
    assert bool(torch.isfinite(probs).all()) and bool((probs >= 0).all())
    torch.testing.assert_close(probs.sum(-1), torch.ones(shape[:-1]), atol=1e-5, rtol=0)


def entropy(p):
    return -(p * p.clamp_min(1e-30).log()).sum(-1)


def test_probs_are_distributions_and_deterministic(teacher):
    assert teacher.action_names == MINIGRID_ACTIONS and teacher.n_actions == 7
    states = make_states([5])
    p1, p2 = teacher(states), teacher(states)
    assert_distributions(p1, (5, 7))
    assert torch.equal(p1, p2)
    # Random weights still see the frames: different states, different answers.
    assert not torch.allclose(p1[0], p1[1])
    # Any batch shape: [2, 3] states give [2, 3, 7], the same rows as flat.
    grid = make_states([2, 3], seed=3)
    probs = teacher(grid)
    assert_distributions(probs, (2, 3, 7))
    torch.testing.assert_close(probs.reshape(6, 7), teacher(grid.reshape(6)), atol=1e-5, rtol=0)
    # An empty batch is no error: no rows.
    assert teacher(make_states([3])[:0]).shape == (0, 7)


def test_batched_equals_one_at_a_time(teacher):
    # Missions of different lengths need left padding; 6 states with batch_size=4 also chunk.
    states = make_states([6], seed=1)
    inputs = teacher.prepare(states[:4])
    assert not bool(inputs["attention_mask"][:, 0].all()), "the batch should need padding"
    assert bool(inputs["attention_mask"][:, -1].all()), "padding must be on the left"
    batched = teacher(states)
    single = torch.cat([teacher(states[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


def test_readout_matches_full_logits_softmax(teacher):
    """Label probabilities read with logits_to_keep=1 equal the renormalised full softmax at the label tokens."""
    states = make_states([3], seed=2)
    inputs = teacher.prepare(states)
    with torch.inference_mode():
        probs = teacher.model(**inputs).logits[:, -1].float().softmax(-1)
    mass = torch.stack([probs[:, list(ids)].sum(-1) for ids in teacher.label_token_ids], -1)
    torch.testing.assert_close(teacher(states), mass / mass.sum(-1, keepdim=True), atol=1e-5, rtol=0)


def test_labels_resolve_to_single_tokens(tiny_vlm, teacher):
    tok = teacher.tokenizer
    assert teacher.labels == tuple("ABCDEFG")
    seen = set()
    for label, ids, variants in zip(teacher.labels, teacher.label_token_ids, teacher.label_variants, strict=True):
        assert label in variants and len(ids) == len(variants) >= 1
        for variant, i in zip(variants, ids, strict=True):
            assert tok.encode(variant, add_special_tokens=False) == [i]
        assert not seen & set(ids)
        seen |= set(ids)
    assert "A. turn left\nB. turn right\nC. move forward" in teacher.action_list()
    # Digits are single tokens too; a multi-token label is an error naming the model.
    digits = VLMTeacher(tiny_vlm, labels=[str(i) for i in range(1, 8)])
    assert_distributions(digits(make_states([2])), (2, 7))
    with pytest.raises(ValueError, match="tiny-idefics3"):
        VLMTeacher(tiny_vlm, labels=["A", "B", "C", "D", "E", "F", "Gxqzv"])


def test_temperature_sharpens(tiny_vlm, teacher):
    states = make_states([4], seed=4)
    base = teacher(states)
    cold = VLMTeacher(tiny_vlm, temperature=0.25)(states)
    hot = VLMTeacher(tiny_vlm, temperature=4.0)(states)
    assert_distributions(cold, (4, 7))
    assert bool((entropy(cold) < entropy(base)).all()) and bool((entropy(base) < entropy(hot)).all())
    assert torch.equal(cold.argmax(-1), base.argmax(-1))
    # Temperature divides the label logits: softmax(logits / T).
    torch.testing.assert_close(cold, torch.softmax(teacher.label_logits(states) / 0.25, -1), atol=1e-5, rtol=0)


def test_mission_changes_prompt_and_probs(tiny_vlm, teacher):
    pixels = make_states([1], seed=5)["pixels"].expand(2, -1, -1, -1, -1).reshape(2, 24, 24, 3)
    states = make_states([2], missions=["go to the red door", "go to the blue door"])
    states["pixels"] = pixels  # same frame, two missions
    text = teacher.tokenizer.decode(teacher.prepare(states)["input_ids"][1])
    assert "Mission: go to the blue door" in text and "A. turn left" in text
    assert text.count(teacher.image_token) == text.count("<image>") and "<image>" in text
    probs = teacher(states)
    assert not torch.allclose(probs[0], probs[1])
    # A non-tensor mission entry (one string per state) reads the same as the bytes.
    missions = NonTensorStack("go to the red door", "go to the blue door")
    as_strings = TensorDict({"pixels": pixels, "mission": missions}, [2])
    torch.testing.assert_close(teacher(as_strings), probs, atol=1e-6, rtol=0)
    # A prompt without {mission} needs no mission.
    blind = VLMTeacher(tiny_vlm, prompt="Actions:\n{actions}\nAnswer with a letter.")
    assert_distributions(blind(TensorDict({"pixels": pixels}, [2])), (2, 7))
    assert "{mission}" in DEFAULT_TEACHER_PROMPT
    with pytest.raises(ValueError, match="mission"):
        teacher(TensorDict({"pixels": pixels}, [2]))


def test_two_stage(tiny_vlm):
    two = VLMTeacher(tiny_vlm, two_stage=True, max_new_tokens=8, batch_size=2)
    states = make_states([3], seed=6)
    probs = two(states)
    assert_distributions(probs, (3, 7))
    assert torch.equal(two(states), probs)  # greedy decoding: deterministic
    analyses = two.last_analyses
    assert len(analyses) == 3 and all(isinstance(a, str) for a in analyses)
    assert two.scene_analyses(states) == analyses
    # Left-padded batched generation gives each state the analysis and answer it gets alone.
    single = [two(states[i : i + 1]) for i in range(3)]
    torch.testing.assert_close(torch.cat(single), probs, atol=1e-5, rtol=0)
    # The second stage: analysis question, the analysis as the assistant's turn, the action question.
    msgs = two.messages("go to the red door", analyses[0])
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    inputs = two.prepare(states[:1], analyses[:1])
    text = two.tokenizer.decode(inputs["input_ids"][0])
    assert "Describe the scene" in text and "Which action" in text
    # It asks a different question than one-stage prompting, so it answers differently.
    assert not torch.allclose(probs, VLMTeacher(tiny_vlm)(states))


def test_real_env_frame(teacher):
    env = make_minigrid_env("MiniGrid-GoToDoor-6x6-v0", render=True, seed=0)
    td = env.reset()
    assert td["pixels"].dtype == torch.uint8 and td["mission"].dtype == torch.uint8
    probs = teacher(td)
    assert_distributions(probs, (7,))
    assert "go to the" in teacher.tokenizer.decode(teacher.prepare(td)["input_ids"][0])
    rollout = env.rollout(3, break_when_any_done=False)
    probs = teacher(rollout)
    assert_distributions(probs, (3, 7))
    torch.testing.assert_close(teacher(rollout[1]), probs[1], atol=1e-5, rtol=0)  # one unbatched step


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (lambda s: dict(s.items()), TypeError, "TensorDict"),
        (lambda s: s.exclude("pixels"), ValueError, "pixels"),
        (lambda s: s.set("pixels", s["pixels"].float()), TypeError, "pixels"),
        (lambda s: s.set("pixels", s["pixels"][..., :2]), ValueError, "pixels"),
        (lambda s: s.exclude("mission"), ValueError, "mission"),
        (lambda s: s.set("mission", s["mission"].int()), TypeError, "mission"),
        (lambda s: TensorDict({"pixels": s["pixels"], "mission": s["mission"][:1]}, []), ValueError, "mission"),
    ],
    ids=["dict", "no-pixels", "float-pixels", "2-channels", "no-mission", "int-mission", "mission-batch"],
)
def test_bad_inputs_raise(teacher, bad, error, match):
    with pytest.raises(error, match=match):
        teacher(bad(make_states([2])))


def test_bad_arguments_raise(tiny_vlm):
    for kwargs, error, match in [
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(temperature=float("nan")), ValueError, "temperature"),
        (dict(temperature="hot"), TypeError, "temperature"),
        (dict(action_names="turn left"), TypeError, "action_names"),
        (dict(action_names=["go"]), ValueError, "action_names"),
        (dict(labels=["A", "B"]), ValueError, "labels"),
        (dict(labels=list("AABCDEF")), ValueError, "labels"),
        (dict(prompt="What now?"), ValueError, "prompt"),
        (dict(prompt="{actions} {goal}"), ValueError, "prompt"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(max_new_tokens=0), ValueError, "max_new_tokens"),
        (dict(dtype="int8"), ValueError, "dtype"),
    ]:
        with pytest.raises(error, match=match):
            VLMTeacher(tiny_vlm, **kwargs)
    with pytest.raises(OSError, match="no-such-org/no-such-vlm"):
        VLMTeacher("no-such-org/no-such-vlm")


def test_factory_pickles_and_builds(tiny_vlm, teacher):
    factory = pickle.loads(pickle.dumps(functools.partial(VLMTeacher, str(tiny_vlm), batch_size=2)))
    t = factory()
    assert t.batch_size == 2
    states = make_states([3], seed=7)
    torch.testing.assert_close(t(states), teacher(states), atol=1e-5, rtol=0)
