"""A request's `source` (api.md, "Jobs, data sources and scale-out"): its fields opened as one streamed
`FileSource`, or read whole for a fit that needs every row at once (a calibrator's optimiser, a KNN
support, an SDM support set), within CALIPER_MAX_SOURCE_BYTES."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from app.core.chunking import Chunking
from app.core.errors import InputError
from app.sources.locations import Places
from app.sources.source import FileSource

WHOLE_BYTES = 2 << 30


@dataclass(frozen=True)
class DataFiles:
    """Where a source may read (`places`), in what chunks, and how many bytes a fit may read whole."""

    places: Places = field(default_factory=Places)
    chunking: Chunking = field(default_factory=Chunking)
    whole_bytes: int = WHOLE_BYTES

    def open(self, locations: Mapping[str, str], inline: Mapping[str, np.ndarray]) -> FileSource:
        """The fields read from files, streamed beside the `inline` ones (a field given both ways: 422)."""
        _once(locations, inline)
        return FileSource.open(locations, self.places, self.chunking, inline)

    def read(self, locations: Mapping[str, str] | None, inline: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`inline` with the fields read from files added, whole. Fields of one part (`validation.logits`
        and `validation.labels`; `logits` and `labels`) must have the same rows; parts may differ. Over
        `whole_bytes` in all: 422 before anything is read."""
        if not locations:
            return dict(inline)
        _once(locations, inline)
        parts: dict[str, dict[str, str]] = {}
        for name, where in locations.items():
            parts.setdefault(name.rpartition(".")[0], {})[name] = where
        sources = [FileSource.open(part, self.places, self.chunking, {}) for part in parts.values()]
        size = sum(source.rows * source.row_bytes for source in sources)
        if size > self.whole_bytes:
            raise InputError(
                "source",
                f"{size} bytes: this fit holds its rows, and reads at most CALIPER_MAX_SOURCE_BYTES = "
                f"{self.whole_bytes} from files",
            )
        read = dict(inline)
        for source in sources:
            read |= source.read()
        return read


def _once(locations: Mapping[str, str], inline: Mapping[str, np.ndarray]) -> None:
    twice = sorted(locations.keys() & inline.keys())
    if twice:
        raise InputError(f"source.{twice[0]}", "given both inline and as a source")
