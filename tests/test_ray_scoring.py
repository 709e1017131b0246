"""Runs tests/ray_suite.py (ScoringService(backend="ray") on a real local Ray cluster) in a network
namespace of its own, so that Ray can only listen on, and talk to, loopback."""
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from torchrl_vlm.loopback import ray_env, run_in_own_network

TESTS = Path(__file__).resolve().parent


@pytest.mark.slow  # a Ray cluster up, replicas killed at random for 8 s and more: minutes on 2 cores
def test_the_ray_backend_in_its_own_network_namespace(tmp_path):
    # Ray's sockets live under its temp folder, and a Unix socket path is at most 107 bytes: a short one.
    short_tmp = tempfile.mkdtemp(prefix="rayt", dir="/tmp")
    (tmp_path / "home").mkdir()
    env = {
        **os.environ,
        **ray_env(tmp_path / "home", short_tmp),
        "TORCHRL_VLM_RAY_NETNS": "1",
        # Ray's worker processes import the test scorers (tests/_scorers.py) by name.
        "PYTHONPATH": os.pathsep.join([str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    try:
        proc = run_in_own_network(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "no:xdist",
             str(TESTS / "ray_suite.py")],
            env=env, cwd=TESTS.parent, timeout=600,
        )
    finally:
        shutil.rmtree(short_tmp, ignore_errors=True)
    assert proc.returncode == 0, f"the Ray suite failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]
