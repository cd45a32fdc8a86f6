"""
Grading many responses at once: verify.grade over worker processes, so that a training step's B x G responses are
graded in parallel and one answer that hangs costs its own time limit, not the step.

    grade_batch(responses, golds, strict=False, boxed_only=False, timeout=5.0, workers=None) -> [bool, ...]

Why processes and not threads: grading is pure Python (the GIL), and C-level big-integer work cannot be interrupted by
verify's time limit. Each worker enforces the limit itself; the parent also kills a worker that has not answered
within timeout + WORKER_GRACE and starts a fresh one. Every worker is reaped before grade_batch returns.
"""

import os
import pickle
import selectors
import subprocess
import sys
import time

from mathrl.verify import DEFAULT_TIMEOUT, grade

WORKER_STARTUP = 60.0  # seconds a batch worker process may take to import before it is replaced
WORKER_GRACE = 2.0  # seconds past the time limit before the parent kills a worker stuck in uninterruptible work


def grade_batch(
    responses: list[str], golds: list, strict: bool = False, boxed_only: bool = False, timeout: float = DEFAULT_TIMEOUT,
    workers: int | None = None,
) -> list[bool]:  # fmt: skip
    """grade() over many responses, in order, spread over `workers` processes (None: all cores; 0 or 1: in-process)."""
    if len(responses) != len(golds):
        raise ValueError(f"grade_batch: {len(responses)} responses but {len(golds)} gold answers")
    items = [(r, g, strict, boxed_only, timeout) for r, g in zip(responses, golds)]
    return _grade_many(items, workers, timeout)


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _send(proc, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    proc.stdin.write(len(data).to_bytes(4, "big") + data)
    proc.stdin.flush()


def _recv(stream):
    header = stream.read(4)
    if len(header) < 4:
        raise EOFError("worker exited")
    return pickle.loads(stream.read(int.from_bytes(header, "big")))


def _serve() -> None:
    """Worker process loop: read (index, args) frames on stdin, write (index, grade(...)) frames on stdout."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints go to stderr, never into the result stream
    inp = sys.stdin.buffer
    ready = pickle.dumps(None)
    out.write(len(ready).to_bytes(4, "big") + ready)  # imports done: deadlines count from here
    out.flush()
    while True:
        try:
            i, args = _recv(inp)
        except EOFError:
            return
        data = pickle.dumps((i, grade(*args)))
        out.write(len(data).to_bytes(4, "big") + data)
        out.flush()


def _spawn_worker():
    """A worker running this very module (the folder above the package first on sys.path, whatever the current
    directory holds)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = f"import sys; sys.path.insert(0, {root!r}); from mathrl import grading; grading._serve()"
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def _grade_many(items: list, workers: int | None, timeout: float) -> list[bool]:
    """grade(*item) for every item, spread over worker processes; an item that overruns its limit scores False.

    Each worker enforces the limit itself; the parent also kills a worker that has not answered within
    timeout + WORKER_GRACE (C-level work that no signal can interrupt) and starts a fresh one. Workers that fail to
    start are given up after a few tries and the rest is graded in-process. All workers are reaped before returning.
    """
    n = len(items)
    workers = _default_workers() if workers is None else workers
    if workers <= 1 or n <= 1:
        return [grade(*it) for it in items]
    results = [False] * n
    todo = list(range(n - 1, -1, -1))  # popped from the end: in order
    busy = {}  # worker -> (item index or None while starting, deadline)
    procs, sel = [], selectors.DefaultSelector()
    spawned = 0

    def start():
        nonlocal spawned
        if spawned >= min(workers, n) + 8:  # workers keep dying: stop spawning, finish in-process
            return
        spawned += 1
        p = _spawn_worker()
        procs.append(p)
        sel.register(p.stdout, selectors.EVENT_READ, p)
        busy[p] = (None, time.monotonic() + WORKER_STARTUP)

    def retire(p):
        busy.pop(p, None)
        sel.unregister(p.stdout)
        p.kill()
        p.wait()

    def feed(p):
        while todo:
            i = todo.pop()
            try:
                _send(p, (i, items[i]))
            except OSError:  # died before taking it: retry the item elsewhere
                todo.append(i)
                retire(p)
                start()
                return
            except (pickle.PicklingError, TypeError, AttributeError):  # an unpicklable gold: grade it here
                results[i] = grade(*items[i])
                continue
            busy[p] = (i, time.monotonic() + timeout + WORKER_GRACE)
            return
        busy.pop(p, None)  # nothing left: idle until the end

    try:
        for _ in range(min(workers, n)):
            start()
        while busy:
            wait = max(0.0, min(d for _, d in busy.values()) - time.monotonic())
            for key, _ in sel.select(timeout=wait):
                p = key.data
                if p not in busy:
                    continue
                i = busy[p][0]
                try:
                    msg = _recv(p.stdout)
                except (EOFError, OSError, pickle.UnpicklingError):  # died: its item (if any) scores False
                    retire(p)
                    start()
                    continue
                if msg is not None:
                    results[msg[0]] = bool(msg[1])
                feed(p)
            now = time.monotonic()
            for p, (i, deadline) in list(busy.items()):
                if now > deadline:  # stuck beyond any signal's reach, or never started: kill it
                    retire(p)
                    start()
        for i in reversed(todo):  # only when workers could not be started
            results[i] = grade(*items[i])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stdin.close()
            p.stdout.close()
        sel.close()
    return results
