"""Runs tests/ray_suite.py (ScoringService(backend="ray") on a real local Ray cluster) in a network
namespace of its own, so that Ray can only listen on, and talk to, loopback."""
import os
import shutil
import subprocess
import tempfile
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_the_ray_backend_in_its_own_network_namespace(tmp_path):
    # Ray's sockets live under its temp folder, and a Unix socket path is at most 107 bytes: a short one.
    short_tmp = tempfile.mkdtemp(prefix="rayt", dir="/tmp")
    env = {
        **os.environ,
        "TORCHRL_VLM_RAY_NETNS": "1",
        # Ray's worker processes import the test scorers (tests/_scorers.py) by name.
        "PYTHONPATH": os.pathsep.join([str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "HOME": str(tmp_path / "home"),
        "TMPDIR": short_tmp,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        # Ray runs its workers at niceness 15: on a busy machine (the other test process, a benchmark)
        # they would barely run. Tests want them at the priority of the test.
        "RAY_worker_niceness": "0",
        # Without it Ray probes an outside address (8.8.8.8:53) to find its own IP.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    (tmp_path / "home").mkdir()
    script = 'ip link set lo up && exec "$0" -m pytest -q -x -p no:cacheprovider -p no:xdist "$1"'
    try:
        proc = subprocess.run(
            ["unshare", "-rn", "bash", "-c", script, sys.executable, str(TESTS / "ray_suite.py")],
            cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=600,
        )
    finally:
        shutil.rmtree(short_tmp, ignore_errors=True)
    assert proc.returncode == 0, f"the Ray suite failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]
