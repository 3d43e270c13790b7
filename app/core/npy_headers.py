"""One lock around every .npy/.npz header read. numpy parses a header with `ast.literal_eval`, and
CPython 3.11 before 3.11.8 can fail that parse with `SystemError: AST constructor recursion depth
mismatch` when threads parse at the same time (CPython gh-106905; tests/test_blobs.py's sixteen threads
hit it). Holding the lock costs one header parse (microseconds) per array."""

from __future__ import annotations

import threading

NPY_HEADERS = threading.Lock()
