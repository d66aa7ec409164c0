"""Where the time goes: py-spy samples a server process while a benchmark loads it, and the
collapsed stacks are summed into the functions that hold the most samples.

``with sampled(pid, out_path, seconds):`` around a load phase writes py-spy's collapsed stacks
(``--format raw``) to ``out_path``; :func:`top_functions` reads them back. Used by P1 and P2's
``--profile DIR``. py-spy needs ptrace rights (root, or kernel.yama.ptrace_scope=0).

py-spy counts wall-clock time, preempted time included. ``with cpu_sampled({name: pid}, dir):``
reads CPU time instead, from servers started with :func:`cpu_sampler_env` in their environment
(``bench/cpu_sampler/sitecustomize.py``); P7's ``--cpu-profile DIR``.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

SAMPLE_RATE_HZ = 200


@contextlib.contextmanager
def sampled(pid: int, out: Path, seconds: float) -> Iterator[None]:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--format", "raw", "--output",
                             str(out), "--rate", str(SAMPLE_RATE_HZ), "--duration",
                             str(int(seconds) + 1), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        try:
            proc.wait(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


CPU_SAMPLER = Path(__file__).parent / "cpu_sampler"


def cpu_sampler_env(out: Path) -> dict[str, str]:
    """What a server's environment needs to carry the CPU-time sampler (writing to ``out``)."""
    path = os.environ.get("PYTHONPATH", str(Path(__file__).parent.parent))
    return {"BENCH_CPU_PROFILE_DIR": str(out), "PYTHONPATH": f"{CPU_SAMPLER}{os.pathsep}{path}"}


@contextlib.contextmanager
def cpu_sampled(pids: Mapping[str, int], out: Path) -> Iterator[None]:
    """CPU-time samples of each process over the block, in ``out/<name>.raw``."""
    for pid in pids.values():
        os.kill(pid, signal.SIGUSR2)
    try:
        yield
    finally:
        for pid in pids.values():
            os.kill(pid, signal.SIGUSR2)
        for name, pid in pids.items():
            written = out / f"{pid}.txt"
            deadline = time.monotonic() + 10
            while not written.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            if written.exists():
                written.replace(out / f"{name}.raw")


def _frame_name(frame: str) -> str:
    # py-spy's raw frames look like "function (path/to/file.py:123)"; keep function + file.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    short = "/".join(where.split("/")[-2:])
    return f"{name} ({short})"


# Inclusive time is shown for this project's own functions: the event loop's frames hold
# every sample and say nothing.
PROJECT_PACKAGES = ("tidedesk/", "chatnode/", "routernode/", "controlplane/")


def top_functions(path: Path, n: int = 15) -> tuple[int, list[tuple[str, int]],
                                                    list[tuple[str, int]]]:
    """(total samples, top self-time frames, top inclusive frames of the project's own
    functions) from collapsed stacks."""
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        total += count
        if frames:
            self_time[frames[-1]] += count
        for name in set(frames):
            if any(f"({pkg}" in name for pkg in PROJECT_PACKAGES) and "cli.py" not in name:
                inclusive[name] += count
    return total, self_time.most_common(n), inclusive.most_common(n)


def report(path: Path, title: str, n: int = 15, cpu: bool = False) -> str:
    if not path.exists() or path.stat().st_size == 0:
        return f"  (no profile for {title}: is py-spy installed and allowed to ptrace?)"
    total, selfs, incl = top_functions(path, n)
    rate = ("of CPU time, one per kernel tick (idle excluded)" if cpu
            else f"at {SAMPLE_RATE_HZ} Hz (idle included)")
    lines = [f"  profile of {title}: {total} samples {rate}", "    self time:"]
    lines += [f"      {c / total:6.1%}  {name}" for name, c in selfs]
    lines.append("    inclusive, Tidedesk's own functions:")
    lines += [f"      {c / total:6.1%}  {name}" for name, c in incl]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(Path(sys.argv[1]), sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 15))
