"""Frames on their way to the scorer: held once in the FrameStore, packed (only the rendered ones) into one
shared-memory block, unpacked in the scoring process into exactly the frames the env rendered."""
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import pytest  # noqa: E402
import torch  # noqa: E402
from _scorers import FrameMeanScorer  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from test_frame_stride import RecordingBuffer, fixed_actions, rollout  # noqa: E402
from torchrl.data import LazyTensorStorage  # noqa: E402

from torchrl_vlm import MixtureSampler, make_minigrid_env  # noqa: E402
from torchrl_vlm.frames import FRAME_RENDERED_KEY  # noqa: E402
from torchrl_vlm.replay.frame_store import FrameStore, packed_layout  # noqa: E402
from torchrl_vlm.scoring.base import PACKED_FRAMES_KEY, clip_frame_mask, unpack_frames  # noqa: E402


def frame(value: int) -> torch.Tensor:
    return torch.full((2, 2, 3), value, dtype=torch.uint8)


class TestFrameStore:
    def test_gather_across_chunks_leaves_no_reference_untouched(self):
        store = FrameStore()
        a = store.add(torch.stack([frame(1), frame(2)]))
        b = store.add(torch.stack([frame(3)]))
        assert a.tolist() == [1, 2] and b.tolist() == [3] and len(store) == 3
        out = torch.full((2, 2, 2, 2, 3), 99, dtype=torch.uint8)
        store.gather(torch.tensor([[3, 1], [0, 2]]), out)
        assert out[..., 0, 0, 0].tolist() == [[3, 1], [99, 2]]  # 0: no frame, left as it was

    def test_release_keeps_what_live_references_need_and_refuses_the_rest(self):
        store = FrameStore()
        store.add(torch.stack([frame(1), frame(2)]))
        store.add(torch.stack([frame(3), frame(4)]))
        store.release(torch.tensor([0, 4, 3]))
        assert len(store) == 2  # the first chunk is gone, the second holds 3 and 4
        with pytest.raises(KeyError, match="released"):
            store.gather(torch.tensor([1]), torch.zeros(1, 2, 2, 3, dtype=torch.uint8))
        with pytest.raises(KeyError, match="never added"):
            store.gather(torch.tensor([5]), torch.zeros(1, 2, 2, 3, dtype=torch.uint8))
        store.release(torch.zeros(0, dtype=torch.int64))
        assert len(store) == 0
        store.add(torch.stack([frame(9)]))
        store.release(None)  # no unfinished clip carries a reference
        assert len(store) == 0
        assert store.add(torch.stack([frame(5)])).tolist() == [6]  # references never repeat

    def test_state_round_trip(self):
        store = FrameStore()
        store.add(torch.stack([frame(1), frame(2)]))
        other = FrameStore()
        other.load_state_dict(store.state_dict())
        out = torch.zeros(2, 2, 2, 3, dtype=torch.uint8)
        other.gather(torch.tensor([2, 1]), out)
        assert out[:, 0, 0, 0].tolist() == [2, 1]
        assert other.add(torch.stack([frame(3)])).tolist() == [3]


@pytest.mark.parametrize("seed", range(5))
def test_pack_then_unpack_puts_every_frame_back_at_its_step(seed):
    g = torch.Generator().manual_seed(seed)
    n_clips, length = 6, 8
    has = torch.rand(n_clips, length, generator=g) < 0.4
    has[:, 0] = True
    frames = torch.randint(1, 255, (n_clips, length, 2, 2, 3), generator=g, dtype=torch.uint8)
    frames *= has[..., None, None, None]
    store = FrameStore()
    refs = torch.zeros(n_clips, length, dtype=torch.int64)
    refs[has] = store.add(frames[has].clone())
    frame_steps, packed_refs = packed_layout(refs)
    assert frame_steps.shape[1] == int(has.sum(1).max())
    packed = torch.zeros(*packed_refs.shape, 2, 2, 3, dtype=torch.uint8)
    store.gather(packed_refs, packed)
    clips = TensorDict({"mask": torch.ones(n_clips, length, dtype=torch.bool), PACKED_FRAMES_KEY: packed,
                        "frame_steps": frame_steps}, [n_clips])
    assert torch.equal(unpack_frames(clips)["frames"], frames)


def test_unpacking_every_step_frames_copies_nothing():
    packed = torch.arange(2 * 3, dtype=torch.uint8).reshape(2, 3, 1, 1, 1).expand(2, 3, 1, 1, 3).contiguous()
    steps = torch.tensor([[0, 1, 2], [0, 1, -1]])  # the second clip ended a step early
    clips = TensorDict({"mask": steps >= 0, PACKED_FRAMES_KEY: packed, "frame_steps": steps}, [2])
    assert unpack_frames(clips)["frames"].data_ptr() == packed.data_ptr()


