"""The docker CLI and this machine's single-node Swarm, for the tests that deploy to it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support.waiting import wait_until

# dockerd started from nothing (storage driver, iptables, swarm raft) answers in 5-30 s.
DOCKERD_START_S = 90


def docker(*args: str, check: bool = True, timeout: float = 60,
           stdin: str | None = None) -> str:
    """``docker *args`` (with ``stdin`` as its standard input); its stdout without surrounding
    white space. A non-zero exit raises RuntimeError with the tail of stderr, unless ``check``
    is false."""
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          check=False, input=stdin)
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout.strip()


def docker_answers() -> bool:
    """Whether dockerd answers ``docker info``."""
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20,
                              check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_swarm(workdir: Path) -> None:
    """dockerd running (started here if needed, and left running: other tests share it) and
    this node a Swarm manager. ``workdir`` receives dockerd's log."""
    if shutil.which("docker") is None or shutil.which("dockerd") is None:
        raise RuntimeError("docker.io is not installed (scripts/system-deps.sh installs it)")
    if not docker_answers():
        log_path = workdir / "dockerd.log"
        with log_path.open("wb") as log:
            subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        try:
            wait_until("dockerd to answer", docker_answers, DOCKERD_START_S, every=1)
        except AssertionError:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"dockerd did not start:\n{tail}") from None
    state = docker("info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}")
    if state.split()[0] != "active":
        docker("swarm", "init", "--advertise-addr", "127.0.0.1")
    elif state.split()[1] != "true":
        raise RuntimeError("this node is in a swarm but not a manager; cannot deploy stacks")


def remove_stack(stack: str) -> None:
    """Remove the stack, its swarm/local-ports.sh forwarders and its volumes, and wait until its
    containers and network are gone, so the next deploy starts from nothing (RabbitMQ and
    MariaDB keep the first password they were given in their data). Nothing else is touched."""
    label = f"label=com.docker.stack.namespace={stack}"
    for service in ("controlplane", "prometheus", "alertmanager", "grafana"):
        docker("rm", "-f", f"{stack}-local-{service}", check=False)
    if stack in docker("stack", "ls", "--format", "{{.Name}}", check=False).split():
        docker("stack", "rm", stack, check=False)
    wait_until("the stack's containers to stop",
               lambda: not docker("ps", "-q", "--filter", label).split(), 90, every=1)
    leftovers = docker("ps", "-aq", "--filter", label).split()  # exited tasks of this stack
    if leftovers:
        docker("rm", "-f", *leftovers, check=False)
    wait_until(
        "the stack's network to go",
        lambda: stack + "_tidedesk" not in docker("network", "ls", "--format", "{{.Name}}"),
        60, every=1,
    )
    volumes = docker("volume", "ls", "-q", "--filter", label).split()
    if volumes:
        docker("volume", "rm", *volumes, check=False)
