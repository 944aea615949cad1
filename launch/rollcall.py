"""A roll call of a multi-process job's processes, before JAX's own start-up.

JAX's coordinator cannot tell a user why a job does not start: two processes given the same
PRORANK_PROCESS_ID end one of them at once with a C++ abort ("ALREADY_EXISTS: Aborted connect
attempt as there is a request from a newer incarnation") and leave the others waiting until
the init timeout, then "DEADLINE_EXCEEDED ... RegisterTask"; a missing process reads the
same. So before jax.distributed.initialize, process 0 opens the coordinator's port itself
(which also proves it free), every other process reports its id, host and pid there, and
process 0 answers every one: all present, or which id was claimed twice or never came.
Then process 0 closes the port and JAX's service takes it.

One JSON line each way over TCP. The wait is bounded by the init timeout on every process;
a process that reports after the roll call has ended (a late duplicate) finds JAX's service
on the port, gets no answer it can read, and ends with a message instead of joining.
"""

from __future__ import annotations

import json
import os
import socket
import time

# Between a process's attempts to reach process 0, which may not have opened the port yet.
RETRY_S = 0.2
# A reporter waits this much longer than process 0 collects, so process 0's verdict (the
# more informative one) reaches it even when the last report came at the deadline.
ANSWER_GRACE_S = 5


class RollCallError(RuntimeError):
    """The processes of a job do not add up: an id claimed twice, or one that never came."""


def identity(process_id: int) -> dict:
    return {"id": process_id, "host": socket.gethostname(), "pid": os.getpid()}


def duplicate(reports: list[dict], num_processes: int) -> str | None:
    """The first id two of the reports claim, as the message every process gets; else None."""
    by_id: dict[int, list[dict]] = {}
    for report in reports:
        by_id.setdefault(int(report["id"]), []).append(report)
    for process_id, claims in sorted(by_id.items()):
        if len(claims) > 1:
            who = " and ".join(f"host {c['host']} pid {c['pid']}" for c in claims)
            return (f"{len(claims)} processes were started with PRORANK_PROCESS_ID={process_id} ({who}); give each of "
                    f"the {num_processes} processes its own id in 0..{num_processes - 1}")
    return None


def missing(reports: list[dict], num_processes: int) -> list[int]:
    """The ids 0..num_processes-1 no report claims."""
    seen = {int(report["id"]) for report in reports}
    return [i for i in range(num_processes) if i not in seen]


def listen(port: int) -> socket.socket:
    """Process 0's listening socket on the coordinator's port; a ValueError when it is taken."""
    server = socket.socket()
    # SO_REUSEADDR: a port left in TIME_WAIT is free for the service too; a listener is not.
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        # Two processes can both bind before either listens; the second listen() fails then.
        server.bind(("", port))
        server.listen(64)
    except OSError as err:
        server.close()
        raise ValueError(f"port {port} is already in use on this host ({err.strerror}): another program holds it, "
                         "or another process of this job was started with PRORANK_PROCESS_ID=0 too; give every "
                         "process its own id and the job a free port") from None
    return server


def _send(conn: socket.socket, message: dict) -> None:
    conn.sendall((json.dumps(message) + "\n").encode("utf-8"))


def _read_line(conn: socket.socket, deadline: float) -> dict:
    data = b""
    while not data.endswith(b"\n"):
        conn.settimeout(max(deadline - time.monotonic(), 0.01))
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("closed before a whole line")
        data += chunk
    return json.loads(data.decode("utf-8"))


def call_the_roll(server: socket.socket, num_processes: int, timeout_s: float) -> None:
    """Process 0: collect reports until every id is in, an id comes twice, or timeout_s; answer
    every process that reported; raise RollCallError on a bad roll. Closes server."""
    deadline = time.monotonic() + timeout_s
    reports, conns = [identity(0)], []
    try:
        while missing(reports, num_processes) and duplicate(reports, num_processes) is None and time.monotonic() < deadline:
            server.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            try:
                report = _read_line(conn, min(deadline, time.monotonic() + 10))
            except (OSError, ValueError):  # gone, or not one of ours (a port scan): not a report
                report = None
            if isinstance(report, dict) and isinstance(report.get("id"), int):
                reports.append(report)
                conns.append(conn)
            else:
                conn.close()
        problem = duplicate(reports, num_processes)
        absent = missing(reports, num_processes)
        if problem is None and absent:
            problem = (f"process(es) {', '.join(map(str, absent))} of {num_processes} did not report within "
                       f"{timeout_s:g} s (PRORANK_INIT_TIMEOUT_S): not started, or started with another "
                       "PRORANK_COORDINATOR or PRORANK_NUM_PROCESSES")
        for conn in conns:
            try:
                _send(conn, {"ok": problem is None, "problem": problem})
                conn.settimeout(5)
                conn.recv(1)  # the reporter closes first, so this side leaves no TIME_WAIT on the port
            except OSError:
                pass
            conn.close()
    finally:
        server.close()
    if problem is not None:
        raise RollCallError(f"process 0: {problem}")


def answer_the_roll(host: str, port: int, process_id: int, timeout_s: float) -> None:
    """Another process: report to process 0 (retrying until it listens) and wait for its answer;
    raise RollCallError when it names a problem or none comes within timeout_s."""
    deadline = time.monotonic() + timeout_s
    answer_by = deadline + ANSWER_GRACE_S
    while True:
        try:
            conn = socket.create_connection((host, port), timeout=max(deadline - time.monotonic(), 0.01))
            break
        except OSError:
            if time.monotonic() >= deadline:
                raise RollCallError(
                    f"process {process_id}: could not reach process 0 at {host}:{port} within {timeout_s:g} s "
                    "(PRORANK_INIT_TIMEOUT_S): it was not started, or it already ended") from None
            time.sleep(RETRY_S)
    with conn:
        try:
            _send(conn, identity(process_id))
            answer = _read_line(conn, answer_by)
        except (OSError, ValueError):
            raise RollCallError(
                f"process {process_id}: no roll-call answer from process 0 at {host}:{port} within {timeout_s:g} s: "
                f"its roll call had ended (another process with PRORANK_PROCESS_ID={process_id} reported first?) "
                "or it stopped") from None
    if not answer.get("ok"):
        raise RollCallError(f"process {process_id}: process 0 says: {answer.get('problem')}")


def roll_call(address: str, num_processes: int, process_id: int, timeout_s: float) -> None:
    """Every process of the job, before jax.distributed.initialize (free for one process)."""
    if num_processes == 1:
        return
    host, _, port_text = address.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"PRORANK_COORDINATOR={address!r}: expected host:port") from None
    if process_id == 0:
        try:
            server = listen(port)
        except ValueError as err:
            raise ValueError(f"PRORANK_COORDINATOR={address}: {err}") from None
        call_the_roll(server, num_processes, timeout_s)
    else:
        answer_the_roll(host, port, process_id, timeout_s)
