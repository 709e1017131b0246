"""PlannerTeacher (exact MiniGrid planner, LVLM2P's perfect teacher) and NoisyTeacher."""
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from minigrid.core.grid import Grid
from minigrid.core.world_object import Ball, Door, Goal, Key, Lava, WorldObj
from tensordict import TensorDict

from torchrl_vlm.envs.minigrid import encode_mission, full_state, make_minigrid_env
from torchrl_vlm.teacher import NoisyTeacher, PlannerTeacher
from torchrl_vlm.teacher.planner import _parse_mission

LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE, DONE = range(7)
RIGHTWARDS, DOWN, LEFTWARDS, UP = range(4)


def state_td(env) -> TensorDict:
    """The planner's input for the current state of a gymnasium MiniGrid env (unbatched)."""
    state = {k: torch.as_tensor(v) for k, v in full_state(env).items()}
    mission = torch.as_tensor(encode_mission(env.unwrapped.mission))
    return TensorDict({"state": TensorDict(state, []), "mission": mission}, [])


def place(env, pos, direction, carrying=None):
    base = env.unwrapped
    base.agent_pos = tuple(pos)
    base.agent_dir = direction
    base.carrying = carrying


def doorkey_room(door_state="locked", key=True):
    """DoorKey-6x6 with a fixed layout: wall at x=3, yellow door (3, 2), key (1, 3), goal (4, 4)."""
    env = gym.make("MiniGrid-DoorKey-6x6-v0")
    env.reset(seed=0)
    grid = Grid(6, 6)
    grid.wall_rect(0, 0, 6, 6)
    grid.vert_wall(3, 0)
    grid.set(3, 2, Door("yellow", is_open=door_state == "open", is_locked=door_state == "locked"))
    if key:
        grid.set(1, 3, Key("yellow"))
    grid.set(4, 4, Goal())
    env.unwrapped.grid = grid
    return env


# -- hand-made states ---------------------------------------------------------


def test_doorkey_key_then_door_then_goal():
    teacher = PlannerTeacher()
    env = doorkey_room()
    place(env, (1, 2), DOWN)  # facing the key
    probs = teacher(state_td(env))
    assert probs.shape == (7,) and probs.dtype == torch.float32
    assert probs[PICKUP] == 1.0

    env = doorkey_room(key=False)
    place(env, (2, 2), RIGHTWARDS, carrying=Key("yellow"))  # holding the key, facing the locked door
    assert teacher(state_td(env))[TOGGLE] == 1.0
    # The wrong colour cannot open it: the plan cannot finish at all.
    place(env, (2, 2), RIGHTWARDS, carrying=Key("red"))
    unsolved = teacher.unsolved
    assert torch.allclose(teacher(state_td(env)), torch.full((7,), 1 / 7))
    assert teacher.unsolved == unsolved + 1

    env = doorkey_room(door_state="open", key=False)
    place(env, (4, 3), DOWN)  # facing the goal, door open
    assert teacher(state_td(env))[FORWARD] == 1.0
    # Facing away from the way down: both turns start a shortest plan.
    place(env, (4, 2), UP)
    expected = torch.tensor([0.5, 0.5, 0, 0, 0, 0, 0])
    assert torch.equal(teacher(state_td(env)), expected)
    costs = teacher.action_costs(state_td(env))
    assert costs[LEFT] == costs[RIGHT] == 4  # two turns, two steps
    # Dropping is never optimal, and done/pickup/toggle do nothing here.
    assert costs[DONE] == costs[PICKUP] == 5


def test_doorkey_closed_door_and_key_in_the_way():
    teacher = PlannerTeacher()
    env = doorkey_room(door_state="closed", key=False)
    place(env, (2, 2), RIGHTWARDS)  # an unlocked closed door opens without a key
    assert teacher(state_td(env))[TOGGLE] == 1.0
    # Open door: toggling it shut costs two steps more than walking through.
    env = doorkey_room(door_state="open", key=False)
    place(env, (2, 2), RIGHTWARDS)
    costs = teacher.action_costs(state_td(env))
    assert costs[FORWARD] + 2 == costs[TOGGLE]


