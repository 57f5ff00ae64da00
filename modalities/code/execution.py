"""Run untrusted generated code: one fresh subprocess per program, never in the foundry process.

What is enforced (POSIX; ``resource.setrlimit`` in the child before ``exec``):

- a separate interpreter, ``python -I`` (isolated: no user site-packages, no PYTHON* variables,
  the script's folder not on sys.path), started in a fresh temporary directory that is deleted
  afterwards, with stdin closed and a minimal environment (no proxy variables, no HOME);
- a wall-clock timeout: the child is its own session (process group) and the whole group gets
  SIGKILL when time is up, so children it forked die with it;
- RLIMIT_CPU (CPU seconds), RLIMIT_AS (address space, default 1 GiB), RLIMIT_FSIZE (largest file
  it may write, stdout/stderr included: they go to files, not pipes), RLIMIT_CORE 0;
- before the program runs, a guard makes ``socket.socket`` / ``socket.create_connection`` raise
  and removes the proxy settings: code that opens a connection fails.

What is NOT enforced: this is not a security sandbox. Without root there is no network namespace or
firewall, so code that re-imports ``_socket`` or runs a subprocess can still reach the network;
the child can read any file the user can, and write outside its temporary directory; a process
it starts in a new session of its own (``setsid``) outlives the group kill. Run
untrusted completions (models trained on the internet) inside a container or VM with no network
if that matters.

A program passes when it exits with status 0 *and* prints a per-run random marker after its last
statement: a completion that calls ``os._exit(0)`` or ``sys.exit(0)`` early does not pass. A hang, a
crash (signal, segfault), a memory error or a failing assertion is a failure with its reason.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TIMEOUT = 10.0  # seconds of wall clock per program
DEFAULT_MEMORY = 1 << 30  # bytes of address space
MAX_OUTPUT = 1 << 20  # bytes of stdout/stderr a program may write
PROXY_VARIABLES = ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy")

GUARD = """\
import socket as _s
def _no_network(*args, **kwargs):
    raise OSError("network access is disabled while evaluating generated code")
_s.socket = _no_network
_s.create_connection = _no_network
del _s, _no_network
"""


@dataclass(frozen=True)
class Limits:
    timeout: float = DEFAULT_TIMEOUT
    memory: int = DEFAULT_MEMORY
    max_output: int = MAX_OUTPUT


@dataclass(frozen=True)
class Outcome:
    passed: bool
    result: str  # "passed", "timed out", "failed: AssertionError", "crashed: signal 11 (SIGSEGV)", …


def _limit_child(limits: Limits):
    """The child's preexec_fn: resource limits set after fork, before exec."""
    import resource

    cpu = max(1, int(limits.timeout + 1))

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory, limits.memory))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.max_output, limits.max_output))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _environment() -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
    return {k: v for k, v in env.items() if k.lower() not in PROXY_VARIABLES}


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        data = path.read_bytes()[-limit:]
    except OSError:
        return ""
    return data.decode("utf-8", "replace")


def _failure(stderr: str) -> str:
    """The last line of a traceback ("AssertionError", "NameError: name 'x' is not defined")."""
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return f"failed: {lines[-1].strip()[:200]}" if lines else "failed"


def run_program(source: str, limits: Limits = Limits()) -> Outcome:
    """Run ``source`` (a complete Python program) under ``limits``; never raises for what the
    program does."""
    marker = f"__foundry_passed_{secrets.token_hex(8)}__"
    program = GUARD + source + f"\n\nprint({marker!r})\n"
    with tempfile.TemporaryDirectory(prefix="foundry-exec-") as tmp:
        work = Path(tmp)
        (work / "program.py").write_text(program, encoding="utf-8")
        out_path, err_path = work / "stdout.txt", work / "stderr.txt"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "program.py"], cwd=work, env=_environment(), stdin=subprocess.DEVNULL,
                    stdout=out, stderr=err, preexec_fn=_limit_child(limits), start_new_session=True,
                )
            except OSError as exc:
                return Outcome(False, f"failed: could not start the interpreter ({exc})")
            try:
                code = proc.wait(timeout=limits.timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return Outcome(False, "timed out")
            finally:
                _kill_group(proc)  # whatever it forked goes too
        stdout, stderr = _tail(out_path), _tail(err_path)
    if code == 0 and marker in stdout:
        return Outcome(True, "passed")
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown"
        if name == "SIGXCPU":
            return Outcome(False, "timed out (CPU limit)")
        return Outcome(False, f"crashed: signal {-code} ({name})")
    if code == 0:
        return Outcome(False, "failed: exited before the tests finished")
    if "MemoryError" in stderr:
        return Outcome(False, "failed: MemoryError (memory limit)")
    return _failure_outcome(stderr, code)


def _failure_outcome(stderr: str, code: int) -> Outcome:
    reason = _failure(stderr)
    return Outcome(False, reason if reason != "failed" else f"failed: exit status {code}")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
