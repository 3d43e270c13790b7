"""Uploaded models run here, never in the API process: a pool of spawned worker processes, each with an
address-space limit (RLIMIT_AS) and each call with a time limit. A worker that overruns, runs out of
memory or dies (a segfault, SIGKILL) is replaced and the call answers `ModelLimitError`; the service
keeps serving. Tensors cross the process boundary in shared memory (`multiprocessing.shared_memory`):
only names, dtypes and shapes go through the pipe. Each worker caches sessions (LRU by model key)."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

Described = tuple[str, str, str, tuple[int, ...]]  # (tensor name, shared-memory name, dtype, shape)


class ModelLimitError(Exception):
    """The model overran its time or memory limit, or crashed its worker (answered 422 model-limits)."""


class ModelRunError(Exception):
    """onnxruntime refused the model or its inputs (answered 422 with onnxruntime's message)."""


class WorkerUnavailableError(Exception):
    """No worker could be started (answered 503)."""


@dataclass(frozen=True)
class WorkerLimits:
    memory_bytes: int
    timeout_s: float
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 0  # 0: onnxruntime's default (one per physical core), as for the core's sessions
    cached_sessions: int = 8


def _share(array: np.ndarray) -> SharedMemory:
    block = SharedMemory(create=True, size=max(1, array.nbytes))
    np.ndarray(array.shape, array.dtype, buffer=block.buf)[...] = array
    return block


def _attached(described: Described) -> tuple[SharedMemory, np.ndarray]:
    _, block_name, dtype, shape = described
    block = SharedMemory(name=block_name)
    return block, np.ndarray(shape, np.dtype(dtype), buffer=block.buf)


def _worker(conn: Connection, limits: WorkerLimits) -> None:  # pragma: no cover - runs in the child
    import resource
    from multiprocessing import resource_tracker

    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))  # before onnxruntime loads
    import onnxruntime as ort

    sessions: OrderedDict[str, ort.InferenceSession] = OrderedDict()
    conn.send(("ready", None))

    def session(key: str, path: str) -> ort.InferenceSession:
        if key in sessions:
            sessions.move_to_end(key)
            return sessions[key]
        options = ort.SessionOptions()
        options.intra_op_num_threads = limits.intra_op_threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions[key] = ort.InferenceSession(path, options, providers=list(limits.providers))
        while len(sessions) > limits.cached_sessions:
            sessions.popitem(last=False)
        return sessions[key]

    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        try:
            run = session(message["key"], message["path"])
            if message["op"] == "load":
                conn.send(("ok", None))
                continue
            attached = [_attached(d) for d in message["inputs"]]
            feeds = {d[0]: array for d, (_, array) in zip(message["inputs"], attached, strict=True)}
            values = run.run(message["outputs"], feeds)
            del feeds
            for block, _ in attached:
                block.close()
            reply = []
            for name, value in zip(message["outputs"], values, strict=True):
                value = np.ascontiguousarray(value)
                block = _share(value)
                # the parent attaches (registering it again with the tracker they share) and unlinks it
                resource_tracker.unregister(block._name, "shared_memory")  # type: ignore[attr-defined]
                reply.append((name, block.name, value.dtype.str, value.shape))
                block.close()
            conn.send(("ok", reply))
        except MemoryError as exc:
            conn.send(("memory", str(exc)))
        except Exception as exc:  # onnxruntime's errors have no common base class
            text = str(exc)
            kind = "memory" if "allocat" in text.lower() or "bad_alloc" in text.lower() else "error"
            conn.send((kind, f"{type(exc).__name__}: {text}"[:2000]))


START_TIMEOUT_S = 60.0  # a spawned worker imports numpy and onnxruntime before it reports ready


