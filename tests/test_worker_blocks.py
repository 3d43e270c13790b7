"""The worker pool's shared-memory blocks go with their worker: the inbox and the outbox it reported, and
the outbox it grew but never reported because it died first (named by its prefix, found by the pool)."""

from __future__ import annotations

import os
import signal
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import numpy as np
import pytest

from app.models.workers import WorkerLimits, WorkerPool
from tests import onnx_models

SHM = Path("/dev/shm")


@pytest.mark.skipif(not SHM.is_dir(), reason="POSIX shared memory is listed under /dev/shm on Linux")
def test_a_killed_worker_leaves_no_shared_memory_behind(tmp_path: Path) -> None:
    data, _ = onnx_models.mlp(dtype=np.float32)
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    pool = WorkerPool(1, WorkerLimits(memory_bytes=2 << 30, timeout_s=30))
    try:
        x = np.ones((4, 6), np.float32)
        pool.run("m", str(path), {"x": x}, ["logits"])
        (worker,) = pool._alive
        assert worker.outbox is not None and worker.inbox is not None
        known = [worker.inbox.name, worker.outbox.name]
        assert worker.outbox.name == f"{worker.outbox_prefix}0"
        # what a worker killed between growing its outbox and reporting it leaves: the prefix's next block
        unreported = SharedMemory(name=f"{worker.outbox_prefix}1", create=True, size=1 << 20)
        unreported.close()
        names = [*known, unreported.name]
        assert all((SHM / name).exists() for name in names)
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.join(10)
        # the next call finds it dead before using it: replaced (its blocks unlinked), and a new worker serves
        assert pool.run("m", str(path), {"x": x}, ["logits"])["logits"].shape == (4, 3)
        assert [name for name in names if (SHM / name).exists()] == []
    finally:
        pool.close()