def test_lavagap_never_steps_into_lava():
    teacher = PlannerTeacher()
    env = gym.make("MiniGrid-LavaGapS7-v0")
    env.reset(seed=3)
    gap_x, gap_y = (int(v) for v in env.unwrapped.gap_pos)
    lava_y = 1 if gap_y != 1 else 2
    place(env, (gap_x - 1, lava_y), RIGHTWARDS)
    td = state_td(env)
    assert isinstance(env.unwrapped.grid.get(gap_x, lava_y), Lava)
    probs, costs = teacher(td), teacher.action_costs(td)
    assert probs[FORWARD] == 0.0 and math.isinf(costs[FORWARD])
    assert probs.sum() == pytest.approx(1.0)
    place(env, (gap_x - 1, gap_y), RIGHTWARDS)  # facing the gap
    assert teacher(state_td(env))[FORWARD] == 1.0


def _door_cells(env):
    grid = env.unwrapped.grid
    doors = []
    for x in range(grid.width):
        for y in range(grid.height):
            cell = grid.get(x, y)
            if isinstance(cell, Door):
                # the room-side neighbour, and the direction that faces the door from it
                for direction, (dx, dy) in enumerate([(1, 0), (0, 1), (-1, 0), (0, -1)]):
                    nx, ny = x - dx, y - dy
                    # The room may be smaller than the grid: the cell beyond a door on
                    # the room's far wall is empty too, but lies on the grid's border.
                    inside = 0 < nx < grid.width - 1 and 0 < ny < grid.height - 1
                    if inside and grid.get(nx, ny) is None:
                        doors.append(((x, y), cell.color, (nx, ny), direction))
    return doors


def test_gotodoor_done_next_to_the_named_door_only():
    teacher = PlannerTeacher()
    env = gym.make("MiniGrid-GoToDoor-6x6-v0")
    env.reset(seed=1)
    target = tuple(int(v) for v in env.unwrapped.target_pos)
    doors = _door_cells(env)
    assert len(doors) == 4
    for pos, color, stand, facing in doors:
        place(env, stand, facing)
        probs = teacher(state_td(env))
        if pos == target:
            assert env.unwrapped.mission == f"go to the {color} door"
            assert probs[DONE] == 1.0
            # GoToDoorEnv checks adjacency only: done is optimal facing away too.
            place(env, stand, (facing + 2) % 4)
            assert teacher(state_td(env))[DONE] == 1.0
        else:
            assert probs[DONE] == 0.0 and probs[TOGGLE] == 0.0


def test_fetch_picks_up_the_named_object_only():
    teacher = PlannerTeacher()
    env = gym.make("MiniGrid-Fetch-6x6-N2-v0")
    env.reset(seed=0)
    base = env.unwrapped
    grid = Grid(6, 6)
    grid.wall_rect(0, 0, 6, 6)
    grid.set(2, 2, Key("red"))
    grid.set(4, 4, Ball("blue"))
    base.grid = grid
    base.targetType, base.targetColor = "key", "red"
    base.mission = "you must fetch a red key"
    place(env, (1, 2), RIGHTWARDS)  # facing the red key
    assert teacher(state_td(env))[PICKUP] == 1.0
    place(env, (3, 4), RIGHTWARDS)  # facing the blue ball
    probs = teacher(state_td(env))
    assert probs[PICKUP] == 0.0 and probs.sum() == pytest.approx(1.0)


def test_dynamic_obstacles_treats_balls_as_walls():
    teacher = PlannerTeacher(num_actions=3)
    env = gym.make("MiniGrid-Dynamic-Obstacles-6x6-v0")
    env.reset(seed=0)
    base = env.unwrapped
    for ball in base.obstacles:
        base.grid.set(*ball.cur_pos, None)
    base.grid.set(2, 1, base.obstacles[0])
    place(env, (1, 1), RIGHTWARDS)  # ball ahead: bumping into it ends the episode
    probs = teacher(state_td(env))
    assert probs.shape == (3,) and probs[FORWARD] == 0.0
    assert probs[RIGHT] == 1.0  # down the left column, then along the bottom
    # With all 7 actions, the ones Dynamic-Obstacles does not offer are never used.
    assert torch.all(PlannerTeacher()(state_td(env))[3:] == 0)


def test_mission_parsing():
    for syntax in ("get a", "go get a", "fetch a", "go fetch a", "you must fetch a"):
        assert _parse_mission(f"{syntax} purple ball", None)[0] == "fetch"
    assert _parse_mission("go to the grey door", None)[0] == "gotodoor"
    assert _parse_mission("use the key to open the door and then get to the goal", None) == ("goal", False)
    with pytest.raises(ValueError, match="fetch"):
        _parse_mission("go to the grey door", "fetch")


