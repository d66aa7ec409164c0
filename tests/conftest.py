"""The conftest of the ``tests`` package, shared by every test folder.

Its first job is where it stands: pytest imports it as ``tests.conftest`` and so puts the
repository root at the front of sys.path before any folder's own conftest runs. That is what
lets tests/controlplane (a folder of plain modules, no ``__init__.py``) import the shared
helpers from ``tests.support`` and this tree's code rather than another checkout's, however
pytest is started. It sits in tests/ rather than at the root because testpaths is tests/, and
a root conftest.py would be a second top-level ``conftest`` module beside
tests/controlplane/conftest.py.

The helpers themselves are plain modules in tests/support/ (see its ``__init__``), imported by
name: most are used outside fixtures (in threads, subprocess set-ups, bench/), and an import
says where a helper comes from where a fixture would not.
"""

import importlib.util
import os

import pytest


@pytest.fixture(autouse=True)
def _event_loop_from_env() -> object:
    """``TIDEDESK_EVENT_LOOP=uvloop`` (or ``asyncio``) runs the in-process tests' ``asyncio.run``
    on that loop too; the servers they start as subprocesses get it from
    tests/support/processes.py ``settings_env``. Unset: asyncio's default, as always."""
    choice = os.environ.get("TIDEDESK_EVENT_LOOP")
    if choice == "auto":
        choice = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    if choice != "uvloop":
        yield
        return
    import asyncio

    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(None)
