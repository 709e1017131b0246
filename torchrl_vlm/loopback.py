"""Servers on loopback only, for tests and benchmarks: ``transformers serve``, and Ray in its own network.

Two real components the scoring tests and benchmarks need, set up so that nothing
listens on, or talks to, any address but 127.0.0.1:

- :func:`transformers_server` starts ``transformers serve MODEL`` (an OpenAI-compatible
  server) on a free loopback port and stops it afterwards;
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

__all__ = ["free_port", "ray_env", "run_in_own_network", "transformers_server"]


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (closed again before returning)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _transformers_cli() -> str | None:
    local = Path(sys.executable).parent / "transformers"
    return str(local) if local.exists() else shutil.which("transformers")


@contextlib.contextmanager
def transformers_server(model: str | os.PathLike, *, timeout_s: float = 120.0,
                        log_path: str | os.PathLike | None = None) -> Iterator[str]:
    """``transformers serve MODEL`` on a free loopback port (CPU, offline); yields its base URL (``.../v1``).

    Raises ``FileNotFoundError`` if the ``transformers`` command is not installed (the
    ``transformers[serving]`` extra), and ``RuntimeError`` with the end of the server's log
    if it exits or does not answer ``/v1/models`` within ``timeout_s``. The server's whole
    process group is stopped on exit.
    """
    import httpx

    cli = _transformers_cli()
    if cli is None:
        raise FileNotFoundError("the `transformers` command (transformers serve) is not installed; "
                                "pip install 'transformers[serving]'")
    port = free_port()
    log_path = Path(log_path) if log_path else Path(tempfile.mkdtemp(prefix="serve")) / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [cli, "serve", str(model), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        try:
            base_url = f"http://127.0.0.1:{port}/v1"
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"`transformers serve` exited with {proc.returncode}:\n"
                                       f"{log_path.read_text()[-3000:]}")
                try:
                    if httpx.get(f"{base_url}/models", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"`transformers serve` did not answer within {timeout_s:g} s:\n"
                                       f"{log_path.read_text()[-3000:]}")
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
