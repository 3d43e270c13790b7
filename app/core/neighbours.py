"""Exact L2 k-nearest neighbours in ONNX (sdm.md §4.2, FAISS IndexFlatL2's convention: squared L2).

Squared distances come from one matrix product per block, ‖x‖² − 2x·s + ‖s‖², clamped at 0 (§6). The
support set is walked in chunks and each step merges the chunk into a running [Q, k] best set with one
TopK, so memory is O(Q·(k + S_chunk)) whatever the support size. Ties are broken by support index: ONNX
TopK returns equal values in position order, and the running set (all lower indices) precedes the chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import spox.opset.ai.onnx.v21 as op
from spox import Tensor, Var, argument, build

from app.core.chunking import Chunking
from app.core.fold import Assembled, Chunk, InMemory, fold
from app.core.graph_context import ints, scalar
from app.core.graphrun import mapped_outputs
from app.core.runtime import SessionCache, default_cache

SUPPORT_CHUNK = 32768  # support rows per merge step


def squared_distances(queries: Var, support: Var, support_sq: Var) -> Var:
    """[Q, S] ‖x − s‖² = ‖x‖² − 2x·s + ‖s‖² by one matrix product, clamped at 0 (§6)."""
    dtype = np.dtype(queries.unwrap_tensor().dtype)
    query_sq = op.reduce_sum(op.mul(queries, queries), ints(1), keepdims=1)
    cross = op.matmul(queries, op.transpose(support, perm=[1, 0]))
    return op.clip(op.add(op.sub(query_sq, op.mul(scalar(2.0, dtype), cross)), support_sq), scalar(0.0, dtype))


def exact_distances(queries: Var, rows: Var) -> Var:
    """Σ (x − s)² per row: the nearest distance without the matrix product's cancellation, so a query
    equal to a support row is at exactly 0 (§4.3)."""
    difference = op.sub(queries, rows)
    return op.reduce_sum(op.mul(difference, difference), ints(1), keepdims=0)


def nearest_fragment(queries: Var, support: np.ndarray, k: int) -> tuple[Var, Var]:
    """`nearest` as one fragment with the support embedded (for exports): queries [Q, M] in the support's
    dtype -> squared distances [Q, k] (column 0 recomputed exactly) and support indices [Q, k], ties by
    index (ONNX TopK keeps equal values in position order, as the chunked merge does)."""
    rows = op.constant(value=support)
    squared = squared_distances(queries, rows, op.constant(value=squared_norms(support)))
    distances, indices = op.top_k(squared, ints(k), axis=1, largest=0, sorted=1)
    first = op.slice(indices, ints(0), ints(1), ints(1))
    nearest_row = op.gather(rows, op.squeeze(first, ints(1)), axis=0)
    exact = op.unsqueeze(exact_distances(queries, nearest_row), ints(1))
    rest = op.slice(distances, ints(1), ints(k), ints(1))
    return op.concat([exact, rest], axis=1), indices


def merge_graph(dim: int, k: int, dtype: np.dtype) -> onnx.ModelProto:
    """(queries [Q, M], support [S, M], support_sq [S], offset, best_d/best_i [Q, k]) -> the k nearest of
    the running set and this chunk (support rows numbered from `offset`), sorted by distance then index."""
    queries = argument(Tensor(dtype, ("Q", dim)))
    support = argument(Tensor(dtype, ("S", dim)))
    support_sq = argument(Tensor(dtype, ("S",)))
    offset = argument(Tensor(np.int64, ()))
    best_d = argument(Tensor(dtype, ("Q", k)))
    best_i = argument(Tensor(np.int64, ("Q", k)))
    squared = squared_distances(queries, support, support_sq)
    values, position = op.top_k(op.concat([best_d, squared], axis=1), ints(k), axis=1, largest=0, sorted=1)
    kept = op.less(position, scalar(k, np.int64))
    from_running = op.gather_elements(best_i, op.min([position, scalar(k - 1, np.int64)]), axis=1)
    from_chunk = op.add(op.sub(position, scalar(k, np.int64)), offset)
    return build(
        {
            "queries": queries,
            "support": support,
            "support_sq": support_sq,
            "offset": offset,
            "best_d": best_d,
            "best_i": best_i,
        },
        {"distances": values, "indices": op.where(kept, from_running, from_chunk)},
    )


def exact_distance_graph(dim: int, dtype: np.dtype) -> onnx.ModelProto:
    """(queries [Q, M], rows [Q, M]) -> `exact_distances`."""
    queries = argument(Tensor(dtype, ("Q", dim)))
    rows = argument(Tensor(dtype, ("Q", dim)))
    return build({"queries": queries, "rows": rows}, {"distances": exact_distances(queries, rows)})


def squared_norms(vectors: np.ndarray) -> np.ndarray:
    """‖v‖² per row, in the vectors' dtype."""
    norms: np.ndarray = np.einsum("ij,ij->i", vectors, vectors)
    return norms


