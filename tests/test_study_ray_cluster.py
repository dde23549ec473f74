"""A study on a two-node Ray cluster started on this machine.

The test starts a head node and a worker node with `ray start` (both on
127.0.0.1, one CPU each, in a fresh temporary directory), runs a study
on them through `RayExecutor` and through the CLI (`--executor ray
--ray-address`), and always stops both nodes: each `ray start --block`
runs in a session of its own, whose process group (the Ray processes it
started) the test signals by its leader's pid. Nothing talks to another
host. Run once, under JAX (it starts its own processes).
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import keras
import pytest

from keras_dreg.study import runner
from keras_dreg.study.config import RunConfig
from keras_dreg.study.config import StudyConfig
from keras_dreg.study.store import ResultStore
from keras_dreg.study.store import RunResult
from tests.conftest import TINY_GRID_ARGS
from tests.conftest import fake_result

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="starts its own processes; run once, under jax",
)
REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
STARTUP_S = 180
STOP_S = 60
LOCAL_ONLY = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
"""No usage report leaves the machine; the nodes take the driver's
(absent) token, as a private cluster may."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the node's process group (our own session), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=STOP_S)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def local_cluster(num_nodes: int = 2) -> Iterator[str]:
    """Starts `num_nodes` one-CPU Ray nodes here; yields the address."""
    temp = tempfile.mkdtemp(prefix="krd", dir="/tmp")  # short socket paths
    address = f"127.0.0.1:{_free_port()}"
    env = {
        **os.environ,
        **LOCAL_ONLY,
        "PYTHONPATH": os.pathsep.join(
            [str(REPO), os.environ.get("PYTHONPATH", "")]
        ),
    }
    common = [
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        "--disable-usage-stats",
        "--block",
    ]
    head = [
        RAY,
        "start",
        "--head",
        f"--port={address.split(':')[1]}",
        "--include-dashboard=false",
        f"--temp-dir={temp}",
        *common,
    ]
    worker = [RAY, "start", f"--address={address}", *common]
    nodes = []
    try:
        for command in [head] + [worker] * (num_nodes - 1):
            log = open(Path(temp) / f"node{len(nodes)}.log", "wb")
            nodes.append(
                subprocess.Popen(
                    command,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            log.close()
            if command is head:
                ray.init(address=address, log_to_driver=False)
        deadline = time.monotonic() + STARTUP_S
        while sum(n["Alive"] for n in ray.nodes()) < num_nodes:
            assert all(n.poll() is None for n in nodes), "a node exited"
            assert time.monotonic() < deadline, "the nodes did not start"
            time.sleep(1)
        yield address
    finally:
        ray.shutdown()
        for node in reversed(nodes):
            _stop(node)
        shutil.rmtree(temp, ignore_errors=True)


def node_train(config: RunConfig) -> RunResult:
    """A stand-in for `train_run` that records the Ray node it ran on."""
    time.sleep(2.0)  # long enough that both one-CPU nodes are busy
    return fake_result(
        config, wall_time=2.0, node=ray.get_runtime_context().get_node_id()
    )


TINY = dict(
    activations=("gelu",),
    regularizers=("none", "dreg"),
    datasets=("breast_cancer",),
    train_fractions=(0.25,),
    epochs=1,
    batch_size=32,
    backend="jax",
    executor="ray",
)


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_study_on_a_two_node_ray_cluster(tmp_path, monkeypatch):
    for name, value in LOCAL_ONLY.items():
        monkeypatch.setenv(name, value)
    with local_cluster(2) as address:
        nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        study = StudyConfig(**TINY, seeds=3, ray_address=address)
        progress = runner.run_study(
            study, tmp_path / "fake.sqlite", train_fn=node_train, verbose=0
        )
        assert (progress.finished, progress.failed) == (6, [])
        with ResultStore(tmp_path / "fake.sqlite") as store:
            used = {r["versions"]["node"] for r in store.rows()}
        assert used == nodes and len(nodes) == 2  # both nodes got runs

        db = tmp_path / "real.sqlite"
        command = [
            sys.executable,
            "-m",
            "keras_dreg.cli",
            "study",
            "run",
            "--executor",
            "ray",
            "--ray-address",
            address,
            "--backend",
            "jax",
            *TINY_GRID_ARGS,
            "--epochs",
            "1",
            "--db",
            str(db),
            "--quiet",
        ]
        done = subprocess.run(
            command,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "KERAS_BACKEND": "jax"},
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "2 runs finished, 0 were already stored" in done.stdout
    with ResultStore(db) as store:
        rows = store.rows()
    assert sorted(r["regularizer"] for r in rows) == ["dreg", "none"]
    assert all(r["backend"] == "jax" for r in rows)