# -- exactness against a brute-force search through the real env --------------


def _snapshot(base):
    carrying = (0, 0, 0) if base.carrying is None else base.carrying.encode()
    return (base.grid.encode().tobytes(), tuple(int(v) for v in base.agent_pos), int(base.agent_dir), carrying)


def _restore(base, snap, shape):
    grid, pos, direction, carrying = snap
    base.grid = Grid.decode(np.frombuffer(grid, dtype=np.uint8).reshape(shape))[0]
    base.agent_pos, base.agent_dir = pos, direction
    base.carrying = WorldObj.decode(*carrying) if carrying[0] > 1 else None
    base.step_count = 0


def brute_force_optimal(env, max_depth=30):
    """Optimal first actions by BFS through the env's own ``step`` (all 7 actions, drop included)."""
    base = env.unwrapped
    base.gen_obs = lambda: None  # the search needs states, not observations
    shape = base.grid.encode().shape
    start = _snapshot(base)
    layer, seen = {start: 0}, {start}
    for depth in range(1, max_depth + 1):
        found, nxt = 0, {}
        for snap, mask in layer.items():
            for action in range(7):
                _restore(base, snap, shape)
                _, reward, terminated, _, _ = base.step(action)
                first = 1 << action if depth == 1 else mask
                if terminated:
                    found |= first if reward > 0 else 0
                    continue
                new = _snapshot(base)
                if new not in seen:
                    nxt[new] = nxt.get(new, 0) | first
        if found:
            _restore(base, start, shape)
            return {a for a in range(7) if found >> a & 1}, depth
        seen.update(nxt)
        layer = nxt
    raise AssertionError("no plan found")


@pytest.mark.parametrize(
    "env_name, seed, warmup",
    [
        ("MiniGrid-DoorKey-5x5-v0", 0, 0),
        ("MiniGrid-DoorKey-5x5-v0", 4, 6),
        ("MiniGrid-LavaGapS7-v0", 1, 3),
        ("MiniGrid-GoToDoor-6x6-v0", 2, 2),
        ("MiniGrid-Fetch-6x6-N2-v0", 5, 1),
    ],
)
def test_matches_brute_force(env_name, seed, warmup):
    env = gym.make(env_name)
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    teacher = PlannerTeacher()
    for _ in range(warmup):  # a few safe random moves, for states other than resets
        mask = teacher.optimal_actions(state_td(env))
        costs = teacher.action_costs(state_td(env))
        safe = [a for a in (LEFT, RIGHT, FORWARD, PICKUP, TOGGLE) if math.isfinite(costs[a]) and costs[a] > 1]
        env.unwrapped.step(int(rng.choice(safe)))
    td = state_td(env)
    expected, depth = brute_force_optimal(env)
    mask = teacher.optimal_actions(td)
    assert set(torch.nonzero(mask).flatten().tolist()) == expected
    assert teacher.action_costs(td).min() == depth


# -- rollouts in the real envs ----------------------------------------------------

DETERMINISTIC = [
    "MiniGrid-DoorKey-5x5-v0",
    "MiniGrid-DoorKey-6x6-v0",
    "MiniGrid-LavaGapS7-v0",
    "MiniGrid-GoToDoor-6x6-v0",
    "MiniGrid-Fetch-6x6-N2-v0",
]


def _rollout(env_name, teacher, num_envs=8, steps=80, seed=0):
    env = make_minigrid_env(env_name, num_envs=num_envs, state=True, render=False, seed=seed)

    def policy(td):
        td["action"] = teacher(td).argmax(-1)
        return td

    return env.rollout(steps, policy, break_when_any_done=False)


@pytest.mark.parametrize("env_name", DETERMINISTIC)
def test_argmax_rollouts_succeed_on_shortest_paths(env_name):
    teacher = PlannerTeacher()
    ro = _rollout(env_name, teacher)
    done = ro["next", "done"][..., 0]
    success = ro["next", "success"][..., 0][done]
    assert done.sum() >= 30
    # Observed: 100% on every env (exact planner, deterministic env).
    assert success.float().mean() >= 0.95
    assert teacher.unsolved == 0
    # Following an optimal action in a deterministic env shortens the plan by
    # exactly one step: episodes last exactly the planner's plan length at reset.
    to_go = teacher.action_costs(ro).min(-1).values
    ends = to_go[done]
    assert torch.all(ends == 1)
    continuing = ~done[:, :-1]
    assert torch.all((to_go[:, :-1] - to_go[:, 1:])[continuing] == 1)
    starts = to_go[ro["step_count"][..., 0] == 0]
    assert starts.max() < 25  # far below max_steps (>= 144)


