"""A CPU-time sampler for the benchmarks' server processes (``bench/profile.py``,
``cpu_sampled``), loaded by Python at start-up when this folder is on ``PYTHONPATH`` and
``BENCH_CPU_PROFILE_DIR`` is set.

py-spy samples wall-clock time: on one pinned core, a process that another one preempted, often
right after its own loopback ``send`` woke that one, is sampled where it waits, so the sends look
expensive (issue 17). Here ``ITIMER_PROF`` fires on the process's own CPU time (user + system,
every tick of the kernel's clock, ~250 Hz here) and the signal handler records the main
thread's Python stack; SIGUSR2 starts sampling and, the second time, writes the collapsed stacks
(``a;b;c count``, as py-spy's raw format) to ``$BENCH_CPU_PROFILE_DIR/<pid>.txt``. Time in C
calls is charged to the Python frame that made them; other threads' time to wherever the main
thread is.
"""

import os

if os.environ.get("BENCH_CPU_PROFILE_DIR"):
    import collections
    import signal

    _samples: collections.Counter[str] = collections.Counter()
    _on = [False]

    def _sample(_sig, frame):  # type: ignore[no-untyped-def]
        if not _on[0]:
            return
        parts = []
        while frame is not None:
            code = frame.f_code
            parts.append(f"{code.co_name} ({code.co_filename}:{code.co_firstlineno})")
            frame = frame.f_back
        _samples[";".join(reversed(parts))] += 1

    def _toggle(_sig, _frame):  # type: ignore[no-untyped-def]
        if not _on[0]:
            _samples.clear()
            _on[0] = True
            return
        _on[0] = False
        path = os.path.join(os.environ["BENCH_CPU_PROFILE_DIR"], f"{os.getpid()}.txt")
        with open(path + ".part", "w", encoding="utf-8") as out:
            out.writelines(f"{stack} {n}\n" for stack, n in _samples.items())
        os.replace(path + ".part", path)

    signal.signal(signal.SIGPROF, _sample)
    signal.signal(signal.SIGUSR2, _toggle)
    signal.setitimer(signal.ITIMER_PROF, 0.001, 0.001)
