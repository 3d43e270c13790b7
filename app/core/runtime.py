"""onnxruntime sessions: provider selection and a cache keyed by graph signature, dtype and provider."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import onnx
import onnxruntime as ort

from app.core import deadline
from app.core.chunking import Chunking
from app.core.errors import ProviderUnavailableError
from app.core.lru import LruCache

ProviderName = Literal["cpu", "cuda"]
_ORT_PROVIDERS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}


def resolve_providers(name: ProviderName) -> list[str]:
    """onnxruntime providers for a configured name; fails clearly when CUDA is asked for and missing."""
    wanted = _ORT_PROVIDERS[name]
    if wanted[0] not in ort.get_available_providers():
        raise ProviderUnavailableError(
            f"execution provider {name!r} needs {wanted[0]}, which this onnxruntime does not have "
            f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu "
            "instead of onnxruntime (never both) or set CALIPER_PROVIDER=cpu"
        )
    return wanted


@dataclass(frozen=True)
class RuntimeConfig:
    provider: ProviderName = "cpu"
    intra_op_threads: int = 0  # 0: onnxruntime's default (one per physical core)
    max_cached_sessions: int = 64
    chunking: Chunking = field(default_factory=Chunking)  # rows per call for every chunked run that uses these sessions


RunObserver = Callable[[str, float], None]  # (graph kind, seconds) of each run, e.g. for metrics


class TimeLimitedSession(ort.InferenceSession):  # type: ignore[misc]
    """An inference session whose every run first checks the request's time limit (`deadline`), and
    reports its time under the graph's kind (its signature's first field: `evaluation`, `knn-exact`, …)."""

    kind: str = "graph"
    observe: RunObserver | None = None

    def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> Any:
        deadline.check()
        if self.observe is None:
            return super().run(output_names, input_feed, run_options)
        started = time.perf_counter()
        try:
            return super().run(output_names, input_feed, run_options)
        finally:
            self.observe(self.kind, time.perf_counter() - started)


class SessionCache:
    """LRU cache of inference sessions; building a graph and a session happens once per signature.
    Its `chunking` is how every chunked run through these sessions sizes its calls."""

    def __init__(self, config: RuntimeConfig, observe: RunObserver | None = None) -> None:
        self.config = config
        self.chunking = config.chunking
        self.providers = resolve_providers(config.provider)
        self.observe = observe
        self._sessions: LruCache[ort.InferenceSession] = LruCache(config.max_cached_sessions)

    def get(self, signature: str, build: Callable[[], onnx.ModelProto]) -> ort.InferenceSession:
        return self._sessions.get(signature, lambda: self.create(build(), signature.split(":", 1)[0]))

    def evict(self, signature: str) -> None:
        self._sessions.evict(signature)

    def create(self, model: onnx.ModelProto, kind: str = "graph") -> ort.InferenceSession:
        """An uncached session with the configured provider and options (for a graph used once)."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.config.intra_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads would otherwise spin after each run, taking cores from the HTTP server.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = TimeLimitedSession(model.SerializeToString(), options, providers=self.providers)
        session.kind, session.observe = kind, self.observe
        return session


_default: SessionCache | None = None


def default_cache() -> SessionCache:
    """A process-wide CPU cache for callers that do not configure one (tests, library use)."""
    global _default
    if _default is None:
        _default = SessionCache(RuntimeConfig())
    return _default
