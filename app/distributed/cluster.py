"""The Dask cluster that evaluations from files run on, when CALIPER_DASK_SCHEDULER names one: a
scheduler's address (`tcp://host:8786`), or `local:<workers>` for a LocalCluster of that many worker
processes (one thread each) started by this process. The client connects on first use."""

from __future__ import annotations

import threading
from typing import Any

from app.core.errors import InputError
from app.core.fold import Gather


class Cluster:
    def __init__(self, address: str) -> None:
        if address.startswith("local:") and not address.removeprefix("local:").isdigit():
            raise InputError("CALIPER_DASK_SCHEDULER", f"{address!r}: write local:<workers>, e.g. local:2")
        self.address = address
        self._lock = threading.Lock()
        self._client: Any = None
        self._local: Any = None

    def client(self) -> Any:
        """The distributed.Client (made once; a local cluster started with it)."""
        with self._lock:
            if self._client is None:
                import dask
                from distributed import Client, LocalCluster

                if self.address.startswith("local:"):
                    workers = int(self.address.removeprefix("local:"))
                    # not daemons: a model evaluation's task starts a sandboxed model process (also on restarts)
                    dask.config.set({"distributed.worker.daemon": False})
                    self._local = LocalCluster(
                        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
                    )
                    self._client = Client(self._local)
                else:
                    self._client = Client(self.address)
            return self._client

    def gather(self) -> Gather[Any]:
        """A `Gather` that merges chunk states computed on this cluster's workers."""
        from app.distributed.windows import gather_on

        return gather_on(self.client())

    def workers(self) -> int:
        return max(1, len(self.client().scheduler_info()["workers"]))

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
            if self._local is not None:
                self._local.close()
            self._client = self._local = None
