"""A content-addressed file store for uploaded models and pipeline exports: files named by the sha256 of
their bytes under CALIPER_ARTIFACT_DIR, written while hashing to a temporary file and renamed into place (atomic on one
filesystem), so a reader never sees a partial file and two uploads of the same bytes share one file."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType


class ArtifactTooLargeError(ValueError):
    """An upload beyond the configured size (answered 413)."""


class ArtifactWriter:
    """Write chunks as they arrive; `commit` names the file by its digest. Leaving the `with` block
    without committing (an error, a refused upload) removes the temporary file."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root, self.max_bytes = root, max_bytes
        root.mkdir(parents=True, exist_ok=True)
        descriptor, name = tempfile.mkstemp(dir=root, prefix=".upload-")
        self._file = os.fdopen(descriptor, "wb")
        self._temp = Path(name)
        self._hash = hashlib.sha256()
        self.size = 0
        self.sha256: str | None = None

    def write(self, chunk: bytes | memoryview) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise ArtifactTooLargeError(f"the model file exceeds CALIPER_MAX_MODEL_BYTES ({self.max_bytes} bytes)")
        self._hash.update(chunk)
        self._file.write(chunk)

    @property
    def digest(self) -> str:
        """The sha256 of the bytes written so far (the file's name once committed)."""
        return self._hash.hexdigest()

    @property
    def temp_path(self) -> Path:
        """The bytes written so far (readable once `close` has flushed them)."""
        return self._temp

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def commit(self) -> str:
        self.close()
        digest = self._hash.hexdigest()
        os.replace(self._temp, self.root / digest)
        self.sha256 = digest
        return digest

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._file.close()
        if self.sha256 is None:
            with contextlib.suppress(FileNotFoundError):
                self._temp.unlink()


class ArtifactStore:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root, self.max_bytes = root, max_bytes

    def writer(self) -> ArtifactWriter:
        return ArtifactWriter(self.root, self.max_bytes)

    def put(self, data: bytes) -> str:
        """Store bytes the service made itself (an export), by digest; no upload limit applies."""
        with ArtifactWriter(self.root, len(data)) as writer:
            writer.write(data)
            return writer.commit()

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 digest: {sha256!r}")
        return self.root / sha256

    def remove(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(sha256).unlink()

    def remove_unused(self, sha256: str, in_use: Callable[[str], bool]) -> None:
        """Remove the file unless a record still names it (`in_use`); under `lock()`."""
        if not in_use(sha256):
            self.remove(sha256)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive across the threads and processes sharing CALIPER_ARTIFACT_DIR: an upload's rename
        and insert against a deletion's count and unlink, so a deletion never removes the file of a
        record being added. flock on the directory itself (opened per acquisition, so threads exclude
        each other too; no lock file is left in the store)."""
        self.root.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.root, os.O_RDONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # releases the lock
