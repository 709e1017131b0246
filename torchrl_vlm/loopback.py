"""Servers on loopback only, for tests and benchmarks: ``transformers serve``, and Ray in its own network.

Real components the scoring tests and benchmarks need, set up so that nothing
listens on, or talks to, any address but 127.0.0.1:

- :func:`transformers_server` starts ``transformers serve MODEL`` (an OpenAI-compatible
  server, which ignores logprobs) on a free loopback port and stops it afterwards;
  :func:`vllm_server` does the same with vLLM's CPU build, which returns them;
- :func:`run_in_own_network` runs a command in a network namespace of its own with only
  ``lo`` up (``unshare -rn``), with :func:`ray_env`'s settings: Ray binds to the machine's
  outward interface otherwise, probes an outside address to find its IP, reports usage
  statistics and writes under ``HOME``.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

__all__ = ["free_port", "ray_env", "run_in_own_network", "transformers_server", "vllm_server"]


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (closed again before returning)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _transformers_cli() -> str | None:
    local = Path(sys.executable).parent / "transformers"
    return str(local) if local.exists() else shutil.which("transformers")


@contextlib.contextmanager
def _server(argv: Sequence[str], base_url: str, name: str, *, timeout_s: float, log_path: Path,
            env: Mapping[str, str]) -> Iterator[str]:
    """Starts ``argv`` (an OpenAI-compatible server), waits for ``{base_url}/models``, yields ``base_url``, stops it."""
    import httpx

    with open(log_path, "wb") as log:
        proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, env=dict(env),
                                start_new_session=True)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                try:
                    if httpx.get(f"{base_url}/models", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not answer within {timeout_s:g} s:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
            yield base_url
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=15)


def _log_path(log_path, prefix: str) -> Path:
    return Path(log_path) if log_path else Path(tempfile.mkdtemp(prefix=prefix)) / "serve.log"


def transformers_server(model: str | os.PathLike, *, timeout_s: float = 120.0,
                        log_path: str | os.PathLike | None = None):
    """``transformers serve MODEL`` on a free loopback port (CPU, offline): a context manager yielding its
    base URL (``.../v1``).

    Raises ``FileNotFoundError`` if the ``transformers`` command is not installed (the
    ``transformers[serving]`` extra), and ``RuntimeError`` with the end of the server's log
    if it exits or does not answer ``/v1/models`` within ``timeout_s``. The server's whole
    process group is stopped on exit. It ignores ``logprobs``.
    """
    cli = _transformers_cli()
    if cli is None:
        raise FileNotFoundError("the `transformers` command (transformers serve) is not installed; "
                                "pip install 'transformers[serving]'")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    argv = [cli, "serve", str(model), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    return _server(argv, f"http://127.0.0.1:{port}/v1", "`transformers serve`", timeout_s=timeout_s,
                   log_path=_log_path(log_path, "serve"), env=env)


def vllm_server(model: str | os.PathLike, python: str | os.PathLike, *, max_images: int = 8,
                max_logprobs: int = 1000, timeout_s: float = 300.0, log_path: str | os.PathLike | None = None):
    """vLLM's OpenAI-compatible server for ``model`` on a free loopback port, run by ``python`` (an
    environment with vLLM's CPU build, e.g. ``make vllm``'s ``.venv-vllm/bin/python``): a context
    manager yielding its base URL (``.../v1``).

    Float32, eager mode, up to ``max_images`` images a request and ``max_logprobs`` listed
    alternatives (so a test can ask for the whole vocabulary). vLLM's CPU attention needs a head
    size of at least 32 (``make_tiny_vlm(..., head_dim=32)``). Raises like :func:`transformers_server`.
    """
    if not Path(python).is_file():
        raise FileNotFoundError(f"no Python with vLLM at {python} (build it with `make vllm`)")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
           "VLLM_CPU_KVCACHE_SPACE": "1"}
    argv = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", "127.0.0.1",
            "--port", str(port), "--enforce-eager", "--dtype", "float32", "--max-model-len", "2048",
            "--limit-mm-per-prompt", f'{{"image": {max_images}}}', "--max-logprobs", str(max_logprobs)]
    return _server(argv, f"http://127.0.0.1:{port}/v1", "vLLM", timeout_s=timeout_s,
                   log_path=_log_path(log_path, "vllm"), env=env)


def ray_env(home: str | os.PathLike, tmpdir: str | os.PathLike) -> dict[str, str]:
    """Environment variables for a local Ray cluster that stays on this machine and out of the way.

    ``tmpdir`` must be short: Ray's Unix sockets live under it, and a socket path is at most
    107 bytes.
    """
    return {
        "HOME": str(home),
        "TMPDIR": str(tmpdir),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        # Ray runs its workers at niceness 15: on a busy machine they would barely run.
        "RAY_worker_niceness": "0",
        # Without it Ray probes an outside address (8.8.8.8:53) to find its own IP.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }


def run_in_own_network(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                       cwd: str | os.PathLike | None = None, timeout: float | None = None,
                       capture_output: bool = True) -> subprocess.CompletedProcess:
    """Runs ``argv`` in a new user and network namespace where only loopback exists (``unshare -rn``).

    Raises ``FileNotFoundError`` if ``unshare`` is missing. The command sees ``env`` (default:
    this process's environment) and can reach nothing but 127.0.0.1.
    """
    if shutil.which("unshare") is None:
        raise FileNotFoundError("`unshare` (util-linux) is needed to run Ray on loopback only")
    script = 'ip link set lo up && exec "$@"'
    return subprocess.run(["unshare", "-rn", "bash", "-c", script, "bash", *argv], env=dict(env or os.environ),
                          cwd=cwd, timeout=timeout, capture_output=capture_output, text=True)
