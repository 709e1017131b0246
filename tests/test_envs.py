"""MiniGrid envs and RenderClips: specs, frames, events, and clip tags under partial resets."""
import copy
import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch
from minigrid.core.world_object import Key
from torchrl.collectors import Collector
from torchrl.envs import GymEnv, SerialEnv, TransformedEnv
from torchrl.envs.utils import check_env_specs

from torchrl_vlm import EVENT_NAMES, RenderClips, decode_mission, make_minigrid_env
from torchrl_vlm.envs.minigrid import MiniGridObservation, _single_env, render_full_grid

FORWARD, PICKUP, TOGGLE = 2, 3, 5


@pytest.mark.parametrize("num_envs", [1, 3])
def test_specs_and_entries(num_envs):
    env = make_minigrid_env("MiniGrid-DoorKey-8x8-v0", num_envs=num_envs, seed=0)
    check_env_specs(env)
    td = env.rollout(5, break_when_any_done=False)
    batch = (num_envs, 5) if num_envs > 1 else (5,)
    assert td["observation"].shape == (*batch, 7 * 7 * 3 + 4)
    assert td["observation"].dtype == torch.float32
    assert 0 <= float(td["observation"].min()) and float(td["observation"].max()) <= 1
    # The full 8x8 grid at 8 px per tile: the VLM sees the whole scene.
    assert td["pixels"].shape == (*batch, 64, 64, 3) and td["pixels"].dtype == torch.uint8
    assert td["events"].shape == (*batch, len(EVENT_NAMES)) and td["events"].dtype == torch.bool
    assert td["clip_id"].dtype == torch.int64
    assert "episode_reward" in td["next"].keys() and "step_count" in td["next"].keys()
    missions = decode_mission(td["mission"])
    first = missions[0] if num_envs == 1 else missions[0][0]
    assert first == "use the key to open the door and then get to the goal"


def test_doorkey_12x12_is_registered_and_unknown_envs_are_refused():
    env = make_minigrid_env("MiniGrid-DoorKey-12x12-v0", tile_size=4, seed=0)
    assert env.reset()["pixels"].shape == (48, 48, 3)
    with pytest.raises(ValueError, match="MiniGrid-DoorKey-8x8-v0"):
        make_minigrid_env("MiniGrid-DoorKey-9x9-v0")
    with pytest.raises(ValueError, match="num_envs"):
        make_minigrid_env(num_envs=0)


@pytest.mark.parametrize(
    "env_name", ["MiniGrid-DoorKey-8x8-v0", "MiniGrid-LavaGapS7-v0", "MiniGrid-Dynamic-Obstacles-6x6-v0",
                 "MiniGrid-Fetch-6x6-N2-v0"]
)
def test_fast_renderer_matches_minigrid_pixel_for_pixel(env_name):
    env = gym.make(env_name)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for step in range(60):
        for tile_size in (8, 5):
            expected = env.unwrapped.get_frame(highlight=False, tile_size=tile_size)
            assert np.array_equal(render_full_grid(env, tile_size), expected), (step, tile_size)
        _, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
        if terminated or truncated:
            env.reset()


def test_missions_travel_as_bytes():
    from torchrl_vlm.envs.minigrid import MISSION_BYTES, encode_mission

    code = encode_mission("go to the red door")
    assert code.shape == (MISSION_BYTES,) and decode_mission(torch.as_tensor(code)) == "go to the red door"
    with pytest.raises(ValueError, match="MISSION_BYTES"):
        encode_mission("x" * (MISSION_BYTES + 1))


