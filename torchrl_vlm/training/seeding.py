"""Run set-up the recipes share: seeding every generator, the thread budget, the optimiser, and the random
state a checkpoint saves and restores."""
from __future__ import annotations

import importlib.util
import random
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torchrl._utils import timeit


# --------------------------------------------------------------------------- run set-up
def make_adam(params, lr: float) -> torch.optim.Optimizer:
    """Adam with its fused kernel. A CPU update of the recipes' small networks is mostly per-tensor overhead,
    and the fused step updates every tensor in one call: the same algorithm, cheaper
    (benchmarks/update_cost.py measures it on SAC's update)."""
    return torch.optim.Adam(params, lr=lr, fused=True)


def remember_absent_pandas() -> None:
    """Where pandas is not installed, records that in ``sys.modules`` so that asking again is free.

    ``TensorDict.from_any``, which every ``TensorDictModule`` call runs on each output, asks
    ``importlib.util.find_spec("pandas")`` each time (tensordict 0.14); without pandas that walks
    ``sys.path`` on every call: ~80 µs each, ~15% of a CPU DQN update on DoorKey-8x8 here, and more
    of a collector step. A ``None`` entry is the import system's own "not importable" mark:
    ``find_spec`` answers ``None`` at once and ``import pandas`` fails as it would have.
    """
    if "pandas" not in sys.modules and importlib.util.find_spec("pandas") is None:
        sys.modules["pandas"] = None


def seed_everything(seed: int, num_threads: int) -> None:
    """Seeds Python, numpy and torch, sets the learner's threads, and restarts the phase timings
    (and, once, :func:`remember_absent_pandas`)."""
    remember_absent_pandas()
    timeit.reset()  # phase timings are per run, not per process
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(num_threads)



def get_rng_state() -> dict[str, Any]:
    """Python, numpy and torch random states, for a checkpoint: tensors, ints and tuples only,
    so that :func:`load_checkpoint` reads them with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restores the random states :func:`get_rng_state` saved: Python's, numpy's and torch's, and CUDA's where
    they were saved and a GPU is available."""
    random.setstate(state["python"])
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