def distances_stay_finite(vectors: np.ndarray) -> bool:
    """Whether every squared distance among vectors of this magnitude is finite in their dtype:
    ‖x − s‖² ≤ 4·M·max|x|² (a float32 search of values near 1e18 would overflow to +inf and tie)."""
    largest = float(np.max(np.abs(vectors))) if vectors.size else 0.0
    return bool(4.0 * vectors.shape[1] * largest * largest < float(np.finfo(vectors.dtype).max))


@dataclass(frozen=True)
class Neighbours:
    """The k nearest support rows of each query, nearest first: squared distances and support indices."""

    distances: np.ndarray  # [Q, k], the support's dtype
    indices: np.ndarray  # [Q, k] int64


def nearest(
    queries: np.ndarray,
    support: np.ndarray,
    k: int,
    cache: SessionCache | None = None,
    block_bytes: int = 32 << 20,
    support_chunk: int = SUPPORT_CHUNK,
    exclude_self: bool = False,
    support_sq: np.ndarray | None = None,
) -> Neighbours:
    """Exact k nearest neighbours (k ≤ len(support)). The support goes in chunks of `support_chunk` rows
    and queries in blocks sized so that one [Q_block, k + S_chunk] distance block stays near
    `block_bytes`. `exclude_self` (queries are the support rows themselves, §4.3 leave-self-out)
    retrieves k + 1 and drops the first. The nearest distance (column 0) is then recomputed directly
    from the two vectors. `support_sq` (‖s‖² per support row) saves callers that search in blocks from
    recomputing it."""
    dtype = support.dtype
    wanted = k + 1 if exclude_self else k
    if not 1 <= wanted <= len(support):
        raise ValueError(f"k = {k} needs 1 ≤ k{' + 1' if exclude_self else ''} ≤ {len(support)} support rows")
    session = (cache or default_cache()).get(
        f"knn-merge:{support.shape[1]}:{wanted}:{dtype}", lambda: merge_graph(support.shape[1], wanted, dtype)
    )
    if support_sq is None:
        support_sq = squared_norms(support)
    itemsize = dtype.itemsize
    # Long support chunks amortise each merge's re-sort of the running k over many candidates; the query
    # block then shrinks to keep the distance block near `block_bytes` (measured best at k = 100 and 2048).
    support_chunk = min(len(support), support_chunk)
    query_block = int(np.clip(block_bytes // (itemsize * (wanted + support_chunk)), 16, 4096))

    def search(chunk: Chunk) -> dict[str, np.ndarray]:
        """One query block against the whole support: a scan over its chunks, the running best merged
        with each (support rows numbered from the chunk's offset)."""
        block = np.ascontiguousarray(chunk["queries"], dtype)
        best_d = np.full((len(block), wanted), np.inf, dtype)
        best_i = np.full((len(block), wanted), -1, np.int64)
        for s0 in range(0, len(support), support_chunk):
            feeds = {"queries": block, "support": support[s0 : s0 + support_chunk], "offset": np.asarray(s0, np.int64)}
            feeds |= {"support_sq": support_sq[s0 : s0 + support_chunk], "best_d": best_d, "best_i": best_i}
            best_d, best_i = session.run(None, feeds)
        return {"distances": best_d, "indices": best_i}

    source = InMemory({"queries": queries}, Chunking.blocks_of(query_block))
    found = fold(source, {"found": Assembled(search, source.rows)})["found"]
    distances, indices = found["distances"], found["indices"]
    if exclude_self:
        distances, indices = distances[:, 1:], indices[:, 1:]
    exact = mapped_outputs(
        f"knn-exact:{support.shape[1]}:{dtype}",
        lambda: exact_distance_graph(support.shape[1], dtype),
        {"queries": np.asarray(queries, dtype), "rows": support[indices[:, 0]]},
        cache=cache,
    )
    distances[:, 0] = exact["distances"]
    return Neighbours(distances, indices)


@dataclass(frozen=True)
class KnnModel:
    """The KNN OOD detector (Sun et al. 2022, "Out-of-distribution detection with deep nearest
    neighbors"): score = ‖x̂ − s_(k)‖, the distance of the L2-normalised query to its k-th nearest
    L2-normalised fit row; nearest_class = the label of the nearest. As a `ScoringModel` fragment for
    exports (support embedded); the service scores large supports with the chunked `nearest`."""

    support: np.ndarray  # [S, D] normalised fit rows, in the detector's precision
    support_labels: np.ndarray  # [S] int64
    k: int

    @property
    def dim(self) -> int:
        return int(self.support.shape[1])

    def fragment(self, features: Var) -> tuple[Var, Var]:
        wide = op.cast(features, to=np.float64)
        norm = op.sqrt(op.reduce_sum(op.mul(wide, wide), ints(1), keepdims=1))
        unit = op.cast(op.div(wide, op.max([norm, scalar(1e-12, np.float64)])), to=self.support.dtype)
        distances, indices = nearest_fragment(unit, self.support, self.k)
        kth = op.squeeze(op.slice(distances, ints(self.k - 1), ints(self.k), ints(1)), ints(1))
        first = op.squeeze(op.slice(indices, ints(0), ints(1), ints(1)), ints(1))
        return op.sqrt(kth), op.gather(op.constant(value=self.support_labels), first, axis=0)