def test_mission_features_tell_the_goal_apart():
    from torchrl_vlm.envs import MISSION_WORDS, mission_features

    red_key, blue_door = mission_features("fetch a red key"), mission_features("go to the blue door")
    assert red_key.sum() == 2 and red_key[MISSION_WORDS.index("red")] and red_key[MISSION_WORDS.index("key")]
    assert blue_door.sum() == 2 and blue_door[MISSION_WORDS.index("blue")] and blue_door[MISSION_WORDS.index("door")]

    plain = make_minigrid_env("MiniGrid-GoToDoor-6x6-v0", num_envs=2, render=False, seed=0)
    env = make_minigrid_env("MiniGrid-GoToDoor-6x6-v0", num_envs=2, render=False, seed=0, mission_features=True)
    check_env_specs(env)
    td = env.reset()
    assert td["observation"].shape[-1] == plain.observation_spec["observation"].shape[-1] + len(MISSION_WORDS)
    for row, mission in zip(td["observation"], decode_mission(td["mission"]), strict=True):
        assert torch.equal(row[-len(MISSION_WORDS):], torch.as_tensor(mission_features(mission)))


def test_render_off_gives_no_pixels():
    env = make_minigrid_env("MiniGrid-DoorKey-5x5-v0", render=False, seed=0)
    check_env_specs(env)
    assert "pixels" not in env.reset().keys()


def _place(env, pos, direction):
    base = env.unwrapped
    base.agent_pos = np.array(pos)
    base.agent_dir = direction


def test_events_come_from_the_simulator_state():
    env = MiniGridObservation(gym.make("MiniGrid-DoorKey-5x5-v0"), render=False)
    env.reset(seed=0)
    base = env.unwrapped
    grid = base.grid
    key_pos = next((i, j) for i in range(5) for j in range(5) if isinstance(grid.get(i, j), Key))
    door_pos = next(
        (i, j) for i in range(5) for j in range(5) if grid.get(i, j) is not None and grid.get(i, j).type == "door"
    )
    names = list(EVENT_NAMES)

    # Stand left of the key facing right (dir 0), and pick it up.
    _place(env, (key_pos[0] - 1, key_pos[1]) if key_pos[0] > 1 else (key_pos[0], key_pos[1] - 1),
           0 if key_pos[0] > 1 else 1)
    obs, *_ = env.step(PICKUP)
    assert obs["events"][names.index("key_pickup")] and obs["events"][names.index("first_key_pickup")]
    assert not obs["events"][names.index("door_open")]

    # Drop and pick up again: a pick-up, but not the first one.
    env.step(4)
    obs, *_ = env.step(PICKUP)
    assert obs["events"][names.index("key_pickup")] and not obs["events"][names.index("first_key_pickup")]

    # Face the (locked) door holding the key, and open it.
    _place(env, (door_pos[0] - 1, door_pos[1]), 0)
    obs, *_ = env.step(TOGGLE)
    assert obs["events"][names.index("door_open")] and obs["events"][names.index("first_door_open")]
    # The fast renderer draws the open door (and the agent holding the key) as minigrid does.
    assert np.array_equal(render_full_grid(env, 8), env.unwrapped.get_frame(highlight=False, tile_size=8))

    # Step next to the goal (bottom-right corner) and walk onto it.
    _place(env, (3 - 1, 3), 0)
    obs, reward, terminated, *_ = env.step(FORWARD)
    assert terminated and reward > 0
    assert obs["events"][names.index("goal")] and obs["success"][0]


def _two_envs_of_different_episode_lengths(clip_len):
    # Same env, different step limits: episodes end at different times, so the
    # batched env resets one env while the other goes on (a partial reset).
    makers = [
        lambda: _single_env("MiniGrid-DoorKey-8x8-v0", 5, "cpu", render=False),
        lambda: _single_env("MiniGrid-DoorKey-8x8-v0", 7, "cpu", render=False),
    ]
    base = SerialEnv(2, makers)
    env = TransformedEnv(base, RenderClips(clip_len=clip_len, frame_key=None, worker_id=1))
    env.set_seed(0)
    return env