def expected_clips(batch: TensorDict) -> dict[int, torch.Tensor]:
    """Per clip id, the frames a scorer must see, read from the collector's rows: each step's own frame, a
    clip's last the state its action reached, zeros on steps an env with a schedule did not render."""
    out: dict[int, list] = {}
    for e in range(batch.shape[0]):
        for t in range(batch.shape[1]):
            row = batch[e, t]
            last = bool(row["next", "done"]) or int(row["next", "clip_id"]) != int(row["clip_id"])
            key = ("next", "pixels") if last else "pixels"
            rendered = True
            if FRAME_RENDERED_KEY in row.keys():
                rendered = bool(row[("next", FRAME_RENDERED_KEY) if last else FRAME_RENDERED_KEY])
            out.setdefault(int(row["clip_id"]), []).append(row[key] if rendered else torch.zeros_like(row[key]))
    return {cid: torch.stack(frames) for cid, frames in out.items()}


@pytest.mark.parametrize("stride, steps_per_extend", [(4, 3), (4, 5), (1, 3), (1, 7)])
def test_the_scorer_gets_exactly_the_rendered_frames_across_extends(stride, steps_per_extend):
    # DoorKey-5x5, max_steps=20, clip_len 8: episodes end inside clips, and clips span several extends.
    env = make_minigrid_env("MiniGrid-DoorKey-5x5-v0", num_envs=3, clip_len=8, seed=2, max_steps=20,
                            frame_stride=stride)
    batch = rollout(env, fixed_actions(3, 60, seed=4))
    want = expected_clips(batch)
    with RecordingBuffer(storage=LazyTensorStorage(1000), scorer=FrameMeanScorer, sampler=MixtureSampler(warmup=1),
                         batch_size=8) as rb:
        rb.sent = []
        held = []
        for t0 in range(0, batch.shape[1], steps_per_extend):
            rb.extend(batch[:, t0:t0 + steps_per_extend])
            held.append(len(rb._frames))
        carried = rb.assembler.carried("frame_ref")
        # Nothing but the frames of unfinished clips stays held.
        assert len(rb._frames) <= (0 if carried is None else int((carried > 0).sum())) + 3 * steps_per_extend * 2
        rb.drain()
        assert rb.stats()["clips_scored"] == sum(c.batch_size[0] for c in rb.sent)
    got = {}
    for sent in rb.sent:
        assert sent.is_consolidated() and sent[PACKED_FRAMES_KEY].untyped_storage().is_shared()
        clips = unpack_frames(sent)
        shown = clip_frame_mask(clips)
        for b, cid in enumerate(clips["clip_id"].tolist()):
            n = int(clips["mask"][b].sum())
            got[cid] = clips["frames"][b, :n]
            assert int(shown[b].sum()) == int(want[cid].flatten(1).any(-1).sum())
    assert got and all(torch.equal(got[cid], want[cid]) for cid in got)
    assert max(held) <= 3 * 8 * 2  # at most about two clips an env, never the whole run


def _to_old_format(state: dict) -> dict:
    """A write-back state as buffers saved it before the frame store: every carried step holds its frame."""
    state = dict(state)
    frames = state.pop("frames")
    store = FrameStore()
    store.load_state_dict(frames)
    carry = dict(state["assembler"]["carry"])
    refs = carry.pop("frame_ref")
    step_frames = torch.zeros(refs.shape[0], *store.frame_shape, dtype=torch.uint8)
    store.gather(refs, step_frames)
    carry["frames"] = step_frames
    state["assembler"] = {**state["assembler"], "carry": carry}
    return state


@pytest.mark.parametrize("old_format", [False, True])
def test_a_buffer_saved_mid_clip_ships_the_same_frames_after_loading(old_format, tmp_path):
    env = make_minigrid_env("MiniGrid-DoorKey-5x5-v0", num_envs=2, clip_len=8, seed=1, max_steps=20, frame_stride=4)
    batch = rollout(env, fixed_actions(2, 40, seed=3))
    first, rest = batch[:, :13], batch[:, 13:]  # 13 steps: clips open in both envs

    def shipped(rb) -> dict:
        return {int(c): f for s in rb.sent for c, f in zip(s["clip_id"], unpack_frames(s)["frames"], strict=True)}

    def run(split: bool):
        kwargs = dict(storage=LazyTensorStorage(1000), scorer=FrameMeanScorer, sampler=MixtureSampler(warmup=1),
                      batch_size=8)
        with RecordingBuffer(**kwargs) as rb:
            rb.sent = []
            rb.extend(first)
            if not split:
                rb.extend(rest)
                return shipped(rb)
            assert rb.assembler.carried("frame_ref") is not None
            rb.dumps(tmp_path / "rb")
        if old_format:
            state = torch.load(tmp_path / "rb" / "vlm_state.pt", weights_only=True)
            torch.save(_to_old_format(state), tmp_path / "rb" / "vlm_state.pt")
        with RecordingBuffer(**kwargs) as rb:
            rb.sent = []
            rb.loads(tmp_path / "rb")
            rb.extend(rest)
            return shipped(rb)

    whole, resumed = run(split=False), run(split=True)
    assert resumed and set(resumed) <= set(whole)
    assert all(torch.equal(resumed[c], whole[c]) for c in resumed)
