"""Shared helpers of the benchmark scripts: timing, the machine, and RESULTS.md."""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    """One line naming the machine: cores, memory, and GPU if any."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        mem_s = f", {mem:.0f} GiB RAM"
    except (ValueError, OSError):
        mem_s = ""
    return f"{os.cpu_count()} CPU cores ({platform.machine()}){mem_s}, {gpu}, torch {torch.__version__}"


def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 20) -> np.ndarray:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` (after ``warmup`` untimed ones)."""
    for _ in range(warmup):
        fn()
    out = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t0
    return out


def interleaved_medians(fns: dict[str, Callable[[], object]], rounds: int, per_round: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in alternating rounds.

    Alternating the implementations spreads the machine's noise evenly over
    them, so the ratios between medians are trustworthy even when absolute
    times drift.
    """
    samples: dict[str, list[np.ndarray]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(time_calls(fn, per_round, warmup=5))
    return {name: float(np.median(np.concatenate(s))) for name, s in samples.items()}


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def append_results(title: str, body: str) -> None:
    """Appends a dated section to benchmarks/RESULTS.md (one write, so concurrent runs do not interleave)."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    text = (
        f"\n## {title} ({stamp})\n\n"
        f"- machine: {machine()}\n"
        f"- command: `{command()}`\n\n"
        f"{body.rstrip()}\n"
    )
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nEach section is appended by a benchmark script; newest last.\n")
    with RESULTS.open("a") as f:
        f.write(text)


RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def recipe(name: str):
    """Imports ``recipes/<name>.py`` (its ``train(cfg, out_dir)`` runs one training run)."""
    import importlib

    if str(RECIPES) not in sys.path:
        sys.path.insert(0, str(RECIPES))
    return importlib.import_module(name)


def recipe_config(name: str, overrides: list[str]):
    """The Hydra config of ``recipes/<name>.yaml`` with command-line style overrides."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(RECIPES), version_base="1.3"):
        return compose(name, overrides=overrides)


def run_cells(commands: list[list[str]], jobs: int = 1) -> None:
    """Runs benchmark cells, each a command line in its own process, ``jobs`` at a time.

    Every run here is single-threaded (one learner thread, envs stepped in
    that thread), so two cells on a two-core machine each keep nearly their
    solo speed: a study's wall time halves. A failing cell stops the study
    once the cells already running have finished.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    running: list[tuple[subprocess.Popen, float, str]] = []
    pending = list(commands)
    failed = []
    while pending or running:
        while pending and len(running) < jobs and not failed:
            cmd = pending.pop(0)
            running.append((subprocess.Popen(cmd), time.time(), " ".join(cmd[2:])))
        for item in list(running):
            proc, t0, name = item
            if proc.poll() is not None:
                running.remove(item)
                print(f"  [{name}] exit {proc.returncode} ({time.time() - t0:.0f}s)", flush=True)
                if proc.returncode != 0:
                    failed.append(name)
        if failed and not running:
            raise RuntimeError(f"benchmark cell(s) failed: {failed}")
        time.sleep(0.5)