def test_clip_tags_with_partial_resets_step_by_step():
    clip_len = 3
    env = _two_envs_of_different_episode_lengths(clip_len)
    check_env_specs(env)
    td = env.rollout(20, break_when_any_done=False)
    done = td["next", "done"].squeeze(-1)
    # Env 0 ends every 5 steps, env 1 every 7: the resets are partial.
    assert done[0].nonzero().squeeze(-1).tolist() == [4, 9, 14, 19]
    assert done[1].nonzero().squeeze(-1).tolist() == [6, 13]

    for e in range(2):
        step_in_episode = 0
        expected_ids = []
        for t in range(20):
            assert td["clip_step"][e, t] == step_in_episode % clip_len
            expected_ids.append((t, step_in_episode // clip_len))
            step_in_episode = 0 if done[e, t] else step_in_episode + 1
        # Steps share a clip id exactly when they share (episode, clip-in-episode).
        episode = torch.cat([torch.zeros(1, dtype=torch.long), done[e, :-1].long().cumsum(0)])
        keys = [(int(episode[t]), c) for t, c in expected_ids]
        ids = td["clip_id"][e].tolist()
        for t1 in range(20):
            for t2 in range(20):
                assert (ids[t1] == ids[t2]) == (keys[t1] == keys[t2])
    # Ids are unique across the two envs.
    assert not set(td["clip_id"][0].tolist()) & set(td["clip_id"][1].tolist())
    # The next-step tag is the one the following row carries at its root.
    assert torch.equal(td["next", "clip_id"][:, :-1][~done[:, :-1]], td["clip_id"][:, 1:][~done[:, :-1]])


def test_worker_salt_keeps_ids_unique_across_processes():
    a = RenderClips(worker_id=1)._new_ids(4, "cpu")
    b = RenderClips(worker_id=2)._new_ids(4, "cpu")
    assert not set(a.tolist()) & set(b.tolist())
    with pytest.raises(ValueError, match="worker_id"):
        RenderClips(worker_id=-1)
    with pytest.raises(ValueError, match="clip_len"):
        RenderClips(clip_len=0)


def test_render_clips_renders_when_the_parent_gives_no_frame():
    base = GymEnv("MiniGrid-DoorKey-5x5-v0", render_mode="rgb_array", categorical_action_encoding=True)
    env = TransformedEnv(base, RenderClips(clip_len=4, frame_shape=(160, 160, 3)))
    check_env_specs(env)
    td = env.rollout(3)
    assert td["pixels"].shape == (3, 160, 160, 3)
    assert torch.equal(td["next", "pixels"][-1], torch.as_tensor(base._env.render()))
    with pytest.raises(ValueError, match="frame_shape"):
        _ = TransformedEnv(GymEnv("MiniGrid-DoorKey-5x5-v0"), RenderClips()).observation_spec


def test_clip_counter_survives_a_checkpoint():
    env = make_minigrid_env("MiniGrid-DoorKey-5x5-v0", render=False, seed=0, worker_id=3)
    env.rollout(40)
    state = env.state_dict()
    fresh = make_minigrid_env("MiniGrid-DoorKey-5x5-v0", render=False, seed=0, worker_id=3)
    fresh.load_state_dict(state)
    assert fresh.transform[0]._next_id == env.transform[0]._next_id > 0


def _assert_clips_well_formed(td, clip_len):
    """Checks the clips of a rollout ``[*batch, T]``, one env per row once the batch is flattened.

    Every clip is one run of consecutive steps of one env (an id never comes
    back after its run, nor shows up in another env), counts ``clip_step``
    0, 1, ..., is at most ``clip_len`` long, and ends exactly where its episode
    ends or where it is full (the rollout's last clips may be cut by the window).
    """
    horizon = td.shape[-1]
    ids = td["clip_id"].reshape(-1, horizon).tolist()
    steps = td["clip_step"].reshape(-1, horizon).tolist()
    done = td["next", "done"].reshape(-1, horizon).tolist()
    seen = set()
    for row in range(len(ids)):
        start = 0
        while start < horizon:
            end = start
            while end < horizon and ids[row][end] == ids[row][start]:
                end += 1
            clip, length = ids[row][start], end - start
            assert clip not in seen, f"clip {clip} comes back in env {row} at step {start}"
            seen.add(clip)
            assert steps[row][start:end] == list(range(length)), (row, start)
            assert length <= clip_len, (row, start)
            assert not any(done[row][start:end - 1]), f"clip {clip} goes on past an episode's end"
            if end < horizon:
                assert done[row][end - 1] or length == clip_len, f"clip {clip} ends early at step {end}"
            start = end


def test_vector_env_partial_resets_cut_clips_at_each_episode_end():
    # Dynamic obstacles end episodes at random steps (a collision) as well as at
    # the step limit, so the vector env's three envs reset at different steps.
    clip_len = 4
    env = make_minigrid_env(
        "MiniGrid-Dynamic-Obstacles-6x6-v0", num_envs=3, render=False, max_steps=9, clip_len=clip_len, seed=0
    )
    td = env.rollout(60, break_when_any_done=False)
    done = td["next", "done"].squeeze(-1)
    per_step = done.sum(0)
    assert ((per_step > 0) & (per_step < 3)).any(), "no partial reset happened"
    assert td["next", "terminated"].any() and td["next", "truncated"].any()
    _assert_clips_well_formed(td, clip_len)


def test_clips_continue_across_collector_batches():
    clip_len = 4
    env = make_minigrid_env(
        "MiniGrid-Dynamic-Obstacles-6x6-v0", num_envs=3, render=False, max_steps=9, clip_len=clip_len, seed=0
    )
    # 7 steps per env per batch: clips straddle every batch boundary.
    collector = Collector(env, None, frames_per_batch=21, total_frames=21 * 6)
    try:
        td = torch.cat([batch.clone() for batch in collector], dim=-1)
    finally:
        collector.shutdown()
    assert td.shape == (3, 42)
    _assert_clips_well_formed(td, clip_len)


def _rollout_ids(env, steps=40):
    td = env.rollout(steps, break_when_any_done=False)
    return set(td["clip_id"].flatten().tolist()) | set(td["next", "clip_id"].flatten().tolist())


def test_clones_and_copies_draw_their_own_salt():
    original = RenderClips(clip_len=4, frame_key=None)
    copies = [original.clone(), original.clone(), copy.deepcopy(original), pickle.loads(pickle.dumps(original))]
    envs = [
        TransformedEnv(_single_env("MiniGrid-DoorKey-5x5-v0", 6, "cpu", render=False), t)
        for t in [original, *copies]
    ]
    id_sets = [_rollout_ids(env) for env in envs]
    for i in range(len(id_sets)):
        for j in range(i):
            assert not id_sets[i] & id_sets[j], (i, j)
    # A salt the user chose is theirs: copies keep it (and their ids are reproducible).
    chosen = RenderClips(worker_id=5)
    assert chosen.salt == chosen.clone().salt == pickle.loads(pickle.dumps(chosen)).salt == 5


def test_a_resumed_or_rewound_run_never_reuses_an_id():
    def make(worker_id=None):
        return make_minigrid_env("MiniGrid-DoorKey-5x5-v0", render=False, max_steps=6, clip_len=4, seed=0,
                                 worker_id=worker_id)

    for worker_id in (None, 7):
        env = make(worker_id)
        before = _rollout_ids(env)
        state = copy.deepcopy(env.state_dict())
        # A new run resuming from the checkpoint...
        resumed = make(worker_id)
        resumed.load_state_dict(state)
        assert not before & _rollout_ids(resumed)
        # ... and the same run rewound to it (ids handed out since are not taken back).
        after = _rollout_ids(env)
        env.load_state_dict(state)
        assert not (before | after) & _rollout_ids(env), worker_id
