"""Uploaded models run here, never in the API process: a pool of spawned worker processes, each with an
address-space limit (RLIMIT_AS) and each call with a time limit. A worker that overruns, runs out of
memory or dies (a segfault, SIGKILL) is replaced and the call answers `ModelLimitError`; the service
keeps serving. Tensors cross the process boundary in shared memory (`multiprocessing.shared_memory`):
only names, offsets, dtypes and shapes go through the pipe. Each worker has two blocks that live as long
as it does and grow when a call needs more: an inbox the API process writes the inputs into, and an
outbox the worker writes the outputs into (creating a block per tensor per call cost ~4 system calls
and 2 resource-tracker messages each: 9 blocks, ~1 ms, for a single-row call with 8 outputs). Each
worker caches sessions (LRU by model key)."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from app.core.errors import InputError

Placed = tuple[str, int, str, tuple[int, ...]]  # (tensor name, byte offset in its block, dtype, shape)
ALIGN = 64  # tensors start on cache-line boundaries
GROWTH_BYTES = 1 << 20  # blocks grow in whole MiB, so a slowly growing batch does not replace them every call


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


SPIN_S = 0.0002  # a reply this quick is caught without sleeping, when no other call is in flight (`_exchange`)


def _answered(conn: Connection, timeout_s: float, spin_s: float) -> bool:
    """Whether the worker answered within `timeout_s`: polled without blocking for `spin_s` first, since
    waking from a blocking poll cost ~0.7 ms of a ~1 ms single-row hop on the 2-vCPU CI machine
    (median hop 0.97 ms → 0.2 ms with the spin, bench/models.py (2)); a longer run then sleeps."""
    deadline = time.perf_counter() + spin_s
    while time.perf_counter() < deadline:
        if conn.poll(0):
            return True
    return conn.poll(timeout_s)


def _layout(arrays: list[tuple[str, np.ndarray]]) -> tuple[list[Placed], int]:
    """Where each array goes in one block (aligned offsets), and the bytes the block needs."""
    placed: list[Placed] = []
    offset = 0
    for name, array in arrays:
        placed.append((name, offset, array.dtype.str, tuple(array.shape)))
        offset += -(-array.nbytes // ALIGN) * ALIGN
    return placed, max(offset, 1)


def _grown(block: SharedMemory | None, size: int, name: str | None = None) -> SharedMemory | None:
    """None when `block` holds `size` bytes, else a new block (named `name`, or at random) that does (the
    caller retires the old)."""
    if block is not None and block.size >= size:
        return None
    return SharedMemory(name=name, create=True, size=-(-size // GROWTH_BYTES) * GROWTH_BYTES)


def _views(block: SharedMemory, placed: list[Placed]) -> dict[str, np.ndarray]:
    return {
        name: np.ndarray(shape, np.dtype(dtype), buffer=block.buf, offset=offset)
        for name, offset, dtype, shape in placed
    }


def _release(block: SharedMemory | None, unlink: bool) -> None:
    if block is None:
        return
    with contextlib.suppress(BufferError):  # a view still alive keeps the mapping until it goes
        block.close()
    if unlink:
        with contextlib.suppress(FileNotFoundError):
            block.unlink()


def _worker(conn: Connection, limits: WorkerLimits, outbox_prefix: str) -> None:  # pragma: no cover - in the child
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))  # before onnxruntime loads
    import onnxruntime as ort

    sessions: OrderedDict[str, ort.InferenceSession] = OrderedDict()
    inbox: SharedMemory | None = None  # the API process's, attached by name
    outbox: SharedMemory | None = None  # ours; the API process unlinks it once we report a larger one
    generation = 0  # outboxes are named `outbox_prefix` + 0, 1, …: the API process can find one we did not report
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
            if message["op"] == "merge":
                conn.send(("ok", _merged(message)))
                continue
            run = session(message["key"], message["path"])
            if message["op"] == "load":
                conn.send(("ok", None))
                continue
            if inbox is None or inbox.name != message["inbox"]:
                _release(inbox, unlink=False)
                inbox = SharedMemory(name=message["inbox"])
            feeds = _views(inbox, message["inputs"])
            values = run.run(message["outputs"], feeds)
            del feeds
            outputs = [(n, np.ascontiguousarray(v)) for n, v in zip(message["outputs"], values, strict=True)]
            placed, size = _layout(outputs)
            larger = _grown(outbox, size, f"{outbox_prefix}{generation}")
            if larger is not None:
                generation += 1
                _release(outbox, unlink=False)
                outbox = larger
            assert outbox is not None
            views = _views(outbox, placed)
            for name, value in outputs:
                views[name][...] = value
            del views, outputs, values
            conn.send(("ok", (outbox.name, placed)))
        except MemoryError as exc:
            conn.send(("memory", str(exc)))
        except InputError as exc:
            conn.send(("input", (exc.field, exc.message)))
        except Exception as exc:  # onnxruntime's errors have no common base class
            text = str(exc)
            kind = "memory" if "allocat" in text.lower() or "bad_alloc" in text.lower() else "error"
            conn.send((kind, f"{type(exc).__name__}: {text}"[:2000]))


def _merged(message: dict[str, Any]) -> tuple[bytes, list[dict[str, Any]], list[dict[str, Any]]]:  # pragma: no cover
    """A model merged with its heads (`app.core.compose`), serialized, with its inputs and outputs."""
    from app.core.compose import merged_file
    from app.models.intake import signature

    io_map = [tuple(pair) for pair in message["io_map"]]
    model = merged_file(message["path"], message["heads"], io_map, message["metadata"], message["max_bytes"],
                        message["field"])  # fmt: skip
    inputs, outputs = signature(model)
    return model.SerializeToString(), [i.model_dump() for i in inputs], [o.model_dump() for o in outputs]


log = logging.getLogger("caliper.models")  # from the request's thread: its lines carry its request id

START_TIMEOUT_S = 60.0  # a spawned worker imports numpy and onnxruntime before it reports ready


class _Worker:
    def __init__(self, limits: WorkerLimits) -> None:
        """Start a worker and wait for its `ready`: one that dies or hangs while starting (too little
        memory to import onnxruntime, a broken install) is a WorkerUnavailableError, not a model's fault."""
        context = mp.get_context("spawn")
        self.conn, child = context.Pipe()
        self.outbox_prefix = f"caliper-out-{uuid.uuid4().hex[:16]}-"
        self.outbox_generation = -1  # of the outbox last reported (none yet)
        self.process = context.Process(target=_worker, args=(child, limits, self.outbox_prefix), daemon=True)
        try:
            self.process.start()
        except OSError as exc:
            raise WorkerUnavailableError(f"could not start a model worker: {exc}") from exc
        child.close()
        self.inbox: SharedMemory | None = None  # ours: inputs are written here
        self.outbox: SharedMemory | None = None  # the worker's, attached: outputs are read here
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
        _release(self.inbox, unlink=True)
        _release(self.outbox, unlink=True)
        self.inbox = self.outbox = None
        self._unlink_unreported_outbox()

    def _unlink_unreported_outbox(self) -> None:
        """A worker killed after growing its outbox but before naming it (a time limit, a crash) leaves a
        block only it knew; it is the next name of its prefix. Unlinked here, not at the API process's exit."""
        with contextlib.suppress(FileNotFoundError):
            _release(SharedMemory(name=f"{self.outbox_prefix}{self.outbox_generation + 1}"), unlink=True)

    def write_inputs(self, inputs: dict[str, np.ndarray]) -> tuple[str, list[Placed]]:
        """Copy the inputs into the inbox (grown first when they do not fit): its name and their places."""
        placed, size = _layout(list(inputs.items()))
        larger = _grown(self.inbox, size)
        if larger is not None:
            _release(self.inbox, unlink=True)
            self.inbox = larger
        assert self.inbox is not None
        for name, view in _views(self.inbox, placed).items():
            view[...] = inputs[name]
        return self.inbox.name, placed

    def read_outputs(self, block_name: str, placed: list[Placed]) -> dict[str, np.ndarray]:
        """Views of the outputs in the worker's outbox (valid until its next call)."""
        if self.outbox is None or self.outbox.name != block_name:
            _release(self.outbox, unlink=True)  # the worker moved to a larger one
            self.outbox = SharedMemory(name=block_name)
            self.outbox_generation = int(block_name.removeprefix(self.outbox_prefix))
        return _views(self.outbox, placed)


