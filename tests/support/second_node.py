"""A second Swarm node on this machine: a dockerd in a network namespace of its own, joined to the
local swarm (tests/support/swarm.py's dockerd, the manager) as a worker.

What it is made of, all created here and removed by ``stop()`` (also after a failure, and at the
next ``start()`` if a run was killed):

- a network namespace ``td2n-<tag>`` with a veth pair to the host, ``10.219.19.1/30`` on the
  host's end and ``10.219.19.2/30`` inside (the node's advertise address);
- a dockerd running in that namespace (and a UTS namespace: its own hostname, so ``docker node
  ls`` tells the nodes apart), with its own data root, exec root, socket, pid file, cgroup parent
  and the containerd it starts itself; its iptables rules live in the namespace;
- the images it needs, copied from the manager (``docker save | docker load``: no registry);
- its swarm membership (``docker swarm join`` with the worker token; ``swarm leave`` and
  ``node rm`` at the end).

The manager of a test swarm advertises ``127.0.0.1`` (``ensure_swarm``), which inside another
namespace is that namespace's own loopback. Rather than re-creating a swarm other tests share, the
namespace routes the manager's loopback address over the veth (a policy rule ahead of the local
table, ``route_localnet`` on its end), and the host sends to the node from that address (a /32
route with ``src``, ``route_localnet`` on the host's end only). Swarm's control traffic (2377/tcp),
gossip (7946) and the overlay's VXLAN (4789/udp, whose receiver drops packets whose outer source
is not the address it knows the sender by) then work as between two hosts. A manager that
advertises a routable address of this host needs only a route to it. All host-side changes are
on the veth and vanish with it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.support.swarm import DOCKERD_START_S, docker
from tests.support.waiting import wait_until

log = logging.getLogger(__name__)

PREFIX = "td2n-"
HOST_IP, NODE_IP = "10.219.19.1", "10.219.19.2"
NET = "10.219.19.0/30"
DATA_ROOT_BASE = Path("/var/lib")  # overlay2 needs a real file system, not tmpfs
RUN_BASE = Path("/run")
RULE_TABLE = "219"
JOIN_S = 60
LOAD_TIMEOUT_S = 300


def run(*cmd: str, check: bool = True, timeout: float = 30, stdin: str | None = None) -> str:
    done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                          check=False, input=stdin)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): "
                           f"{done.stderr.strip()[-2000:]}")
    return done.stdout.strip()


class SecondNode:
    """``start()`` builds and joins the node; ``stop()`` undoes everything it did, best effort
    step by step (each step bounded), and is safe to call twice or after a failed start."""

    def __init__(self, workdir: Path, tag: str = "19n") -> None:
        self.tag = tag
        self.name = PREFIX + tag                      # netns, hostname, cgroup parent
        self.host_if, self.node_if = f"{self.name}-h", f"{self.name}-n"
        self.data_root = DATA_ROOT_BASE / f"tidedesk-{self.name}"
        self.exec_root = RUN_BASE / self.name
        self.socket = self.exec_root / "docker.sock"
        self.pidfile = self.exec_root / "dockerd.pid"
        self.log_path = workdir / f"dockerd-{self.name}.log"
        self.node_id = ""
        self.manager_addr = ""

    # --- the node's docker CLI ----------------------------------------------------------------
    def docker(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        return run("docker", "-H", f"unix://{self.socket}", *args, check=check, timeout=timeout)

    def answers(self) -> bool:
        try:
            return subprocess.run(["docker", "-H", f"unix://{self.socket}", "info"],
                                  capture_output=True, timeout=20, check=False).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def in_ns(self, *cmd: str, check: bool = True) -> str:
        return run("ip", "netns", "exec", self.name, *cmd, check=check)

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self, images: list[str]) -> None:
        for tool in ("ip", "nsenter", "unshare", "dockerd"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is not on PATH (iproute2, util-linux, docker.io)")
        self.stop()  # leftovers of a killed run
        for step, args in ((self._network, ()), (self._dockerd, ()), (self._load, (images,)),
                           (self._join, ())):
            started = time.monotonic()
            step(*args)
            log.warning("second node: %s in %.1fs", step.__name__.strip("_"),
                        time.monotonic() - started)

    def _network(self) -> None:
        for route in run("ip", "-4", "route", "show", "to", "match", NET).splitlines():
            if route.split()[0] != "default":
                raise RuntimeError(f"{NET} is routed here already ({route}); the second node "
                                   "needs it")
        run("ip", "netns", "add", self.name)
        run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.node_if,
            "netns", self.name)
        run("ip", "addr", "add", f"{HOST_IP}/30", "dev", self.host_if)
        run("ip", "link", "set", self.host_if, "up")
        run("ip", "-n", self.name, "addr", "add", f"{NODE_IP}/30", "dev", self.node_if)
        run("ip", "-n", self.name, "link", "set", self.node_if, "up")
        run("ip", "-n", self.name, "link", "set", "lo", "up")
        remotes = docker("info", "--format",
                         "{{range .Swarm.RemoteManagers}}{{.Addr}} {{end}}").split()
        if not remotes:
            raise RuntimeError("the local swarm lists no manager address")
        self.manager_addr = remotes[0]
        manager_ip = self.manager_addr.rsplit(":", 1)[0]
        if ipaddress.ip_address(manager_ip).is_loopback:
            # Inside: the manager's loopback address goes over the veth, ahead of the local table.
            self.in_ns("sysctl", "-qw", f"net.ipv4.conf.{self.node_if}.route_localnet=1")
            run("ip", "-n", self.name, "route", "add", f"{manager_ip}/32", "via", HOST_IP, "dev",
                self.node_if, "src", NODE_IP, "table", RULE_TABLE)
            run("ip", "-n", self.name, "rule", "add", "to", f"{manager_ip}/32", "lookup",
                RULE_TABLE, "pref", "100")
            run("ip", "-n", self.name, "rule", "add", "lookup", "local", "pref", "200")
            run("ip", "-n", self.name, "rule", "del", "pref", "0")
            # Outside: to the node, from the address the node knows the manager by.
            run("sysctl", "-qw", f"net.ipv4.conf.{self.host_if}.route_localnet=1")
            run("ip", "route", "add", f"{NODE_IP}/32", "dev", self.host_if, "src", manager_ip)
        else:
            run("ip", "-n", self.name, "route", "add", f"{manager_ip}/32", "via", HOST_IP)

    def _dockerd(self) -> None:
        self.exec_root.mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(parents=True, exist_ok=True)
        cmd = ["nsenter", f"--net=/run/netns/{self.name}", "unshare", "--uts", "sh", "-c",
               f'hostname {self.name} && exec "$@"', "sh",
               "dockerd", "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
               "--pidfile", str(self.pidfile), "-H", f"unix://{self.socket}",
               "--cgroup-parent", self.name]
        with self.log_path.open("wb") as log:
            subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        try:
            wait_until(f"the dockerd of {self.name} to answer", self.answers, DOCKERD_START_S,
                       every=1)
        except AssertionError:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the second node's dockerd did not start:\n{tail}") from None

    def _load(self, images: list[str]) -> None:
        save = subprocess.Popen(["docker", "save", *images], stdout=subprocess.PIPE)
        try:
            load = subprocess.run(["docker", "-H", f"unix://{self.socket}", "load", "-q"],
                                  stdin=save.stdout, capture_output=True, text=True,
                                  timeout=LOAD_TIMEOUT_S, check=False)
        finally:
            if save.stdout:
                save.stdout.close()
            save.wait(timeout=30)
        if save.returncode != 0 or load.returncode != 0:
            raise RuntimeError(f"copying the images to {self.name} failed: {load.stderr[-2000:]}")

    def _join(self) -> None:
        token = docker("swarm", "join-token", "-q", "worker")
        self.docker("swarm", "join", "--token", token, "--advertise-addr", NODE_IP,
                    self.manager_addr, timeout=JOIN_S)
        self.node_id = self.docker("info", "--format", "{{.Swarm.NodeID}}")
        wait_until(f"{self.name} to be ready in the swarm",
                   lambda: docker("node", "inspect", self.node_id, "--format",
                                  "{{.Status.State}}") == "ready", JOIN_S, every=1)

    def stop(self) -> None:
        """Leave the swarm, stop the dockerd, remove the namespace and the files. Every step
        runs even if one before it failed; the first failure is raised at the end."""
        errors: list[Exception] = []
        for step in (self._leave, self._forget_nodes, self._stop_dockerd, self._unmount,
                     self._remove_network, self._remove_files):
            try:
                step()
            except Exception as exc:  # clean up the rest, then report the first
                log.warning("second node: %s failed: %s", step.__name__.strip("_"), exc)
                errors.append(exc)
        if errors:
            raise errors[0]

    def _leave(self) -> None:
        if self.socket.exists() and self.answers():
            self.docker("swarm", "leave", "--force", check=False, timeout=30)

    def _unmount(self) -> None:
        for mount in self._mounts():  # a dockerd killed hard leaves its mounts in ours
            run("umount", "-l", mount, check=False)

    def _remove_network(self) -> None:
        if self.name in run("ip", "netns", "list", check=False).split():
            run("ip", "netns", "del", self.name, check=False)
        if Path(f"/sys/class/net/{self.host_if}").exists():  # goes with the namespace, normally
            run("ip", "link", "del", self.host_if, check=False)
        wait_until(f"{self.host_if} to go",
                   lambda: not Path(f"/sys/class/net/{self.host_if}").exists(), 30, every=0.5)

    def _remove_files(self) -> None:
        shutil.rmtree(self.exec_root, ignore_errors=True)
        shutil.rmtree(self.data_root, ignore_errors=True)

    def _forget_nodes(self) -> None:
        """``docker node rm`` this node (and any of a killed run: same hostname) on the
        manager, once it is down."""
        out = docker("node", "ls", "--format", "{{.ID}} {{.Hostname}}", check=False)
        ids = {i for i, _, host in (line.partition(" ") for line in out.splitlines())
               if host == self.name}
        ids.discard("")
        if self.node_id:
            ids.add(self.node_id)
        for node in ids:
            def down(n: str = node) -> bool:
                state = docker("node", "inspect", n, "--format", "{{.Status.State}}",
                               check=False)
                return state in ("down", "")

            with contextlib.suppress(AssertionError):
                wait_until(f"node {node} to be down", down, 30, every=1)
            docker("node", "rm", "--force", node, check=False)

    def _stop_dockerd(self) -> None:
        pid = self._pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.5)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        # Its containerd and shims: anything still holding the exec root.
        for proc in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError):
                if str(self.exec_root) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    os.kill(int(proc.name), signal.SIGKILL)

    def _pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            if "dockerd" in cmdline and str(self.exec_root) in cmdline:
                return pid
        return None

    def _mounts(self) -> list[str]:
        roots = (str(self.data_root), str(self.exec_root))
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        return sorted((m for m in mounts if m.startswith(roots)), key=len, reverse=True)