def test_dynamic_obstacles_rollouts():
    teacher = PlannerTeacher(num_actions=3)
    ro = _rollout("MiniGrid-Dynamic-Obstacles-6x6-v0", teacher, steps=100)
    done = ro["next", "done"][..., 0]
    success = ro["next", "success"][..., 0][done]
    lengths = ro["next", "step_count"][..., 0][done]
    assert done.sum() >= 30
    # Observed: 100% here (48 episodes, mean length 15, max 28) and over 467
    # episodes (8 envs x 1000 steps: mean 17, max 61). The snapshot planner
    # never bumps into a ball; the moving balls only delay it.
    assert success.float().mean() >= 0.9
    assert lengths.float().mean() <= 30
    assert lengths.max() <= 108  # 3/4 of max_steps = 144
    assert teacher.unsolved == 0


# -- batching, mixing, caching ------------------------------------------------------


@pytest.fixture(scope="module")
def doorkey_batch():
    env = make_minigrid_env("MiniGrid-DoorKey-6x6-v0", num_envs=2, state=True, render=False, seed=3)
    teacher = PlannerTeacher()

    def policy(td):
        # mostly optimal, sometimes random: states with the key, the door open, or off the path
        probs = teacher(td)
        noise = torch.rand(probs.shape, generator=torch.Generator().manual_seed(int(td["step_count"].sum())))
        td["action"] = (probs + 0.6 * noise).argmax(-1)
        return td

    return env.rollout(60, policy, break_when_any_done=False)


def test_batched_input_and_epsilon(doorkey_batch):
    td = doorkey_batch[:, :5]
    assert td.batch_size == (2, 5)
    probs = PlannerTeacher()(td)
    assert probs.shape == (2, 5, 7) and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(-1), torch.ones(2, 5))
    optimal = probs > 0
    mixed = PlannerTeacher(epsilon=0.14)(td)
    assert torch.allclose(mixed[~optimal], torch.tensor(0.02))
    assert torch.allclose(mixed[optimal], 0.86 * probs[optimal] + 0.02)
    assert torch.allclose(mixed.sum(-1), torch.ones(2, 5))


def test_temperature_is_softmax_of_minus_cost(doorkey_batch):
    teacher = PlannerTeacher(temperature=0.5)
    costs = teacher.action_costs(doorkey_batch)
    probs = teacher(doorkey_batch)
    expected = torch.softmax(-costs / 0.5, dim=-1)  # exp(-inf) = 0: failing actions get nothing
    assert torch.allclose(probs, expected, atol=1e-6)
    assert torch.all(probs[torch.isinf(costs)] == 0)


def test_cache_does_not_change_answers(doorkey_batch):
    cached, uncached = PlannerTeacher(), PlannerTeacher(cache_size=0)
    assert torch.equal(cached(doorkey_batch), uncached(doorkey_batch))
    assert cached.searches < uncached.searches == doorkey_batch.numel()


def test_noisy_teacher_error_rate(doorkey_batch):
    base = PlannerTeacher()
    clean = base(doorkey_batch)
    noisy = NoisyTeacher(base, 0.3, seed=1)
    changed = 0
    for _ in range(5):
        out = noisy(doorkey_batch)
        assert out.shape == clean.shape
        diff = (out != clean).any(-1)
        changed += int(diff.sum())
        # A wrong answer is a one-hot on an action the base gives no mass to.
        wrong = out[diff]
        assert torch.all(wrong.max(-1).values == 1.0)
        assert torch.all(clean[diff][wrong == 1.0] == 0.0)
    n = 5 * doorkey_batch.numel()
    assert changed == noisy.num_errors and noisy.num_states == n
    assert abs(changed - 0.3 * n) <= 5 * math.sqrt(n * 0.3 * 0.7)
    again = NoisyTeacher(base, 0.3, seed=1)
    assert torch.equal(again(doorkey_batch), NoisyTeacher(base, 0.3, seed=1)(doorkey_batch))
    assert torch.equal(NoisyTeacher(base, 0.0)(doorkey_batch), clean)
    assert (NoisyTeacher(base, 1.0)(doorkey_batch) != clean).any(-1).all()


