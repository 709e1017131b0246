"""TransformersScorer on a tiny, random, architecturally real Idefics3 model built offline."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: tests never reach a hub

import functools
import pickle
import socket

import pytest
import torch
from tensordict import NonTensorStack, TensorDict

from torchrl_vlm.scoring.base import Scorer, frame_indices
from torchrl_vlm.scoring.transformers import DEFAULT_PROMPT, TransformersScorer
from torchrl_vlm.testing import TINY_VLM_MARKER, make_tiny_vlm


@pytest.fixture(scope="session")
def scorer(tiny_vlm):
    return TransformersScorer(tiny_vlm, num_frames=4, batch_size=4)


def make_clips(lengths, *, L=10, size=24, seed=0, missions=None):
    """Random uint8 clips padded to L, with ``lengths[i]`` real steps each."""
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    frames = torch.randint(0, 256, (B, L, size, size, 3), generator=g, dtype=torch.uint8)
    mask = torch.arange(L).expand(B, L) < torch.tensor(lengths).unsqueeze(-1)
    frames[~mask] = 0  # padding frames carry no information
    td = TensorDict({"frames": frames, "mask": mask}, batch_size=[B])
    if missions is not None:
        td["mission"] = NonTensorStack(*missions)
    return td


def test_scores_are_probabilities_and_deterministic(scorer):
    clips = make_clips([10, 7, 3, 1, 10])
    p1, p2 = scorer(clips), scorer(clips)
    assert isinstance(scorer, Scorer) and scorer.needs_frames
    assert p1.dtype == torch.float32 and p1.shape == (5,)
    assert bool(((p1 >= 0) & (p1 <= 1)).all())
    assert torch.equal(p1, p2)
    # Random weights still see the frames: different clips, different answers.
    assert p1.unique().numel() > 1


def test_batched_equals_one_clip_at_a_time(tiny_vlm, scorer):
    # Different real lengths give different frame counts, hence left padding;
    # 6 clips with batch_size=4 also exercises chunking.
    clips = make_clips([10, 2, 7, 1, 5, 10], seed=1)
    inputs = scorer.prepare(clips[:4])
    assert not bool(inputs["attention_mask"][:, 0].all()), "the batch should need padding"
    assert bool(inputs["attention_mask"][:, -1].all()), "padding must be on the left"
    batched = scorer(clips)
    single = torch.cat([scorer(clips[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    # A clip's padded steps never matter: garbage there changes nothing.
    noisy = clips.clone()
    noisy["frames"][~noisy["mask"]] = 255
    torch.testing.assert_close(scorer(noisy), batched, atol=1e-5, rtol=0)


def test_readout_matches_full_logits_softmax(scorer):
    """P(yes) read with logits_to_keep=1 equals the softmax ratio over the full last-position logits."""
    clips = make_clips([10, 3], seed=2)
    inputs = scorer.prepare(clips)
    with torch.inference_mode():
        logits = scorer.model(**inputs).logits[:, -1].float()
    probs = logits.softmax(-1)
    yes = probs[:, scorer.yes_token_ids].sum(-1)
    no = probs[:, scorer.no_token_ids].sum(-1)
    torch.testing.assert_close(scorer(clips), yes / (yes + no), atol=1e-5, rtol=0)


def test_mission_injection_changes_prompt_and_scores(tiny_vlm, scorer):
    goal = TransformersScorer(tiny_vlm, num_frames=4, mission_in_prompt=True)
    mission = "use the key to open the door and then get to the goal"
    assert scorer.build_prompt(mission) == DEFAULT_PROMPT
    assert goal.build_prompt(mission) == f"The agent's mission: {mission}. {DEFAULT_PROMPT}"
    msgs = goal.messages(3, mission)
    assert [part["type"] for part in msgs[0]["content"]] == ["image", "image", "image", "text"]

    clips = make_clips([10, 4], missions=[mission, "get to the goal"])
    ids_plain = scorer.prepare(clips)["input_ids"]
    ids_goal = goal.prepare(clips)["input_ids"]
    assert ids_goal.shape[1] > ids_plain.shape[1]
    assert mission in goal.processor.tokenizer.decode(ids_goal[0])
    assert "mission" not in scorer.processor.tokenizer.decode(ids_plain[0])
    assert not torch.allclose(goal(clips), scorer(clips))

    with pytest.raises(ValueError, match="mission"):
        goal(make_clips([3]))


def test_yes_no_resolve_to_single_tokens(tiny_vlm, scorer):
    tok = scorer.processor.tokenizer
    for word in ("Yes", " Yes", "yes", "No", " No", "no"):
        assert len(tok.encode(word, add_special_tokens=False)) == 1, word
    assert len(scorer.yes_token_ids) >= 3 and len(scorer.no_token_ids) >= 3
    assert not set(scorer.yes_token_ids.tolist()) & set(scorer.no_token_ids.tolist())
    # Multi-token spellings are dropped, and nothing left is an error naming the model.
    s = TransformersScorer(tiny_vlm, yes_tokens=("Yes", "Yes indeed, certainly"))
    assert s.yes_tokens == ("Yes",)
    with pytest.raises(ValueError, match="tiny-idefics3"):
        TransformersScorer(tiny_vlm, no_tokens=("Nope, not at all",))


def test_wrong_model_id_raises_clear_error_without_reaching_the_network(monkeypatch):
    # "Fast" as behaviour, not a wall-clock bound: offline, the hub lookup fails without opening a socket.
    connects = []
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: connects.append(address))
    with pytest.raises(OSError, match="no-such-org/no-such-vlm") as info:
        TransformersScorer("no-such-org/no-such-vlm")
    assert connects == []
    assert "local folder" in str(info.value) and "events" in str(info.value)
    with pytest.raises(OSError, match="no folder"):
        TransformersScorer("/nonexistent/folder/for/a/vlm")


@pytest.mark.parametrize(
    "bad, error",
    [
        (lambda c: c.set("frames", c["frames"].float()), TypeError),  # wrong dtype
        (lambda c: c.set("frames", c["frames"][..., 0]), ValueError),  # wrong rank
        (lambda c: c[:0], ValueError),  # empty batch
        (lambda c: {"frames": c["frames"], "mask": c["mask"]}, TypeError),  # not a TensorDict
        (lambda c: c.set("mask", torch.zeros_like(c["mask"])), ValueError),  # no real step
    ],
    ids=["float-frames", "rank-4-frames", "empty", "dict", "all-masked"],
)
def test_bad_clips_raise(scorer, bad, error):
    with pytest.raises(error):
        scorer(bad(make_clips([4, 2])))


def test_bad_arguments_raise(tiny_vlm):
    with pytest.raises(ValueError, match="num_frames"):
        TransformersScorer(tiny_vlm, num_frames=0)
    with pytest.raises(ValueError, match="batch_size"):
        TransformersScorer(tiny_vlm, batch_size=-1)
    with pytest.raises(ValueError, match="image_size"):
        TransformersScorer(tiny_vlm, image_size=(32,))
    with pytest.raises(ValueError, match="dtype"):
        TransformersScorer(tiny_vlm, dtype="int8")


def test_family_defaults_and_context_guard(tiny_vlm):
    s = TransformersScorer(tiny_vlm, num_frames=2)
    # Idefics3 would tile every frame into up to 17 views; the scorer asks for one.
    assert s.model_type == "idefics3" and s.processor_kwargs == {"do_image_splitting": False}
    assert TransformersScorer(tiny_vlm, processor_kwargs={"do_image_splitting": True}).processor_kwargs == {
        "do_image_splitting": True
    }
    assert s.max_length == 4096
    s.max_length = 10  # a prompt past the context must fail loudly, not score garbage
    with pytest.raises(ValueError, match="context"):
        s(make_clips([4]))


def test_frame_indices_spread_over_real_steps():
    mask = torch.ones(32, dtype=torch.bool)
    assert frame_indices(mask, 8).tolist() == [0, 4, 9, 13, 18, 22, 27, 31]
    short = torch.arange(32) < 5
    assert frame_indices(short, 8).tolist() == [0, 1, 2, 3, 4]  # fewer frames than asked
    assert frame_indices(short, 1).tolist() == [4]  # one frame: the last real step
    holes = torch.tensor([True, False, True, True, False, True])
    assert frame_indices(holes, 3).tolist() == [0, 3, 5]


def test_image_size_resizes_frames(tiny_vlm):
    s = TransformersScorer(tiny_vlm, num_frames=2, image_size=(16, 40))
    images = s._images(make_clips([4])["frames"][0], torch.ones(10, dtype=torch.bool))
    assert [im.size for im in images] == [(40, 16), (40, 16)]
    assert s(make_clips([4, 3])).shape == (2,)


def test_factory_pickles_and_builds(tiny_vlm):
    factory = pickle.loads(pickle.dumps(functools.partial(TransformersScorer, str(tiny_vlm), num_frames=2)))
    s = factory()
    assert s.num_frames == 2 and s(make_clips([3])).shape == (1,)


def test_make_tiny_vlm_is_idempotent_and_seeded(tiny_vlm, tmp_path):
    def files():
        return {p: p.stat().st_mtime_ns for p in tiny_vlm.rglob("*")}

    before = files()
    assert make_tiny_vlm(tiny_vlm, seed=0) == tiny_vlm
    assert files() == before  # already complete: returned as is, nothing rebuilt
    assert (tiny_vlm / TINY_VLM_MARKER).is_file()
    with pytest.raises(ValueError, match="seed"):
        make_tiny_vlm(tiny_vlm, seed=1)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a model")
    with pytest.raises(ValueError, match="refusing"):
        make_tiny_vlm(foreign)

    # Same seed, same weights; and the build leaves no temporary folder behind.
    twin = make_tiny_vlm(tmp_path / "twin", seed=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "twin"]
    from safetensors.torch import load_file

    a, b = load_file(tiny_vlm / "model.safetensors"), load_file(twin / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
