"""Where a source may read: local paths only under CALIPER_DATA_ROOTS (resolved, symlinks included, so
neither `..` nor a link leads out), URLs only under a prefix of CALIPER_DATA_URLS (read by fsspec with the
server's own credentials: an open list would let any caller make the server fetch any address). A glob
expands to its matches in sorted order: the shards of one field, read one after another."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import fsspec
from fsspec.core import url_to_fs

from app.core.errors import InputError


@dataclass(frozen=True)
class Places:
    """What the server lets a source read: local roots and URL prefixes."""

    roots: tuple[Path, ...] = ()
    url_prefixes: tuple[str, ...] = ()

    @classmethod
    def everywhere(cls) -> Places:
        """Every local path and URL: the CLI's in-process mode, which reads as its own user."""
        return cls((Path("/"),), ("",))

    @classmethod
    def of(cls, roots: str, urls: str) -> Places:
        """From CALIPER_DATA_ROOTS (paths, comma-separated) and CALIPER_DATA_URLS (prefixes, comma-separated)."""
        paths = tuple(Path(p.strip()).resolve() for p in roots.split(",") if p.strip())
        return cls(paths, tuple(u.strip() for u in urls.split(",") if u.strip()))


@dataclass(frozen=True)
class Shard:
    """One file of a field: where it is, and the filesystem that opens it."""

    location: str  # as the error messages name it
    fs: fsspec.AbstractFileSystem
    path: str  # the filesystem's own path

    @property
    def local(self) -> Path | None:
        return Path(self.path) if self.fs.protocol in ("file", ("file", "local")) else None


def shards(field: str, location: str, places: Places) -> list[Shard]:
    """The files `location` (a path, a glob or a URL) names for `field`, in order; 422 naming the field when
    it lies outside the allowed places or names nothing."""
    if "://" in location and not location.startswith("file://"):
        return _remote(field, location, places)
    return _local(field, location.removeprefix("file://"), places)


def _local(field: str, location: str, places: Places) -> list[Shard]:
    if not places.roots:
        raise InputError(field, "local files are not readable: the server sets no CALIPER_DATA_ROOTS")
    pattern = Path(location)
    if not pattern.is_absolute():
        raise InputError(field, f"{location!r}: give an absolute path (under CALIPER_DATA_ROOTS)")
    matches = sorted(glob.glob(str(pattern))) if glob.has_magic(location) else [str(pattern)]
    fs = fsspec.filesystem("file")
    found = []
    for match in matches:
        resolved = Path(match).resolve()
        if not any(resolved.is_relative_to(root) for root in places.roots):
            raise InputError(field, f"{match!r} lies outside CALIPER_DATA_ROOTS (symbolic links resolved)")
        if not resolved.is_file():
            raise InputError(field, f"{match!r} does not exist or is not a file")
        found.append(Shard(match, fs, str(resolved)))
    if not found:
        raise InputError(field, f"{location!r} matches no file")
    return found


def _remote(field: str, location: str, places: Places) -> list[Shard]:
    if ".." in location.split("://", 1)[1].split("/"):
        raise InputError(field, f"{location!r}: `..` is not allowed in a URL")
    if not any(location.startswith(prefix) for prefix in places.url_prefixes):
        raise InputError(field, f"{location!r} is not under a prefix of CALIPER_DATA_URLS")
    try:
        fs, path = url_to_fs(location)
        paths = sorted(fs.glob(path)) if glob.has_magic(path) else [path]
        found = [Shard(fs.unstrip_protocol(p), fs, p) for p in paths if fs.isfile(p)]
    except (ImportError, ValueError, OSError) as exc:  # an unknown protocol, its driver missing, no access
        raise InputError(field, f"{location!r} cannot be read: {exc}") from exc
    if not found:
        raise InputError(field, f"{location!r} matches no file")
    return found
