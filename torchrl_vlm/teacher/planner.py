"""A perfect teacher for LVLM2P: an exact MiniGrid planner.

LVLM2P distils a student policy (PPO/A2C) towards a teacher's distribution over
actions, ``L = L_RL + λ·KL(π_T ‖ π_θ)``, where the teacher is a vision-language
model looking at the rendered frame. :class:`PlannerTeacher` stands in for
that VLM with an exact planner on the simulator state: it knows the optimal
actions of every state, so it needs no weights and is the *upper bound* of
what a VLM teacher can give. Runs with it measure the distillation mechanism
itself; :class:`NoisyTeacher` then degrades it in a controlled way, to study
how much teacher error the student tolerates.

How a state is solved: the planner reads the full state that
``make_minigrid_env(..., state=True)`` exposes (grid encoding, agent position
and direction, carried object) plus the mission string, and runs a breadth-first
search over abstract states ``(cell, direction, what is carried, door states)``
with MiniGrid's own transition rules (turns, forward, pickup, toggle, done).
Every action costs 1, so search depth is the number of actions: the result is
the exact cost-to-go ``q(a) = 1 + d(next state after a)`` of every action
(``1`` if ``a`` itself completes the mission, ``inf`` if it ends the episode
in failure or the env does not offer it). The *optimal first actions* are the
arg-minima of ``q``: every action that starts some shortest plan.

The search runs backwards from the mission's success transitions over the
whole reachable state graph of one *layout* (grid contents + carried object +
mission), so one search answers every agent position and direction on that
layout. Layouts are cached by their exact bytes (an LRU): the result is a pure
function of them, so caching is always safe, and in static tasks (LavaGap,
GoToDoor, Fetch) one search serves a whole episode; DoorKey needs one per
change of the grid (key picked up, door opened); Dynamic-Obstacles one per
step (the balls move), on a tiny graph.
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict

import numpy as np
import torch
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX

from torchrl_vlm._checks import check_int
from torchrl_vlm.envs.minigrid_names import MINIGRID_ACTIONS

__all__ = ["NoisyTeacher", "PlannerTeacher", "TASKS"]

#: MiniGrid's actions, in the env's order (named in :data:`~torchrl_vlm.envs.MINIGRID_ACTIONS`).
LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE, DONE = range(len(MINIGRID_ACTIONS))

#: Tasks the planner solves; ``task=None`` detects them from the mission and grid.
#: ``"goal"``: reach the goal square (DoorKey, LavaGap, Empty, ...: keys, doors
#: and lava are part of the rules); ``"dynamic_obstacles"``: the same, where
#: bumping into anything fails and only left/right/forward exist;
#: ``"gotodoor"``: ``done`` next to the door named in the mission;
#: ``"fetch"``: pick up an object of the type and colour named in the mission.
TASKS = ("goal", "dynamic_obstacles", "gotodoor", "fetch")

_EMPTY = OBJECT_TO_IDX["empty"]
_WALL = OBJECT_TO_IDX["wall"]
_FLOOR = OBJECT_TO_IDX["floor"]
_DOOR = OBJECT_TO_IDX["door"]
_KEY = OBJECT_TO_IDX["key"]
_BALL = OBJECT_TO_IDX["ball"]
_GOAL = OBJECT_TO_IDX["goal"]
_LAVA = OBJECT_TO_IDX["lava"]
_PORTABLE = frozenset((OBJECT_TO_IDX["key"], OBJECT_TO_IDX["ball"], OBJECT_TO_IDX["box"]))
_OPEN, _CLOSED, _LOCKED = STATE_TO_IDX["open"], STATE_TO_IDX["closed"], STATE_TO_IDX["locked"]

# What an action does in a transition table, when it does not lead to a state
# (non-negative entries are successor cells or mutations).
_NOOP, _SUCCESS, _FAIL = -1, -2, -3
# "Unreachable" as an int, so distance tables stay plain int lists.
_UNREACHED = 1 << 30

# (dx, dy) per direction; cells are indexed p = x * height + y, as grid.reshape(-1, 3) lays them.
_DIR_VEC = ((1, 0), (0, 1), (-1, 0), (0, -1))

# Cap on the number of (carried object, door states) combinations of one layout:
# far above what the supported envs need (DoorKey: 2 x 3), low enough to keep a search cheap.
_MAX_MUTATIONS = 512

_GOTODOOR_RE = re.compile(r"go to the (\w+) door")
_FETCH_RE = re.compile(r"(?:get|go get|fetch|go fetch|you must fetch) an? (\w+) (\w+)")
_DYNAMIC_OBSTACLES_MISSION = "get to the green goal square"


def _parse_mission(text: str, task: str | None) -> tuple:
    """A mission spec: ``("gotodoor", colour)``, ``("fetch", type, colour)`` or ``("goal", maybe_dynamic)``."""
    if task in (None, "gotodoor"):
        match = _GOTODOOR_RE.fullmatch(text)
        if match and match.group(1) in COLOR_TO_IDX:
            return ("gotodoor", COLOR_TO_IDX[match.group(1)])
        if task == "gotodoor":
            raise ValueError(f"task='gotodoor' needs a mission 'go to the <colour> door', got {text!r}")
    if task in (None, "fetch"):
        match = _FETCH_RE.fullmatch(text)
        if match and match.group(1) in COLOR_TO_IDX and match.group(2) in OBJECT_TO_IDX:
            return ("fetch", OBJECT_TO_IDX[match.group(2)], COLOR_TO_IDX[match.group(1)])
        if task == "fetch":
            raise ValueError(f"task='fetch' needs a mission like 'get a <colour> <key|ball>', got {text!r}")
    if task == "dynamic_obstacles":
        return ("dynamic_obstacles",)
    # Dynamic-Obstacles shares its mission with the Empty envs: the balls in the
    # grid tell them apart, which only the layout can see.
    return ("goal", task is None and text == _DYNAMIC_OBSTACLES_MISSION)


class _Layout:
    """The transition tables and distance-to-success table of one (grid, carried object, mission).

    Abstract states are ints ``s = ((m * W * H + p) << 2) | d``: cell ``p``,
    direction ``d``, mutation ``m`` (what is carried x the state of each door).
    The layout as given is mutation ``m0``.
    """

    __slots__ = ("task", "size", "m0", "front", "fwd", "pick", "tog", "done", "dist", "actions",
                 "cells", "portable_on_floor")

    def __init__(self, grid: np.ndarray, carrying: tuple, spec: tuple, allowed: frozenset):
        width, height = int(grid.shape[0]), int(grid.shape[1])
        size = width * height
        cells = [tuple(c) for c in grid.reshape(size, 3).tolist()]
        task = spec[0]
        if task == "goal" and spec[1] and any(c[0] == _BALL for c in cells):
            task = "dynamic_obstacles"
        if task == "goal" and not any(c[0] == _GOAL for c in cells):
            raise ValueError(
                "cannot tell the task: the mission is not a GoToDoor/Fetch mission and the grid has no goal; "
                f"pass task= one of {TASKS}"
            )
        if task == "dynamic_obstacles":
            allowed = allowed & {LEFT, RIGHT, FORWARD}
        self.task = task
        self.size = size
        self.cells = cells
        self.portable_on_floor = sum(c[0] in _PORTABLE for c in cells)
        self.actions = allowed

        front = []
        for p in range(size):
            x, y = divmod(p, height)
            for dx, dy in _DIR_VEC:
                nx, ny = x + dx, y + dy
                # Off-grid fronts point at a sentinel entry appended to every table.
                front.append(nx * height + ny if 0 <= nx < width and 0 <= ny < height else size)
        self.front = front

        empty_hand = carrying[0] in (0, _EMPTY)
        # Plans never drop: exact while the layout holds at most one portable
        # object (all supported tasks; see PlannerTeacher), and it keeps the
        # mutation space to "which floor object is in hand".
        items = (
            [p for p, c in enumerate(cells) if c[0] in _PORTABLE]
            if task in ("goal", "gotodoor") and empty_hand and PICKUP in allowed
            else []
        )
        doors = (
            [p for p, c in enumerate(cells) if c[0] == _DOOR]
            if task in ("goal", "fetch") and TOGGLE in allowed
            else []
        )
        n_carry = len(items) + 1
        n_mut = n_carry * 3 ** len(doors)
        if n_mut > _MAX_MUTATIONS:
            raise ValueError(
                f"layout too large to plan: {len(items)} portable objects and {len(doors)} doors "
                f"({n_mut} combinations > {_MAX_MUTATIONS})"
            )
        item_index = {p: i for i, p in enumerate(items)}
        door_index = {p: j for j, p in enumerate(doors)}
        self.m0 = n_carry * sum(cells[p][2] * 3**j for j, p in enumerate(doors))

        if task == "gotodoor":
            targets = [p for p, c in enumerate(cells) if c[0] == _DOOR and c[1] == spec[1]]
            near = set()
            for t in targets:
                near.update(f for f in front[4 * t: 4 * t + 4] if f < size)
            # GoToDoorEnv rewards `done` on any cell 4-adjacent to the target door,
            # whichever way the agent faces, and ends the episode on any other `done`.
            self.done = [_SUCCESS if p in near else _FAIL for p in range(size)]
        else:
            self.done = None

        self.fwd, self.pick, self.tog = [], [], []
        for m in range(n_mut):
            c_idx, code = m % n_carry, m // n_carry
            door_states = []
            for _ in doors:
                door_states.append(code % 3)
                code //= 3
            carried = cells[items[c_idx - 1]][:2] if c_idx else (None if empty_hand else tuple(carrying[:2]))
            gone = items[c_idx - 1] if c_idx else -1

            fwd = [_NOOP] * (size + 1)
            pick = [_NOOP] * (size + 1)
            tog = [_NOOP] * (size + 1)
            for p, (obj, color, state) in enumerate(cells):
                if p == gone:
                    obj = _EMPTY
                j = door_index.get(p)
                if j is not None:
                    state = door_states[j]
                if task == "dynamic_obstacles":
                    # DynamicObstaclesEnv ends the episode (reward -1) on a forward
                    # into anything but an empty cell or the goal, walls included.
                    fwd[p] = p if obj == _EMPTY else _SUCCESS if obj == _GOAL else _FAIL
                    continue
                if obj in (_EMPTY, _FLOOR) or (obj == _DOOR and state == _OPEN):
                    fwd[p] = p
                elif obj == _GOAL:
                    fwd[p] = _SUCCESS
                elif obj == _LAVA:
                    fwd[p] = _FAIL
                if obj in _PORTABLE and carried is None:
                    if task == "fetch":
                        # FetchEnv ends the episode on any pickup; only the named object pays.
                        pick[p] = _SUCCESS if (obj, color) == (spec[1], spec[2]) else _FAIL
                    elif p in item_index:
                        pick[p] = (item_index[p] + 1) + n_carry * (m // n_carry)
                if task == "gotodoor":
                    # GoToDoorEnv ends the episode on any toggle, reward 0.
                    tog[p] = _FAIL
                elif j is not None:
                    new_state = state
                    if state == _LOCKED:
                        if carried is not None and carried[0] == _KEY and carried[1] == color:
                            new_state = _OPEN
                    else:
                        new_state = _CLOSED if state == _OPEN else _OPEN
                    if new_state != state:
                        tog[p] = m + n_carry * (new_state - state) * 3**j
            if task == "gotodoor":
                tog[size] = _FAIL
            self.fwd.append(fwd)
            self.pick.append(pick)
            self.tog.append(tog)

        self.dist = self._search(n_mut)

    def _search(self, n_mut: int) -> list:
        """Distance to success of every abstract state (``_UNREACHED`` if none)."""
        size = self.size
        front, fwd_t, pick_t, tog_t, done_t = self.front, self.fwd, self.pick, self.tog, self.done
        allowed = self.actions
        use_fwd, use_pick, use_tog = FORWARD in allowed, PICKUP in allowed, TOGGLE in allowed
        use_done = DONE in allowed and done_t is not None
        use_left, use_right = LEFT in allowed, RIGHT in allowed
        n_states = n_mut * size * 4
        preds: list = [None] * n_states
        seen = bytearray(n_states)
        # Seeding every non-wall cell at m0 makes the table answer any agent
        # position on this layout, not just the one that built it.
        base = self.m0 * size
        stack = [((base + p) << 2) | d for p, c in enumerate(self.cells) if c[0] != _WALL for d in range(4)]
        for s in stack:
            seen[s] = 1
        frontier = []
        i = 0
        while i < len(stack):
            s = stack[i]
            i += 1
            d = s & 3
            mp = s >> 2
            m, p = divmod(mp, size)
            f = front[(p << 2) | d]
            succ = []
            if use_left:
                succ.append(s - d + ((d + 3) & 3))
            if use_right:
                succ.append(s - d + ((d + 1) & 3))
            solved = False
            if use_fwd:
                r = fwd_t[m][f]
                if r >= 0:
                    succ.append(((m * size + r) << 2) | d)
                elif r == _SUCCESS:
                    solved = True
            if use_pick:
                r = pick_t[m][f]
                if r >= 0:
                    succ.append(((r * size + p) << 2) | d)
                elif r == _SUCCESS:
                    solved = True
            if use_tog:
                r = tog_t[m][f]
                if r >= 0:
                    succ.append(((r * size + p) << 2) | d)
            if use_done and done_t[p] == _SUCCESS:
                solved = True
            if solved:
                frontier.append(s)
            for t in succ:
                lst = preds[t]
                if lst is None:
                    preds[t] = [s]
                else:
                    lst.append(s)
                if not seen[t]:
                    seen[t] = 1
                    stack.append(t)
        dist = [_UNREACHED] * n_states
        for s in frontier:
            dist[s] = 1
        # Plain BFS backwards: every edge costs one action.
        i = 0
        while i < len(frontier):
            s = frontier[i]
            i += 1
            lst = preds[s]
            if lst is None:
                continue
            nd = dist[s] + 1
            for u in lst:
                if dist[u] == _UNREACHED:
                    dist[u] = nd
                    frontier.append(u)
        return dist


class PlannerTeacher:
    """A perfect LVLM2P teacher: the distribution over MiniGrid's optimal actions.

    LVLM2P distils a PPO/A2C student towards a VLM's action distribution; this
    planner stands in for the VLM so the distillation mechanism can be
    measured without weights, and gives the upper bound a VLM teacher could
    reach. It is called on the batch of a rollout, ``teacher(td) -> probs``.

    For each state it computes the exact cost-to-go ``q(a)`` of every action
    (plan length counting ``a``; ``inf`` for an action that fails the episode
    or that the env does not offer) by breadth-first search on the full grid
    (see the module docstring), then returns

    - without ``temperature``: the uniform distribution over the optimal first
      actions ``argmin_a q(a)`` (all of them when several start a shortest
      plan, e.g. 0.5/0.5 for turning either way);
    - with ``temperature=T``: ``softmax(-q / T)`` over actions, actions with
      ``q = inf`` getting 0 (``q`` is integer, so ``T`` is in actions:
      ``exp(-1/T)`` is the weight of an action one step worse than optimal);

    and mixes either as ``(1 - epsilon) * that + epsilon / num_actions``.

    Tasks (detected per state from the mission and the grid, or fixed with
    ``task=``, one of :data:`TASKS`):

    - DoorKey and other goal tasks: reach the goal; keys can be picked up and
      doors toggled (a locked door opens with the key of its colour, in hand);
      the search runs over ``(cell, direction, key in hand, door state)``, so a
      key already carried or a door already open is just a different start.
      Lava fails the episode, so it is never stepped on (LavaGap).
    - Dynamic-Obstacles: reach the goal with the balls blocked at their
      current positions. The balls move every step, so this is the standard
      snapshot oracle, not a plan against their random motion; it never
      bumps into a ball or wall (which ends the episode there) since that
      action has ``q = inf``. If the balls cut every path to the goal, the
      plan is made as if the balls were gone (still never stepping into the
      ball in front), i.e. it waits near the best route rather than guessing;
      such states are counted in :attr:`relaxed`. Only left/right/forward
      exist in this env: the other actions get ``q = inf`` (give the student
      ``num_actions=3`` there).
    - GoToDoor: ``done`` on a cell next to the door of the mission's colour.
      ``GoToDoorEnv.step`` checks adjacency only, not facing, so ``done`` is
      optimal on that cell whatever the direction; ``done`` anywhere else and
      any ``toggle`` end the episode unrewarded (``q = inf``).
    - Fetch: ``pickup`` facing an object of the mission's type and colour;
      picking up any other object ends the episode unrewarded (``q = inf``).

    Plans never use ``drop``, which is exact whenever a layout holds at most one
    portable object (true of all the tasks above: DoorKey has one key, Fetch
    ends at the first pickup). The ``q`` of ``drop`` itself is computed with a
    search on the layout after the drop when it matters (always with
    ``temperature``, otherwise only if another portable object lies on the
    floor; else dropping is provably never optimal).

    Actions ``>= num_actions`` are never used, in the answer or in plans. A
    state whose mission is unreachable gets the uniform distribution and is
    counted in :attr:`unsolved`.

    Args:
        epsilon: weight of the uniform distribution mixed in, in ``[0, 1]``.
        temperature: ``None`` for the uniform-over-optimal target, or a
            positive float for ``softmax(-q / temperature)``.
        num_actions: size of the student's action space (``1..7``; 7 for
            MiniGrid, 3 for Dynamic-Obstacles).
        task: ``None`` to detect the task per state, or one of :data:`TASKS`.
        cache_size: number of layouts whose search is kept (LRU); ``0``
            searches afresh for every state.

    Attributes:
        unsolved: states answered (every call counts) whose mission was unreachable.
        relaxed: Dynamic-Obstacles states planned as if the balls were gone.
        searches: searches run (cache misses), for profiling.

    Examples:
        >>> from torchrl_vlm import make_minigrid_env
        >>> env = make_minigrid_env("MiniGrid-DoorKey-5x5-v0", num_envs=2, state=True, render=False, seed=0)
        >>> teacher = PlannerTeacher(epsilon=0.05)
        >>> probs = teacher(env.reset())  # reads td["state"] and td["mission"]
        >>> probs.shape
        torch.Size([2, 7])
        >>> def planner_policy(td):
        ...     return td.set("action", teacher(td).argmax(-1))
        >>> rollout = env.rollout(20, planner_policy)
        >>> bool(rollout["next", "success"].any())  # the planner solves DoorKey-5x5 within 20 steps
        True
    """

    def __init__(
        self,
        *,
        epsilon: float = 0.0,
        temperature: float | None = None,
        num_actions: int = len(MINIGRID_ACTIONS),
        task: str | None = None,
        cache_size: int = 1024,
    ):
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be a float in [0, 1], got {epsilon!r}")
        if temperature is not None and (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not math.isfinite(temperature)
            or temperature <= 0
        ):
            raise ValueError(f"temperature must be None or a finite float > 0, got {temperature!r}")
        if (
            isinstance(num_actions, bool)
            or not isinstance(num_actions, int)
            or not 1 <= num_actions <= len(MINIGRID_ACTIONS)
        ):
            raise ValueError(f"num_actions must be an int in [1, {len(MINIGRID_ACTIONS)}], got {num_actions!r}")
        if task is not None and task not in TASKS:
            raise ValueError(f"task must be None (auto-detect) or one of {TASKS}, got {task!r}")
        check_int("cache_size", cache_size, 0)
        self.epsilon = float(epsilon)
        self.temperature = None if temperature is None else float(temperature)
        self.num_actions = num_actions
        self.task = task
        self.cache_size = cache_size
        self._allowed = frozenset(range(num_actions))
        self._layouts: OrderedDict = OrderedDict()
        self._missions: dict = {}
        self.unsolved = 0
        self.relaxed = 0
        self.searches = 0

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(epsilon={self.epsilon}, temperature={self.temperature}, "
            f"num_actions={self.num_actions}, task={self.task!r})"
        )

    # -- public API ---------------------------------------------------------

    def __call__(self, td) -> torch.Tensor:
        """Teacher distributions ``[*batch, num_actions]`` (float32) for the states of ``td``."""
        q, device = self._costs(td)
        n_act = self.num_actions
        best = q.min(axis=1, keepdims=True)
        solved = np.isfinite(best[:, 0])
        if self.temperature is None:
            weights = (q == best).astype(np.float64)
        else:
            with np.errstate(invalid="ignore"):
                weights = np.exp(-(q - best) / self.temperature)
            weights[~np.isfinite(q)] = 0.0
        weights[~solved] = 1.0
        probs = weights / weights.sum(axis=1, keepdims=True)
        if self.epsilon:
            probs = (1.0 - self.epsilon) * probs + self.epsilon / n_act
        out = torch.from_numpy(probs.astype(np.float32))
        return out.reshape(*self._batch_shape(td), n_act).to(device)

    def action_costs(self, td) -> torch.Tensor:
        """Exact cost-to-go ``q(a)`` of each action, float32 ``[*batch, num_actions]``, ``inf`` if it fails."""
        q, device = self._costs(td)
        return torch.from_numpy(q.astype(np.float32)).reshape(*self._batch_shape(td), self.num_actions).to(device)

    def optimal_actions(self, td) -> torch.Tensor:
        """Bool mask ``[*batch, num_actions]`` of the optimal first actions (all False if unsolved)."""
        costs = self.action_costs(td)
        best = costs.min(-1, keepdim=True).values
        return (costs == best) & torch.isfinite(best)

    # -- internals ----------------------------------------------------------

    @staticmethod
    def _batch_shape(td) -> tuple:
        return tuple(td["state"]["agent_pos"].shape[:-1])

    def _costs(self, td) -> tuple[np.ndarray, torch.device]:
        try:
            state = td["state"]
            grid_t, mission_t = state["grid"], td["mission"]
            pos_t, dir_t, carrying_t = state["agent_pos"], state["agent_dir"], state["carrying"]
        except KeyError as err:
            raise ValueError(
                "td must hold 'mission' and 'state' with 'grid', 'agent_pos', 'agent_dir', 'carrying' "
                f"(make_minigrid_env(..., state=True)); missing {err}"
            ) from None
        device = grid_t.device
        grid = np.ascontiguousarray(_to_numpy(grid_t), dtype=np.uint8)
        if grid.ndim < 3 or grid.shape[-1] != 3:
            raise ValueError(f"td['state']['grid'] must be uint8 [*batch, W, H, 3], got shape {tuple(grid.shape)}")
        width, height = grid.shape[-3], grid.shape[-2]
        grid = grid.reshape(-1, width, height, 3)
        n = grid.shape[0]
        pos = _to_numpy(pos_t).reshape(n, 2).tolist()
        dirs = _to_numpy(dir_t).reshape(n).tolist()
        carrying = np.ascontiguousarray(_to_numpy(carrying_t), dtype=np.uint8).reshape(n, 3)
        missions = np.ascontiguousarray(_to_numpy(mission_t), dtype=np.uint8).reshape(n, -1)
        q = np.empty((n, self.num_actions), dtype=np.float64)
        for i in range(n):
            raw = missions[i].tobytes()
            spec = self._spec(raw)
            carry = tuple(carrying[i].tolist())
            try:
                layout = self._layout(grid[i], carry, spec)
            except ValueError as err:
                raise ValueError(f"{err} (mission {raw.rstrip(bytes(1)).decode('utf-8')!r})") from None
            x, y = pos[i]
            q[i] = self._state_costs(layout, grid[i], carry, spec, x * height + y, int(dirs[i]))
        return q, device

    def _spec(self, raw: bytes) -> tuple:
        spec = self._missions.get(raw)
        if spec is None:
            if len(self._missions) > 4096:
                self._missions.clear()
            spec = self._missions[raw] = _parse_mission(raw.rstrip(b"\0").decode("utf-8"), self.task)
        return spec

    def _layout(self, grid: np.ndarray, carrying: tuple, spec: tuple) -> _Layout:
        key = (spec, grid.shape, grid.tobytes(), carrying)
        layout = self._layouts.get(key)
        if layout is not None:
            self._layouts.move_to_end(key)
            return layout
        layout = _Layout(grid, carrying, spec, self._allowed)
        self.searches += 1
        if self.cache_size:
            self._layouts[key] = layout
            if len(self._layouts) > self.cache_size:
                self._layouts.popitem(last=False)
        return layout

    def _state_costs(self, layout: _Layout, grid, carrying: tuple, spec: tuple, p: int, d: int) -> list:
        q = self._q(layout, layout.dist, grid, carrying, spec, p, d)
        if min(q) == math.inf:
            if layout.task == "dynamic_obstacles":
                relaxed = self._layout(_without_balls(grid), carrying, ("dynamic_obstacles",))
                q = self._q(layout, relaxed.dist, grid, carrying, spec, p, d)
                if min(q) < math.inf:
                    self.relaxed += 1
                    return q
            self.unsolved += 1
        return q

    def _q(self, layout: _Layout, dist: list, grid, carrying: tuple, spec: tuple, p: int, d: int) -> list:
        """``q(a)`` of every action from cell ``p``, direction ``d`` (transitions of ``layout``, distances ``dist``)."""
        size = layout.size
        m = layout.m0
        s = ((m * size + p) << 2) | d
        f = layout.front[(p << 2) | d]
        here = dist[s]
        noop = math.inf if here >= _UNREACHED else here + 1.0
        allowed = layout.actions
        q = []
        for a in range(self.num_actions):
            if a not in allowed:
                q.append(math.inf)
                continue
            if a == LEFT:
                t = s - d + ((d + 3) & 3)
            elif a == RIGHT:
                t = s - d + ((d + 1) & 3)
            elif a == FORWARD:
                r = layout.fwd[m][f]
                t = ((m * size + r) << 2) | d if r >= 0 else r
            elif a == PICKUP:
                r = layout.pick[m][f]
                t = ((r * size + p) << 2) | d if r >= 0 else r
            elif a == TOGGLE:
                r = layout.tog[m][f]
                t = ((r * size + p) << 2) | d if r >= 0 else r
            elif a == DONE:
                t = _NOOP if layout.done is None else layout.done[p]
            else:  # DROP
                q.append(self._drop_cost(layout, grid, carrying, spec, p, d, f, noop))
                continue
            if t >= 0:
                q.append(math.inf if dist[t] >= _UNREACHED else dist[t] + 1.0)
            elif t == _SUCCESS:
                q.append(1.0)
            elif t == _FAIL:
                q.append(math.inf)
            else:
                q.append(noop)
        return q

    def _drop_cost(self, layout, grid, carrying, spec, p, d, f, noop) -> float:
        if carrying[0] in (0, _EMPTY) or f >= layout.size or layout.cells[f][0] != _EMPTY:
            return noop  # minigrid drops only onto an empty cell
        if self.temperature is None and layout.portable_on_floor == 0:
            # With nothing else to pick up, a plan that drops is beaten by the
            # same plan keeping the object: dropping is never optimal. Skipping
            # the search here keeps DoorKey's hard targets at one search per grid.
            return math.inf
        dropped = grid.copy()
        height = grid.shape[1]
        dropped[f // height, f % height] = carrying
        after = self._layout(dropped, (0, 0, 0), spec)
        rest = after.dist[((after.m0 * after.size + p) << 2) | d]
        return math.inf if rest >= _UNREACHED else rest + 1.0


def _without_balls(grid: np.ndarray) -> np.ndarray:
    out = grid.copy()
    balls = out[..., 0] == _BALL
    out[balls] = (_EMPTY, 0, 0)
    return out


def _to_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


class NoisyTeacher:
    """A teacher that is wrong on a known fraction of states, to study LVLM2P's robustness.

    With probability ``error_rate`` per state (independently, from a seeded
    :class:`torch.Generator`), the base teacher's distribution is replaced by
    a one-hot on an action drawn uniformly among those that are *not* the
    base's most likely actions (its argmax set, i.e. the planner's optimal
    actions), or by the uniform distribution if every action is most likely;
    otherwise the base distribution passes through unchanged. This models a
    VLM that confidently names a wrong action, the failure that hurts
    distillation most.

    Args:
        base: a teacher, ``base(td) -> probs [*batch, A]``.
        error_rate: probability of a wrong answer per state, in ``[0, 1]``.
        seed: seed of the generator drawing errors and wrong actions.

    Attributes:
        num_states: states answered so far.
        num_errors: states answered with a wrong action so far.
    """

    def __init__(self, base, error_rate: float, *, seed: int = 0):
        if not callable(base):
            raise ValueError(f"base must be a callable teacher td -> probs, got {base!r}")
        if isinstance(error_rate, bool) or not isinstance(error_rate, (int, float)) or not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must be a float in [0, 1], got {error_rate!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.base = base
        self.error_rate = float(error_rate)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.num_states = 0
        self.num_errors = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base!r}, error_rate={self.error_rate}, seed={self.seed})"

    def __call__(self, td) -> torch.Tensor:
        probs = self.base(td)
        n_act = probs.shape[-1]
        flat = probs.reshape(-1, n_act)
        n = flat.shape[0]
        # Draws happen on the CPU generator whatever the device, so a seed
        # gives the same errors on CPU and GPU.
        wrong_state = torch.rand(n, generator=self.generator) < self.error_rate
        scores = torch.rand(n, n_act, generator=self.generator)
        cpu = flat.detach().cpu()
        # A tolerance, so float noise in a uniform-over-optimal row keeps all its optimal actions.
        best = cpu >= cpu.max(-1, keepdim=True).values - 1e-6
        wrong_action = scores.masked_fill(best, -1.0).argmax(-1)
        replacement = torch.nn.functional.one_hot(wrong_action, n_act).to(flat.dtype)
        all_best = best.all(-1)
        replacement[all_best] = 1.0 / n_act
        out = torch.where(wrong_state[:, None].to(flat.device), replacement.to(flat.device), flat)
        self.num_states += n
        self.num_errors += int(wrong_state.sum())
        return out.reshape(probs.shape)
