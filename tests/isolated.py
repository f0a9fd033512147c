"""Run code that needs process-wide state (a process group, torchrun) in a fresh process.

A process group is process-wide and its teardown can deadlock (gloo's run-loop thread waits for
the GIL that the thread deallocating DDP's Reducer holds), so no test opens one in the pytest
process itself: it runs here, in a new session of its own on loopback, with a timeout. On
timeout the whole process group of the child (torchrun's workers included) is killed, and the
child's own stack dump (``faulthandler``, armed a few seconds before the limit) is in the failure
message, so a hang fails with where it hung instead of freezing the suite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence

import pytest

# Every process-group script begins with this: a stack dump shortly before the parent's limit.
_PRELUDE = "import faulthandler, sys\nfaulthandler.dump_traceback_later({dump}, exit=True, file=sys.stderr)\n"


def run_isolated(
    argv: Sequence[str], *, timeout: float, env: dict[str, str] | None = None, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in a new session with ``timeout`` seconds; fail the test (with the output) on timeout.

    Unlike ``subprocess.run(timeout=...)``, grandchildren that still hold the output pipes (the
    workers of a torchrun that was killed) cannot keep the test waiting: the whole session is killed.
    """
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_session(proc)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(argv[:4])} ... did not finish in {timeout:.0f} s and was killed\n--- stdout\n{out}\n--- stderr\n{err}")
    finally:
        if proc.poll() is None:
            _kill_session(proc)
    # A worker that outlived its parent (a torchrun that exited early) must not linger either.
    _kill_session(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_python(code: str, *, timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` in a fresh interpreter (see :func:`run_isolated`), with a stack dump before the limit."""
    prelude = _PRELUDE.format(dump=max(1.0, timeout - 10.0))
    return run_isolated([sys.executable, "-c", prelude + code], timeout=timeout, env=env)


def _kill_session(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