class WorkerPool:
    """`size` workers, started on first use; a call takes an idle one (waiting for it) and gives it back,
    or replaces it when the call broke it."""

    def __init__(self, size: int, limits: WorkerLimits, on_replace: Callable[[], None] = lambda: None) -> None:
        self.size, self.limits = size, limits
        self.on_replace = on_replace  # a broken worker was stopped (the metrics count these)
        self.start_error: str | None = None  # why the latest start failed, until one succeeds (for /readyz)
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._busy: set[_Worker] = set()  # workers inside a call (observable by tests and metrics)
        self._alive: set[_Worker] = set()
        self._started = 0
        self._lock = threading.Lock()

    def _take(self) -> _Worker:
        """A live worker for a call: one that died while idle (killed from outside, the OOM killer) is
        replaced here, not blamed on the call that happens to come next."""
        while True:
            worker = self._take_any()
            if worker.process.is_alive():
                return worker
            self._replace(worker, f"it died while idle (exit code {worker.process.exitcode})")

    def _take_any(self) -> _Worker:
        with self._lock:
            if self._started < self.size:
                self._started += 1
                try:
                    worker = _Worker(self.limits)
                except WorkerUnavailableError as exc:
                    self._started -= 1
                    self.start_error = str(exc)
                    raise
                self.start_error = None
                self._alive.add(worker)
                return worker
        return self._idle.get()

    def _retire(self, worker: _Worker) -> None:
        worker.stop()
        with self._lock:
            self._started -= 1
            self._alive.discard(worker)

    def _replace(self, worker: _Worker, reason: str) -> None:
        """A call broke the worker: the next call starts a new one."""
        log.warning("model worker %s replaced: %s", worker.process.pid, reason)
        self._retire(worker)
        self.on_replace()

    def health(self) -> dict[str, Any]:
        """For /readyz: workers start on first use, so none running is healthy; a failed start is not."""
        return {
            "status": "ok" if self.start_error is None else "unavailable",
            "size": self.size,
            "running": len(self._alive),
            "busy": len(self._busy),
            **({"error": self.start_error} if self.start_error else {}),
        }

    def pids(self) -> list[int]:
        """The process ids of the running workers."""
        return [w.process.pid for w in list(self._alive) if w.process.pid is not None]

    def _call(
        self,
        message: dict[str, Any],
        prepare: Callable[[_Worker], dict[str, Any]] | None = None,
        finish: Callable[[_Worker, Any], None] | None = None,
    ) -> Any:
        """One exchange with an idle worker, held from `prepare` (fills its inbox; adds to the message)
        to `finish` (reads its outbox), so no other call can touch its blocks in between."""
        worker = self._take()
        self._busy.add(worker)
        try:
            if prepare is not None:
                message = message | prepare(worker)
            payload = self._exchange(worker, message)
            if finish is not None:
                finish(worker, payload)
            self._idle.put(worker)
            return payload
        except BaseException:
            if worker in self._alive and worker.process.is_alive() and not worker.conn.closed:
                self._idle.put(worker)  # a refusal (ModelRunError) or a caller's error: the worker is fine
            raise
        finally:
            self._busy.discard(worker)

    def _exchange(self, worker: _Worker, message: dict[str, Any]) -> Any:
        try:
            worker.conn.send(message)
            # Spinning only pays alone: beside other calls it takes the CPU and the GIL their threads and the
            # event loop need (single-row V2 gRPC, 8 clients, 2 vCPUs: 804 → 919 req/s without it).
            spin_s = SPIN_S if len(self._busy) <= 1 else 0.0
            if not _answered(worker.conn, self.limits.timeout_s, spin_s):
                self._replace(worker, "the model ran past CALIPER_MODEL_TIMEOUT_S")
                raise ModelLimitError(
                    f"the model ran longer than CALIPER_MODEL_TIMEOUT_S ({self.limits.timeout_s:g} s)"
                )
            status, payload = worker.conn.recv()
        except (EOFError, OSError, BrokenPipeError) as exc:
            code = worker.process.exitcode
            self._replace(worker, f"the model crashed it (exit code {code})")
            raise ModelLimitError(f"the model crashed its worker process (exit code {code})") from exc
        except BaseException:
            if worker.process.is_alive() and not worker.conn.closed:
                self._replace(worker, "interrupted mid-call")  # its pipe may hold a stale reply
            raise
        if status == "memory":
            self._replace(worker, "the model exceeded CALIPER_MODEL_MEMORY_BYTES")  # start clean
            raise ModelLimitError(
                f"the model exceeded CALIPER_MODEL_MEMORY_BYTES ({self.limits.memory_bytes} bytes): {payload}"
            )
        if status == "error":
            raise ModelRunError(payload)
        if status == "input":
            raise InputError(*payload)
        return payload

    def load(self, key: str, path: str) -> None:
        """Create (and cache) the model's session in a worker: onnxruntime's refusals surface here."""
        self._call({"op": "load", "key": key, "path": path})

    def merge(
        self,
        path: str,
        heads: bytes,
        io_map: list[tuple[str, str]],
        metadata: dict[str, str],
        max_bytes: int,
        field: str,
    ) -> tuple[bytes, list[dict[str, Any]], list[dict[str, Any]]]:
        """The model at `path` merged with the serialized `heads` graph, in a worker: its memory and time
        limits bound the load, opset conversion and full check of a large or hostile model (issue 25: eight
        parallel exports of a 250 MB model took the API process to 2.3 GB)."""
        message = {"op": "merge", "path": path, "heads": heads, "io_map": io_map, "metadata": metadata,
                   "max_bytes": max_bytes, "field": field}  # fmt: skip
        merged: tuple[bytes, list[dict[str, Any]], list[dict[str, Any]]] = self._call(message)
        return merged

    def run(
        self,
        key: str,
        path: str,
        inputs: dict[str, np.ndarray],
        outputs: list[str],
    ) -> dict[str, np.ndarray]:
        """The named outputs, copied out of shared memory before the worker is released."""
        result: dict[str, np.ndarray] = {}

        def prepare(worker: _Worker) -> dict[str, Any]:
            block_name, placed = worker.write_inputs(inputs)
            return {"inbox": block_name, "inputs": placed}

        def finish(worker: _Worker, reply: tuple[str, list[Placed]]) -> None:
            result.update((name, view.copy()) for name, view in worker.read_outputs(*reply).items())

        self._call({"op": "run", "key": key, "path": path, "outputs": outputs}, prepare, finish)
        return result

    def close(self) -> None:
        """Stop the idle workers (a later call starts new ones)."""
        while True:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                return
            self._retire(worker)
