"""Where the scorer runs: in-process, a spawned process, Ray replicas, or behind an HTTP server.

Two tables, both on the tiny offline Idefics3 (``torchrl_vlm.testing``), so they measure
what each way of reaching a model costs, not a real model's speed:

1. **Backends.** The same clips scored four ways: the scorer called in this process;
   ``ScoringService`` with its one spawned process; and ``backend="ray"`` with 1 and 2
   replicas on a local Ray cluster. Each round submits every clip (in submissions of
   ``--batch-clips``) and polls until all are answered; rounds alternate the backends and
   the medians are reported. Twice: the tiny model as it is (CPU-bound: on 2 cores the
   replicas, the driver and the processor share the cores), and with ``--latency`` seconds
   added to each call as a sleep (a model on its own GPU: the replica waits, no CPU used),
   which is where a second replica pays.
2. **The OpenAI path.** One clip per request, in sequence: ``TransformersScorer`` called
   in-process with one clip, against :class:`~torchrl_vlm.OpenAIScorer`'s request to
   ``transformers serve`` (the same model, on loopback): the request body's serialisation
   (8 frames as base64 PNG, JSON) and the HTTP round trip, which includes the server's own
   processor and its one generated token. ``transformers serve`` returns no logprobs, so
   its reply is timed, not scored (``OpenAIScorer.complete``); where vLLM's CPU build is
   installed (``make vllm``) the same is measured against vLLM with P(yes) read off its
   logprobs, on the tiny model with heads of 32 (vLLM's CPU attention needs them).

Ray listens on loopback only: the script re-runs itself in a network namespace of its own
(``unshare -rn``, ``lo`` up) with HOME in a temporary folder and Ray's usage stats off
(:mod:`torchrl_vlm.loopback`).

    python benchmarks/scoring_backends.py [--clips 256] [--batch-clips 8] [--rounds 5] [--latency 0.05]
        [--requests 64] [--no-record]

It replaces the "Scoring backends" section of benchmarks/RESULTS.md (``--no-record``: print only).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import markdown_table, minigrid_like_clips, record_results, tiny_vlm_path

IN_NETNS = "TORCHRL_VLM_BENCH_NETNS"
BACKENDS = ("in-process", "process", "ray x1", "ray x2")


def _rerun_in_own_network() -> int:
    from torchrl_vlm.loopback import ray_env, run_in_own_network

    home = tempfile.mkdtemp(prefix="bench-home")
    short_tmp = tempfile.mkdtemp(prefix="rayb", dir="/tmp")  # Ray's socket paths must stay short
    env = {**os.environ, **ray_env(home, short_tmp), IN_NETNS: "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent),
                                          *filter(None, [os.environ.get("PYTHONPATH")])])}
    try:
        return run_in_own_network([sys.executable, *sys.argv], env=env, capture_output=False).returncode
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(short_tmp, ignore_errors=True)


def score_all(target, clips, batch_clips: int) -> float:
    """Seconds to score every clip: called in-process, or submitted to a service and polled until done."""
    n = clips.batch_size[0]
    start = time.perf_counter()
    if callable(target):
        for s in range(0, n, batch_clips):
            target(clips[s : s + batch_clips])
        return time.perf_counter() - start
    tickets = [target.submit(clips[s : s + batch_clips]) for s in range(0, n, batch_clips)]
    while any(target.is_pending(t) for t in tickets):
        target.poll()
        time.sleep(0.0005)
    target.poll()
    elapsed = time.perf_counter() - start
    lost = target.stats()["clips_lost"] + target.stats()["clips_dropped"]
    if lost:
        raise RuntimeError(f"{lost} clips were lost or dropped: the timing would be wrong")
    return elapsed


def backends_table(model: str, clips, args) -> tuple[str, dict]:
    import ray

    from torchrl_vlm import DelayedScorer, ScoringService, TransformersScorer

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, _temp_dir=os.environ["TMPDIR"])
    tiny = functools.partial(TransformersScorer, model, num_frames=8, batch_size=args.batch_clips, device="cpu")
    kinds = {"tiny VLM (CPU)": tiny, f"tiny VLM + {1e3 * args.latency:.0f} ms a call (sleep)":
             functools.partial(DelayedScorer, tiny, args.latency)}
    rows, speeds = [], {}
    n = clips.batch_size[0]
    for kind, factory in kinds.items():
        common = dict(batch_clips=args.batch_clips, max_pending=4 * n, num_threads=1)
        targets = {
            "in-process": factory(),
            "process": ScoringService(factory, **common),
            "ray x1": ScoringService(factory, backend="ray", num_replicas=1, **common),
            "ray x2": ScoringService(factory, backend="ray", num_replicas=2, **common),
        }
        try:
            for target in targets.values():
                score_all(target, clips[: 2 * args.batch_clips], args.batch_clips)  # warm-up
            seconds = {b: [] for b in BACKENDS}
            for r in range(args.rounds):
                for b in (BACKENDS if r % 2 == 0 else BACKENDS[::-1]):
                    seconds[b].append(score_all(targets[b], clips, args.batch_clips))
                print(f"  {kind} round {r + 1}: " + ", ".join(f"{b} {n / seconds[b][-1]:.0f}" for b in BACKENDS),
                      flush=True)
        finally:
            for b, target in targets.items():
                if b != "in-process":
                    target.close()
        speed = {b: n / float(np.median(seconds[b])) for b in BACKENDS}
        speeds[kind] = speed
        for b in BACKENDS:
            per_round = ", ".join(f"{n / s:.0f}" for s in seconds[b])
            rows.append([kind, b, f"{speed[b]:.0f}", per_round, f"{1e3 / speed[b]:.2f}",
                         f"{speed[b] / speed['in-process']:.2f}",
                         f"{speed[b] / speed['ray x1']:.2f}" if b == "ray x2" else ""])
    ray.shutdown()
    header = ["scorer", "where", "clips/s (median)", "per round", "ms per clip", "× in-process", "× ray x1"]
    return markdown_table(header, rows), speeds


def http_path(model: str, server, label: str, clips, args, *, read_logprobs: bool) -> tuple[list[list], dict]:
    """Per clip, in sequence: in-process scoring, the request body, the round trip (and reading P(yes) off the
    reply's logprobs where the server returns them); then all clips at once with 8 requests in flight, against
    in-process batches of 8."""
    from torchrl_vlm import OpenAIScorer, TransformersScorer
    from torchrl_vlm.scoring.base import frame_indices

    n = min(args.requests, clips.batch_size[0])
    local = TransformersScorer(model, num_frames=8, batch_size=1, device="cpu")
    batched = TransformersScorer(model, num_frames=8, batch_size=8, device="cpu")
    with server as base_url:
        remote = OpenAIScorer(base_url, model, num_frames=8, max_concurrency=1, timeout_s=120.0, top_logprobs=20)
        parallel = OpenAIScorer(base_url, model, num_frames=8, max_concurrency=8, timeout_s=120.0, top_logprobs=20)
        frames, mask = clips.get("frames"), clips.get("mask")
        shown = [frames[b][frame_indices(mask[b], 8)] for b in range(n)]
        remote.complete(remote.request_body(shown[0]))  # warm-up: a server may load the model on first use
        local(clips[:1])
        times = {"in-process": [], "serialise": [], "http": [], "in-process x8": [], "http x8": []}
        sizes = []
        for r in range(args.rounds):
            for b in range(n):
                t0 = time.perf_counter()
                local(clips[b : b + 1])
                t1 = time.perf_counter()
                body = json.dumps(remote.request_body(shown[b]))
                t2 = time.perf_counter()
                reply = remote.complete(json.loads(body))
                if read_logprobs:
                    remote._score_reply(reply)
                t3 = time.perf_counter()
                times["in-process"].append(t1 - t0)
                times["serialise"].append(t2 - t1)
                times["http"].append(t3 - t2)
                sizes.append(len(body))
            t0 = time.perf_counter()
            batched(clips[:n])
            t1 = time.perf_counter()
            if read_logprobs:
                parallel(clips[:n])
            else:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(8) as pool:
                    list(pool.map(lambda f: parallel.complete(parallel.request_body(f)), shown))
            t2 = time.perf_counter()
            times["in-process x8"].append((t1 - t0) / n)
            times["http x8"].append((t2 - t1) / n)
            print(f"  {label} round {r + 1}: " + ", ".join(
                f"{k} {1e3 * np.median(v[-n:]):.1f} ms" for k, v in times.items()), flush=True)
        remote.close()
        parallel.close()
    med = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
    p95 = {k: 1e3 * float(np.percentile(v, 95)) for k, v in times.items()}
    rel = lambda k, base="in-process": f"{med[k] / med[base]:.2f}"  # noqa: E731
    trip = f"round trip to {label}" + (" and P(yes) from its logprobs" if read_logprobs else
                                      " (no logprobs: the reply is not scored)")
    rows = [
        [label, "TransformersScorer in-process, 1 clip a call", f"{med['in-process']:.1f}", f"{p95['in-process']:.1f}",
         "1.00"],
        [label, "OpenAIScorer request body (8 PNG frames, base64, JSON)", f"{med['serialise']:.1f}",
         f"{p95['serialise']:.1f}", rel("serialise")],
        [label, trip, f"{med['http']:.1f}", f"{p95['http']:.1f}", rel("http")],
        [label, "OpenAI path in all (body + round trip)", f"{med['serialise'] + med['http']:.1f}", "",
         f"{(med['serialise'] + med['http']) / med['in-process']:.2f}"],
        [label, "in-process, batches of 8 (per clip)", f"{med['in-process x8']:.1f}", "", rel("in-process x8")],
        [label, "OpenAI path, 8 requests in flight (per clip)", f"{med['http x8']:.1f}", "", rel("http x8")],
    ]
    return rows, {"request_kb": float(np.median(sizes)) / 1024, "requests": len(sizes)}


def openai_table(model: str, clips, args) -> tuple[str, dict]:
    from torchrl_vlm.loopback import transformers_server, vllm_server
    from torchrl_vlm.testing import make_tiny_vlm

    rows, info = http_path(model, transformers_server(model), "`transformers serve`", clips, args,
                           read_logprobs=False)
    vllm_python = Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"
    if vllm_python.is_file():
        # vLLM's CPU attention needs heads of 32: the same tiny model with 2 heads of 32, both sides.
        wide = str(make_tiny_vlm(Path(model).parent / f"{Path(model).name}-h32", seed=0, head_dim=32))
        more, _ = http_path(wide, vllm_server(wide, vllm_python), "vLLM (CPU)", clips, args, read_logprobs=True)
        rows += more
    else:
        print("  no .venv-vllm (make vllm): the vLLM rows are left out")
    table = markdown_table(["server", "per clip", "ms (median)", "ms (p95)", "× in-process, 1 clip a call"], rows)
    return table, info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=256, help="clips scored per round by each backend")
    parser.add_argument("--batch-clips", type=int, default=8, help="clips per submission and per scorer call")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (medians reported)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added per call in the second scorer")
    parser.add_argument("--requests", type=int, default=64, help="clips sent one by one over HTTP per round")
    parser.add_argument("--skip-openai", action="store_true", help="only the backends table")
    parser.add_argument("--no-record", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    for name in ("clips", "batch_clips", "rounds", "requests"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.latency > 0:
        parser.error(f"--latency must be > 0, got {args.latency}")
    if os.environ.get(IN_NETNS) != "1":
        return _rerun_in_own_network()

    torch.set_num_threads(1)  # as each service's worker (num_threads=1): the in-process baseline is not given more
    model = tiny_vlm_path()
    clips = minigrid_like_clips(args.clips, 32, 64)
    backends, speeds = backends_table(model, clips, args)
    parts = [
        f"Tiny offline Idefics3 (`torchrl_vlm.testing`), CPU, 1 torch thread per scorer; {args.clips} clips of 32 "
        f"steps at 64×64, 8 frames shown, submitted {args.batch_clips} at a time; {args.rounds} alternating "
        "rounds. Ray: a local cluster in its own network namespace (loopback only).",
        "",
        "### Backends",
        "",
        backends,
    ]
    if not args.skip_openai:
        openai, info = openai_table(model, clips, args)
        parts += [
            "",
            "### The OpenAI path against in-process scoring",
            "",
            f"{info['requests']} requests per server, one clip each, in sequence (max_concurrency 1), then the "
            f"same clips with 8 requests in flight against in-process batches of 8; a request body is "
            f"{info['request_kb']:.0f} KB. Both servers run on the same 2 cores as this process, so the server's "
            "own work is in the round trip.",
            "",
            openai,
        ]
    body = "\n".join(parts)
    print(body)
    if not args.no_record:
        record_results("Scoring backends", body)
        print("\nrecorded in benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
