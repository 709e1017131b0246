"""Shared helpers of the benchmark scripts: timing, the machine, and RESULTS.md."""
from __future__ import annotations

import datetime
import fcntl
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDict

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


def paired_slowdown(sps: Sequence[float], reference: Sequence[float]) -> tuple[np.ndarray, float]:
    """How much slower each round's run is than the same round's reference run, and the median over rounds.

    ``sps[i]`` and ``reference[i]`` are env steps per second of round ``i``; its slowdown is
    ``1 - sps[i] / reference[i]`` (0.1: 10% fewer steps per second). The runs of one round are
    neighbours in time, so their ratio cancels the machine's drift, which a ratio of the two
    medians (taken over different rounds) does not.
    """
    sps, reference = np.asarray(sps, dtype=float), np.asarray(reference, dtype=float)
    if sps.shape != reference.shape or sps.ndim != 1 or len(sps) == 0:
        raise ValueError(f"need one value per round for both runs, got {sps.shape} and {reference.shape}")
    per_round = 1 - sps / reference
    return per_round, float(np.median(per_round))


RESULTS_HEADER = (
    "# Benchmark results\n\n"
    "One section per study: its current table, with the date, machine and command that produced it. A benchmark "
    "script replaces its study's section (found by title) when it records a run, notes included; git keeps the "
    "history.\n"
)
#: Every ``## <title>`` heading starts a section, with or without a `` (<YYYY-MM-DD[ HH:MM]>)`` stamp, so a
#: hand-written analysis under its own heading survives a rerun of the study above it; ``###`` headings
#: belong to the section above.
SECTION_HEADING = re.compile(
    r"^## (?P<title>.+?)(?: \((?P<stamp>\d{4}-\d{2}-\d{2}(?: \d{2}:\d{2})?)\))?$", re.MULTILINE
)


def sections(text: str) -> list[tuple[re.Match, str]]:
    """The sections of ``text`` (a RESULTS.md), in order: each heading's match and the section's text, heading
    included, up to the next heading."""
    headings = list(SECTION_HEADING.finditer(text))
    ends = [h.start() for h in headings[1:]] + ([len(text)] if headings else [])
    return [(heading, text[heading.start():end]) for heading, end in zip(headings, ends, strict=True)]


def replace_section(text: str, title: str, section: str) -> str:
    """``text`` (a RESULTS.md) with the section titled ``title`` replaced by ``section``.

    The section keeps its place; a title not there yet is appended; any later section of the same
    title (a duplicate) is dropped. Every other section keeps its text; sections are separated by
    one blank line.
    """
    first = SECTION_HEADING.search(text)
    blocks, placed = [text[: first.start() if first else len(text)]], False
    for heading, block in sections(text):
        if heading["title"] != title:
            blocks.append(block)
        elif not placed:
            blocks.append(section)
            placed = True
    if not placed:
        blocks.append(section)
    return "\n\n".join(block.strip("\n") for block in blocks if block.strip()) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` in one step: a reader (or a run killed midway) sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def record_results(title: str, body: str, path: Path = RESULTS) -> None:
    """Makes ``body`` the current section ``title`` of benchmarks/RESULTS.md, dated, with the machine and command.

    A rerun of a study replaces its section rather than adding one. The file is rewritten in one
    atomic step, under a lock so that two studies finishing together do not lose each other's section.
    """
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    section = (
        f"## {title} ({stamp})\n\n"
        f"- machine: {machine()}\n"
        f"- command: `{command()}`\n\n"
        f"{body.strip()}\n"
    )
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = path.read_text() if path.exists() else RESULTS_HEADER
        write_atomic(path, replace_section(text, title, section))


RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def recipe(name: str):
    """Imports ``recipes/<name>.py`` (its ``train(cfg, out_dir)`` runs one training run)."""
    import importlib

    if str(RECIPES) not in sys.path:
        sys.path.insert(0, str(RECIPES))
    return importlib.import_module(name)


def recipe_config(name: str, overrides: list[str]):
    """The Hydra config of ``recipes/<name>.yaml`` with command-line style overrides.

    The recipe is imported first: it registers the resolvers its YAML uses (``${family:...}``).
    """
    from hydra import compose, initialize_config_dir

    recipe(name)

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


def cell_argv(script: str, method: str, seed: int, args, flags: Sequence[str]) -> list[str]:
    """The command line that runs one cell of a study in its own process: ``script --cell METHOD:SEED``, then
    each of ``flags`` (an argparse ``dest``, written ``--a-b`` for ``a_b``) with the value ``args`` holds,
    and ``--override ...`` last."""
    cmd = [sys.executable, script, "--cell", f"{method}:{seed}"]
    for dest in flags:
        cmd += [f"--{dest.replace('_', '-')}", str(getattr(args, dest))]
    return cmd + (["--override", *args.override] if args.override else [])


def cells_to_run(parser, cells, path_of: Callable[[str, int], Path], differ_of: Callable[[Path], list[str]]):
    """The ``(method, seed)`` cells not yet on disk: a study resumes where it stopped. A cell on disk that was run
    with other settings (``differ_of(path)`` non-empty) stops the study with a ``parser.error`` naming them."""
    todo = []
    for method, seed in cells:
        path = path_of(method, seed)
        if not path.exists():
            todo.append((method, seed))
            continue
        differ = differ_of(path)
        if differ:
            parser.error(f"{path.relative_to(RESULTS.parent.parent)} was run with other settings "
                         f"({', '.join(differ)}); pass --tag to keep this variant apart, or delete the cell")
    print(f"{len(cells) - len(todo)} of {len(cells)} cells on disk; running {len(todo)}", flush=True)
    return todo


def tiny_vlm_path() -> str:
    """The tiny offline Idefics3 of ``torchrl_vlm.testing`` (built once, under ``$TORCHRL_VLM_CACHE`` or the temp
    folder)."""
    from torchrl_vlm.testing import _RECIPE_VERSION, make_tiny_vlm

    cache = Path(os.environ.get("TORCHRL_VLM_CACHE", tempfile.gettempdir()))
    # The recipe's version in the name: a folder built by an older recipe is not mistaken for this one.
    return str(make_tiny_vlm(cache / f"torchrl_vlm-tiny-idefics3-r{_RECIPE_VERSION}-seed0", seed=0))


def minigrid_like_clips(n: int, clip_len: int, size: int, seed: int = 0) -> TensorDict:
    """Clips of blocky frames: random colours on a grid of 8-px tiles, like MiniGrid renders."""
    g = torch.Generator().manual_seed(seed)
    tiles = max(1, size // 8)
    palette = torch.tensor(
        [[0, 0, 0], [100, 100, 100], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [112, 39, 195]],
        dtype=torch.uint8,
    )
    grid = torch.randint(0, len(palette), (n, clip_len, tiles, tiles), generator=g)
    frames = palette[grid]  # [n, L, tiles, tiles, 3]
    rep = -(-size // tiles)
    frames = frames.repeat_interleave(rep, 2).repeat_interleave(rep, 3)[:, :, :size, :size].contiguous()
    mask = torch.ones(n, clip_len, dtype=torch.bool)
    return TensorDict({"frames": frames, "mask": mask}, batch_size=[n])