class _Worker:
    def __init__(self, limits: WorkerLimits) -> None:
        """Start a worker and wait for its `ready`: one that dies or hangs while starting (too little
        memory to import onnxruntime, a broken install) is a WorkerUnavailableError, not a model's fault."""
        context = mp.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(child, limits), daemon=True)
        try:
            self.process.start()
        except OSError as exc:
            raise WorkerUnavailableError(f"could not start a model worker: {exc}") from exc
        child.close()
        try:
            ready = self.conn.poll(START_TIMEOUT_S) and self.conn.recv() == ("ready", None)
        except (EOFError, OSError):
            ready = False
        if not ready:
            code = self.process.exitcode
            self.stop()
            raise WorkerUnavailableError(f"a model worker did not start (exit code {code})")

    def stop(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class WorkerPool:
    """`size` workers, started on first use; a call takes an idle one (waiting for it) and gives it back,
    or replaces it when the call broke it."""

    def __init__(self, size: int, limits: WorkerLimits) -> None:
        self.size, self.limits = size, limits
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._busy: set[_Worker] = set()  # workers inside a call (observable by tests and metrics)
        self._alive: set[_Worker] = set()
        self._started = 0
        self._lock = threading.Lock()

    def _take(self) -> _Worker:
        with self._lock:
            if self._started < self.size:
                self._started += 1
                try:
                    worker = _Worker(self.limits)
                except WorkerUnavailableError:
                    self._started -= 1
                    raise
                self._alive.add(worker)
                return worker
        return self._idle.get()

    def _replace(self, worker: _Worker) -> None:
        worker.stop()
        with self._lock:
            self._started -= 1
            self._alive.discard(worker)

    def pids(self) -> list[int]:
        """The process ids of the running workers."""
        return [w.process.pid for w in list(self._alive) if w.process.pid is not None]

    def _call(self, message: dict[str, Any]) -> Any:
        worker = self._take()
        self._busy.add(worker)
        try:
            return self._exchange(worker, message)
        finally:
            self._busy.discard(worker)

    def _exchange(self, worker: _Worker, message: dict[str, Any]) -> Any:
        try:
            worker.conn.send(message)
            if not worker.conn.poll(self.limits.timeout_s):
                self._replace(worker)
                raise ModelLimitError(
                    f"the model ran longer than CALIPER_MODEL_TIMEOUT_S ({self.limits.timeout_s:g} s)"
                )
            status, payload = worker.conn.recv()
        except (EOFError, OSError, BrokenPipeError) as exc:
            code = worker.process.exitcode
            self._replace(worker)
            raise ModelLimitError(f"the model crashed its worker process (exit code {code})") from exc
        except BaseException:
            if worker.process.is_alive() and not worker.conn.closed:
                self._replace(worker)
            raise
        if status == "memory":
            self._replace(worker)  # an allocation failed under RLIMIT_AS: start clean
            raise ModelLimitError(
                f"the model exceeded CALIPER_MODEL_MEMORY_BYTES ({self.limits.memory_bytes} bytes): {payload}"
            )
        self._idle.put(worker)
        if status == "error":
            raise ModelRunError(payload)
        return payload

    def load(self, key: str, path: str) -> None:
        """Create (and cache) the model's session in a worker: onnxruntime's refusals surface here."""
        self._call({"op": "load", "key": key, "path": path})

    def run(
        self,
        key: str,
        path: str,
        inputs: dict[str, np.ndarray],
        outputs: list[str],
        sink: Callable[[str, np.ndarray], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """The named outputs, copied out of shared memory; with `sink`, each output's view is handed to
        it instead (to copy where it belongs) before its block is released, and nothing is returned."""
        blocks = {name: _share(np.ascontiguousarray(array)) for name, array in inputs.items()}
        try:
            described = [(n, b.name, inputs[n].dtype.str, inputs[n].shape) for n, b in blocks.items()]
            reply = self._call({"op": "run", "key": key, "path": path, "inputs": described, "outputs": outputs})
        finally:
            for block in blocks.values():
                block.close()
                block.unlink()
        result: dict[str, np.ndarray] = {}
        for item in reply:
            block, view = _attached(item)
            if sink is None:
                result[item[0]] = view.copy()
            else:
                sink(item[0], view)
            del view
            block.close()
            block.unlink()
        return result

    def close(self) -> None:
        """Stop the idle workers (a later call starts new ones)."""
        while True:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                return
            self._replace(worker)
