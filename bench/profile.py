"""Where the time goes: py-spy samples a server process while a benchmark loads it, and the
collapsed stacks are summed into the functions that hold the most samples.

``with sampled(pid, out_path, seconds):`` around a load phase writes py-spy's collapsed stacks
(``--format raw``) to ``out_path``; :func:`top_functions` reads them back. Used by P1 and P2's
``--profile DIR``. py-spy needs ptrace rights (root, or kernel.yama.ptrace_scope=0).
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
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


def report(path: Path, title: str, n: int = 15) -> str:
    if not path.exists() or path.stat().st_size == 0:
        return f"  (no profile for {title}: is py-spy installed and allowed to ptrace?)"
    total, selfs, incl = top_functions(path, n)
    lines = [f"  profile of {title}: {total} samples at {SAMPLE_RATE_HZ} Hz (idle included)",
             "    self time:"]
    lines += [f"      {c / total:6.1%}  {name}" for name, c in selfs]
    lines.append("    inclusive, Tidedesk's own functions:")
    lines += [f"      {c / total:6.1%}  {name}" for name, c in incl]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(Path(sys.argv[1]), sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 15))