def test_noisy_teacher_all_optimal_gives_uniform():
    def flat(td):
        return torch.full((4, 7), 1 / 7)

    out = NoisyTeacher(flat, 1.0)(None)
    assert torch.allclose(out, torch.full((4, 7), 1 / 7))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"epsilon": -0.1}, "epsilon"),
        ({"epsilon": 1.5}, "epsilon"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"num_actions": 0}, "num_actions"),
        ({"num_actions": 8}, "num_actions"),
        ({"task": "maze"}, "task"),
        ({"cache_size": -1}, "cache_size"),
    ],
)
def test_planner_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PlannerTeacher(**kwargs)


def test_noisy_bad_arguments():
    base = PlannerTeacher()
    for rate in (-0.1, 1.5, True):
        with pytest.raises(ValueError, match="error_rate"):
            NoisyTeacher(base, rate)
    with pytest.raises(ValueError, match="base"):
        NoisyTeacher("planner", 0.1)
    with pytest.raises(ValueError, match="seed"):
        NoisyTeacher(base, 0.1, seed=1.5)


@pytest.mark.parametrize("env_name, seed", [("MiniGrid-DoorKey-5x5-v0", 7), ("MiniGrid-DoorKey-6x6-v0", 1)])
def test_trajectory_matches_brute_force(env_name, seed):
    """Every state along an episode (key on the floor, in hand, door locked, open) against brute force."""
    teacher = PlannerTeacher()
    env = gym.make(env_name)
    env.reset(seed=seed)
    base = env.unwrapped
    gen_obs = base.gen_obs
    checked = 0
    while True:
        td = state_td(env)
        snap, shape = _snapshot(base), base.grid.encode().shape
        expected, depth = brute_force_optimal(env)
        base.gen_obs = gen_obs
        _restore(base, snap, shape)
        mask = teacher.optimal_actions(td)
        assert set(torch.nonzero(mask).flatten().tolist()) == expected, checked
        assert teacher.action_costs(td).min() == depth
        checked += 1
        _, reward, terminated, _, _ = base.step(int(mask.float().argmax()))
        if terminated:
            assert reward > 0
            break
    assert checked >= 5


def test_drop_cost_matches_brute_force():
    teacher = PlannerTeacher(temperature=1.0)
    env = doorkey_room(key=False)
    place(env, (1, 1), DOWN, carrying=Key("yellow"))
    costs = teacher.action_costs(state_td(env))
    env.unwrapped.gen_obs = lambda: None
    env.unwrapped.step(DROP)
    assert env.unwrapped.grid.get(1, 2) is not None  # the key lies on the floor now
    _, depth = brute_force_optimal(env)
    assert costs[DROP] == 1 + depth
    assert costs[DROP] > costs.min()


def test_bad_inputs_are_explained():
    env = doorkey_room()
    place(env, (1, 2), DOWN)
    td = state_td(env)
    with pytest.raises(ValueError, match="mission"):
        PlannerTeacher()(td.exclude("mission"))
    env.unwrapped.grid.set(4, 4, None)  # no goal, and a mission that is not GoToDoor/Fetch
    with pytest.raises(ValueError, match="task="):
        PlannerTeacher()(state_td(env))
    with pytest.raises(ValueError, match="gotodoor"):
        PlannerTeacher(task="gotodoor")(td)


def test_a_teacher_in_its_own_process_answers_like_the_local_one():
    import functools

    from torchrl_vlm import make_minigrid_env
    from torchrl_vlm.teacher import RemoteTeacher

    env = make_minigrid_env("MiniGrid-LavaGapS7-v0", num_envs=3, state=True, render=False, seed=0)
    td = env.rollout(20, break_when_any_done=False)
    local = PlannerTeacher(epsilon=0.1)(td)
    with RemoteTeacher(functools.partial(PlannerTeacher, epsilon=0.1)) as remote:
        answer = remote(td)
        assert remote.service.worker_pid is not None
    assert answer.shape == (3, 20, 7)
    torch.testing.assert_close(answer, local)
