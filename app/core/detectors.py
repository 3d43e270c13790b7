"""OOD detectors as estimators, in the calibrators' shape: hyper-parameters in the constructor,
`fit(features, labels)` sets the trailing-underscore state (stored by `FittedState.fitted_arrays`), and
`model()` is the fitted `ScoringModel` whose `fragment` the scoring sessions, the exports and the tests
all run. Scores are higher for more out-of-distribution rows (mahalanobis.md §2–7; KNN: Sun et al. 2022;
ViM: Wang et al. 2022; layer ensembles: Lee et al. 2018)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self

import numpy as np
import onnx
import spox.opset.ai.onnx.v21 as op
from spox import Tensor, Var, argument, build

from app.core.errors import InputError
from app.core.fitted_state import FittedState, HyperParameters
from app.core.fold import Assembled, Chunk, Gather, InMemory, Source, Total, fold, merged_fold
from app.core.graphrun import mapped, mapped_outputs, session_step
from app.core.logistic import fit_logistic
from app.core.mahalanobis import (
    GaussianStats,
    MahalanobisModel,
    PerClassModel,
    ScoringModel,
    Shrinkage,
    VimModel,
    fit,
    fit_per_class,
    fit_vim,
    scoring_graph,
)
from app.core.mixtures import ClassGmmModel, CovarianceType, fit_class_gmm
from app.core.neighbours import KnnModel, nearest
from app.core.runtime import SessionCache, default_cache
from app.core.validation import Precision, float_matrix, precision_dtype

ENSEMBLE_PENALTY = 1e-3  # ridge on the ensemble's logistic regression: keeps separable validation sets bounded


def normalized(x: np.ndarray) -> np.ndarray:
    """Rows L2-normalised (norms floored at 1e-12)."""
    unit: np.ndarray = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return unit


def class_labels(labels: np.ndarray | None, n: int) -> tuple[np.ndarray, int]:
    """Validated [N] labels 0..C−1 with every class present, as int64, and C."""
    if labels is None or labels.shape != (n,):
        raise InputError("labels", f"must be [N] = [{n}] integer labels")
    if labels.dtype.kind not in "iu" or labels.min() < 0:
        raise InputError("labels", "must be non-negative integers")
    classes = int(labels.max()) + 1
    if n < classes:  # before the bincount, whose length a label of 2**33 would make 64 GiB
        raise InputError("features", f"{n} rows for C = {classes} classes: need at least one per class")
    counts = np.bincount(labels, minlength=classes)
    if (counts == 0).any():
        raise InputError(
            "labels", f"classes {np.flatnonzero(counts == 0).tolist()} have no rows (labels must be 0..C−1)"
        )
    return labels.astype(np.int64), classes


def labelled_fit_info(labels: np.ndarray, classes: int) -> dict[str, Any]:
    """What a labelled fit reports: its rows and the rows of each class."""
    return {"n": len(labels), "class_counts": np.bincount(labels, minlength=classes).tolist()}


class Detector(HyperParameters, FittedState, ABC):
    """Hyper-parameters in the constructor (`get_params`); `fit` sets the fitted attributes named by
    `state_keys()` and `fit_info_`. The runtime (`cache`: the scoring sessions and the chunk sizes) is
    given to `fit` and `score`."""

    streams: ClassVar[bool] = False  # fits from chunks (`fit_rows`), so a fit from files never holds its rows

    def __init__(self) -> None:
        self.fit_info_: dict[str, Any] = {}

    @abstractmethod
    def fit(self, features: np.ndarray, labels: np.ndarray | None, cache: SessionCache | None = None) -> Self:
        """Fit on finite [N, D] features (and [N] labels where the method needs them)."""

    def fit_rows(self, rows: Source, gather: Gather[Any] = merged_fold) -> Self:
        """Fit from chunks of `features` and `labels`: only a method that `streams` can."""
        raise TypeError(f"{type(self).__name__} fits from whole arrays, not from chunks")

    @abstractmethod
    def model(self) -> ScoringModel:
        """The fitted detector as a fragment: features [N, D] -> (scores [N], nearest_class [N])."""

    @property
    @abstractmethod
    def classes(self) -> int: ...

    @property
    def dim(self) -> int:
        return self.model().dim

    def row_bytes(self) -> int:
        """What one row's scoring intermediates take, which sizes the chunks: [D] in float64."""
        return 8 * self.dim

    def logits(self, features: np.ndarray, key: str, cache: SessionCache | None = None) -> np.ndarray:
        """The generative classifier's class scores log π_c + log p(x | c), [N, C]: Gaussian detectors only."""
        raise InputError("return_logits", f"a {self.method_name} detector is not a generative classifier")

    @property
    def method_name(self) -> str:
        return type(self).__name__.removesuffix("Detector").lower()

    def score(
        self, features: np.ndarray, key: str | None = None, cache: SessionCache | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, nearest_class) of features [N, D] in their dtype, chunk by chunk. The session is
        cached as `key:dtype` (its owner evicts it), or used once when there is no key."""
        dtype = np.dtype(features.dtype)
        cache = cache or default_cache()

        def build() -> onnx.ModelProto:
            return scoring_graph(self.model(), dtype)

        session = cache.get(f"{key}:{dtype}", build) if key else cache.create(build(), "detector")
        source = InMemory({"features": features}, cache.chunking, self.row_bytes())
        out = fold(source, {"rows": Assembled(session_step(session), source.rows)})["rows"]
        return out["scores"], out["nearest_class"]


@dataclass(frozen=True)
class GaussianStep:
    """One chunk of `features` and `labels` as Gaussian statistics (float64; L2-normalised rows when
    asked), checked as it is read: a fit from files sees its rows only chunk by chunk. The classes are
    those the chunk shows (merging widens them); a label must be below the source's `rows` (C ≤ N)."""

    rows: int
    normalize: bool
    per_class: bool

    def __call__(self, chunk: Chunk) -> GaussianStats:
        if "labels" not in chunk.arrays:
            raise InputError("labels", "required: [N] integer labels")
        features = float_rows(chunk, self.normalize)
        labels = chunk["labels"]
        if labels.shape != (len(features),) or labels.dtype.kind not in "iu":
            raise InputError("labels", f"must be [N] integer labels, got {labels.dtype} {list(labels.shape)}")
        low, high = int(labels.min()), int(labels.max())
        if low < 0:
            raise InputError("labels", "must be non-negative integers")
        if high >= self.rows:  # before the bincount, whose length a label of 2**33 would make 64 GiB
            raise InputError("features", f"{self.rows} rows for C = {high + 1} classes: need at least one per class")
        return GaussianStats.of(features, labels.astype(np.int64), high + 1, self.per_class)


@dataclass(frozen=True)
class FourthMoment:
    """Σ_i ‖x_i − μ_{y_i}‖⁴ of a chunk: Ledoit–Wolf's second pass, around the class means of the first."""

    means: np.ndarray
    normalize: bool

    def __call__(self, chunk: Chunk) -> Total:
        squared = np.sum((float_rows(chunk, self.normalize) - self.means[chunk["labels"]]) ** 2, axis=1)
        return Total(float(np.sum(squared**2)))


def float_rows(chunk: Chunk, normalize: bool) -> np.ndarray:
    """A chunk's finite features in float64, L2-normalised when asked."""
    rows = float_matrix(chunk["features"], "features").astype(np.float64)
    return normalized(rows) if normalize else rows


class _Gaussian(Detector):
    """Gaussian class-conditional detectors: float64 sufficient statistics of each chunk, merged, so a fit
    holds O(D² + C·D) (O(C·D²) per class) whatever N, a chunked fit equals the one-shot one, and a fit
    from files gathers the same statistics from a cluster's workers (`fit_rows`' `gather`)."""

    streams: ClassVar[bool] = True
    per_class: ClassVar[bool] = False

    def __init__(
        self,
        shrinkage: Shrinkage = None,
        ridge: float = 0.0,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        self.shrinkage, self.ridge, self.normalize = shrinkage, ridge, normalize

    def fit(self, features: np.ndarray, labels: np.ndarray | None, cache: SessionCache | None = None) -> Self:
        labels, _ = class_labels(labels, len(features))
        chunking = (cache or default_cache()).chunking
        return self.fit_rows(InMemory({"features": features, "labels": labels}, chunking, features[0].nbytes))

    def fit_rows(self, rows: Source, gather: Gather[Any] = merged_fold) -> Self:
        """Fit on a source of `features` and `labels` chunks (every class 0..C−1 present), its statistics
        merged by `gather` (here by default)."""
        stats: GaussianStats = gather(rows, GaussianStep(rows.rows, self.normalize, self.per_class))
        empty = np.flatnonzero(stats.class_counts == 0)
        if empty.size:
            raise InputError("labels", f"classes {empty.tolist()} have no rows (labels must be 0..C−1)")
        self.fit_info_ = {"n": int(stats.n), "class_counts": stats.class_counts.astype(np.int64).tolist()}
        return self._fit_statistics(stats, rows, gather)

    @abstractmethod
    def _fit_statistics(self, stats: GaussianStats, rows: Source, gather: Gather[Any]) -> Self:
        """Set the fitted state from the merged statistics (a second pass over `rows` where one is needed)."""

    def logits(self, features: np.ndarray, key: str, cache: SessionCache | None = None) -> np.ndarray:
        """log π_c + log N(x; μ_c, Σ_c) with the full normalising constants, in one graph per dtype."""
        model = self.model()
        assert isinstance(model, MahalanobisModel | PerClassModel)
        if isinstance(model, MahalanobisModel) and (model.log_priors is None or model.background is not None):
            raise InputError(
                "return_logits", "relative_mahalanobis, or a detector fitted before class priors were kept: refit it"
            )
        return generative_logits(model, features, key, cache)


def generative_logits(
    model: MahalanobisModel | PerClassModel | ClassGmmModel, features: np.ndarray, key: str, cache: SessionCache | None
) -> np.ndarray:
    """A generative detector's class scores of features [N, D], by its `logits_fragment` (a graph per dtype)."""
    dtype = np.dtype(features.dtype)

    def graph() -> onnx.ModelProto:
        x = argument(Tensor(dtype, ("N", model.dim)))
        return build({"features": x}, {"logits": model.logits_fragment(x)})

    return mapped(f"{key}:logits:{dtype}", graph, {"features": features}, cache)


class GaussianDetector(_Gaussian):
    """Tied covariance (Lee et al. 2018): score min_c d_c²; `relative` subtracts the background d_0²
    (Ren et al. 2021). Ledoit–Wolf takes a second pass for its fourth moment around the class means.
    State: mean_, whiten_, means_ and, when relative, background_."""

    def __init__(
        self,
        relative: bool = False,
        shrinkage: Shrinkage = None,
        ridge: float = 0.0,
        normalize: bool = False,
        inverse: Literal["pinv", "solve"] = "pinv",
    ) -> None:
        super().__init__(shrinkage, ridge, normalize)
        self.relative, self.inverse = relative, inverse

    def state_keys(self) -> tuple[str, ...]:
        return ("mean", "whiten", "means", "background", "log_priors", "log_det")

    def _fit_statistics(self, stats: GaussianStats, rows: Source, gather: Gather[Any]) -> Self:
        fourth = None
        if self.shrinkage == "ledoit_wolf":
            fourth = gather(rows, FourthMoment(stats.class_means, self.normalize)).value
        model = fit(
            stats,
            shrinkage=self.shrinkage,
            ridge=self.ridge,
            inverse=self.inverse,
            relative=self.relative,
            normalize=self.normalize,
            fourth_moment=fourth,
        )
        self.mean_, self.whiten_, self.means_, self.background_ = (
            model.mean,
            model.whiten,
            model.means,
            model.background,
        )
        self.log_priors_, self.log_det_ = (None, None) if self.relative else (model.log_priors, model.log_det)
        return self

    def model(self) -> MahalanobisModel:
        log_priors, log_det = getattr(self, "log_priors_", None), getattr(self, "log_det_", None)
        return MahalanobisModel(
            self.mean_, self.whiten_, self.means_, self.background_, self.normalize, log_priors, log_det
        )

    @property
    def classes(self) -> int:
        return int(self.means_.shape[0])


class PerClassGaussianDetector(_Gaussian):
    """Untied covariances Σ_c (mahalanobis.md §3.2), or their diagonals (`diagonal`: Gaussian naive Bayes):
    score min_c [d_c² + log|Σ_c| − 2 log π_c]. State: pc_whiten_, pc_means_, pc_offsets_."""

    per_class: ClassVar[bool] = True

    def __init__(
        self, shrinkage: Shrinkage = None, ridge: float = 0.0, normalize: bool = False, diagonal: bool = False
    ) -> None:
        super().__init__(shrinkage, ridge, normalize)
        self.diagonal = diagonal

    def state_keys(self) -> tuple[str, ...]:
        return ("pc_whiten", "pc_means", "pc_offsets")

    def _fit_statistics(self, stats: GaussianStats, rows: Source, gather: Gather[Any]) -> Self:
        model = fit_per_class(stats, self.shrinkage, self.ridge, self.normalize, self.diagonal)  # type: ignore[arg-type]
        self.pc_whiten_, self.pc_means_, self.pc_offsets_ = model.whiten, model.means, model.offsets
        return self

    def model(self) -> PerClassModel:
        return PerClassModel(self.pc_whiten_, self.pc_means_, self.pc_offsets_, self.normalize)

    @property
    def classes(self) -> int:
        return int(self.pc_means_.shape[0])

    def row_bytes(self) -> int:
        return 8 * self.classes * self.dim  # every class's whitened copy, [C·D]


class ClassGmmDetector(Detector):
    """One Gaussian mixture per class, fitted by EM (`app.core.mixtures`): score −max_c log p_c(x), and
    as a generative classifier log π_c + log p_c(x). EM does not merge, so the fit takes whole arrays.
    State: gmm_whiten_, gmm_means_, gmm_offsets_ (every component, class by class) and gmm_log_priors_."""

    def __init__(
        self,
        components: int = 3,
        covariance_type: CovarianceType = "full",
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        seed: int = 0,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        self.components, self.covariance_type, self.reg_covar = components, covariance_type, reg_covar
        self.max_iter, self.seed, self.normalize = max_iter, seed, normalize

    def state_keys(self) -> tuple[str, ...]:
        return ("gmm_whiten", "gmm_means", "gmm_offsets", "gmm_log_priors")

    def fit(self, features: np.ndarray, labels: np.ndarray | None, cache: SessionCache | None = None) -> Self:
        labels, classes = class_labels(labels, len(features))
        model, info = fit_class_gmm(
            np.asarray(features, dtype=np.float64),
            labels,
            classes,
            self.components,
            self.covariance_type,
            self.reg_covar,
            self.max_iter,
            self.seed,
            self.normalize,
        )
        parts = model.components
        self.gmm_whiten_, self.gmm_means_, self.gmm_offsets_ = parts.whiten, parts.means, parts.offsets
        self.gmm_log_priors_ = model.log_priors
        self.fit_info_ = {**labelled_fit_info(labels, classes), **info}
        return self

    def model(self) -> ClassGmmModel:
        parts = PerClassModel(self.gmm_whiten_, self.gmm_means_, self.gmm_offsets_, self.normalize)
        return ClassGmmModel(parts, self.components, self.gmm_log_priors_)

    @property
    def classes(self) -> int:
        return int(self.gmm_log_priors_.shape[0])

    def row_bytes(self) -> int:
        return 8 * int(self.gmm_means_.shape[0]) * self.dim  # every component's whitened copy

    def logits(self, features: np.ndarray, key: str, cache: SessionCache | None = None) -> np.ndarray:
        return generative_logits(self.model(), features, key, cache)


class KnnDetector(Detector):
    """The k-th nearest L2-normalised fit row (Sun et al. 2022); nearest_class is the nearest row's
    label. State: support_ (normalised fit rows, in `precision`) and support_labels_. Scoring runs the
    exact chunked search of `neighbours.nearest` (the export embeds `KnnModel`'s fragment)."""

    def __init__(self, k: int = 50, precision: Precision = "auto") -> None:
        super().__init__()
        self.k, self.precision = k, precision

    def state_keys(self) -> tuple[str, ...]:
        return ("support", "support_labels")

    def fit(self, features: np.ndarray, labels: np.ndarray | None, cache: SessionCache | None = None) -> Self:
        labels, classes = class_labels(labels, len(features))
        if self.k > len(features):
            raise InputError("params.k", f"k = {self.k} exceeds the {len(features)} fit rows")
        self.support_ = normalized(features.astype(np.float64)).astype(precision_dtype(self.precision, features))
        self.support_labels_ = labels
        self.fit_info_ = labelled_fit_info(labels, classes)
        return self

    def model(self) -> KnnModel:
        return KnnModel(self.support_, self.support_labels_.astype(np.int64), self.k)

    @property
    def classes(self) -> int:
        return int(self.support_labels_.max()) + 1

    def score(
        self, features: np.ndarray, key: str | None = None, cache: SessionCache | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Queries normalised in float64, searched in the support's dtype."""
        unit = normalized(features.astype(np.float64)).astype(self.support_.dtype)
        found = nearest(unit, self.support_, self.k, cache)
        return np.sqrt(found.distances[:, -1]), self.support_labels_[found.indices[:, 0]]


class VimDetector(Detector):
    """ViM (Wang et al. 2022, mahalanobis.md §6) on the classifier's final layer W [C, D], b [C]; labels
    are not used. State: weight_ and bias_ (the validated head the score reads: the record's params keep
    only `dim`, a [C, D] matrix belongs with the arrays), origin_, residual_, alpha_."""

    def __init__(self, subspace_dim: int, weight: np.ndarray | None = None, bias: np.ndarray | None = None) -> None:
        super().__init__()
        self.subspace_dim, self.weight, self.bias = subspace_dim, weight, bias

    def state_keys(self) -> tuple[str, ...]:
        return ("weight", "bias", "origin", "residual", "alpha")

    def fit(self, features: np.ndarray, labels: np.ndarray | None = None, cache: SessionCache | None = None) -> Self:
        weight, bias = np.asarray(self.weight, dtype=np.float64), np.asarray(self.bias, dtype=np.float64)
        if weight.ndim != 2 or weight.shape[1] != features.shape[1] or bias.shape != (weight.shape[0],):
            raise InputError(
                "params.weight",
                f"weight must be [C, D] with D = {features.shape[1]} and bias [C]; got "
                f"{list(weight.shape)} and {list(bias.shape)}",
            )
        if not np.isfinite(weight).all() or not np.isfinite(bias).all():
            raise InputError("params.weight", "contains NaN or infinite value(s)")
        if self.subspace_dim >= features.shape[1]:
            raise InputError("params.dim", f"dim = {self.subspace_dim} must be below D = {features.shape[1]}")
        model = fit_vim(features.astype(np.float64), weight, bias, self.subspace_dim)
        self.weight_, self.bias_, self.origin_, self.residual_ = weight, bias, model.origin, model.residual
        self.alpha_ = model.alpha
        self.fit_info_ = {"n": len(features), "alpha": model.alpha}
        return self

    def model(self) -> VimModel:
        return VimModel(self.weight_, self.bias_, self.origin_, self.residual_, float(self.alpha_))

    @property
    def classes(self) -> int:
        return int(self.weight_.shape[0])


class LayerEnsemble:
    """A feature ensemble (Lee et al. 2018): one detector per named layer, scored Σ_l w_l·s_l in float64
    with the weights given, fitted by `fit_weights` (logistic regression of OOD vs ID on labelled
    validation layers), or 1 per layer; nearest_class is the last layer's. Its state is each layer's,
    under `layer<i>.`; the weights are kept with the record's params."""

    def __init__(self, layers: dict[str, Detector], weights: dict[str, float] | None = None) -> None:
        self.layers, self.weights = layers, weights

    @property
    def names(self) -> list[str]:
        return list(self.layers)

    @property
    def dims(self) -> list[int]:
        return [detector.dim for detector in self.layers.values()]

    @property
    def classes(self) -> int:
        return list(self.layers.values())[-1].classes

    def fit(
        self, features: dict[str, np.ndarray], labels: np.ndarray | None, cache: SessionCache | None = None
    ) -> Self:
        """Every layer on the same labels; the fit info is the last layer's."""
        self.check(features, "features")
        for name, detector in self.layers.items():
            detector.fit(float_matrix(features[name], f"features.{name}"), labels, cache)
        self.fit_info_ = list(self.layers.values())[-1].fit_info_
        self.weights_ = dict(self.weights) if self.weights is not None else dict.fromkeys(self.names, 1.0)
        return self

    def fit_weights(
        self,
        features_in: dict[str, np.ndarray],
        features_out: dict[str, np.ndarray],
        cache: SessionCache | None = None,
    ) -> Self:
        """Weights of a logistic regression of OOD (1) vs ID (0) on the standardised per-layer scores
        [N, L], mapped back to raw-score weights (the intercept does not change a ranking)."""
        columns: dict[str, list[np.ndarray]] = {"in": [], "out": []}
        for side, given in (("in", features_in), ("out", features_out)):
            field = f"validation.features_{side}"
            self.check(given, field)
            for (name, detector), dim in zip(self.layers.items(), self.dims, strict=True):
                x = float_matrix(given[name], f"{field}.{name}", dim).astype(np.float64)
                columns[side].append(detector.score(x, cache=cache)[0])
        scores_in, scores_out = np.column_stack(columns["in"]), np.column_stack(columns["out"])
        x = np.vstack([scores_in, scores_out]).astype(np.float64)
        y = np.r_[np.zeros(len(scores_in)), np.ones(len(scores_out))]
        mean, scale = x.mean(0), np.maximum(x.std(0), 1e-12)
        fitted = fit_logistic((x - mean) / scale, y, ridge=ENSEMBLE_PENALTY, options={"gtol": 1e-10}, cache=cache)
        self.weights_ = dict(zip(self.names, (fitted.coef / scale).tolist(), strict=True))
        self.fit_info_ = {**self.fit_info_, "ensemble_logistic_loss": fitted.loss}
        return self

    def check(self, given: dict[str, np.ndarray], field: str) -> None:
        if list(given) != self.names and set(given) != set(self.names):
            raise InputError(field, f"layers {sorted(given)} do not match the detector's {self.names}")

    def score(
        self, features: dict[str, np.ndarray], key: str, field: str = "features", cache: SessionCache | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Σ_l w_l·s_l of the layers given as {name: [N, D_l]}, every layer in one graph run per chunk (its
        session cached as `key:dtype`). Layers of mixed precisions are scored in float64."""
        self.check(features, field)
        given = [
            float_matrix(features[name], f"{field}.{name}", dim)
            for name, dim in zip(self.names, self.dims, strict=True)
        ]
        for name, x in zip(self.names, given, strict=True):
            if len(x) != len(given[0]):
                raise InputError(f"{field}.{name}", "every layer must have the same rows")
        dtypes = {x.dtype for x in given}
        dtype = np.dtype(dtypes.pop() if len(dtypes) == 1 else np.float64)
        rows = {f"layer{i}": x.astype(dtype, copy=False) for i, x in enumerate(given)}
        row_bytes = sum(detector.row_bytes() for detector in self.layers.values())
        out = mapped_outputs(f"{key}:{dtype}", lambda: self.scoring_graph(dtype), rows, None, cache, row_bytes)
        return out["scores"], out["nearest_class"]

    def scoring_graph(self, dtype: np.dtype) -> onnx.ModelProto:
        """Inputs `layer<i>` [N, D_i] (in the layers' order) -> `scores` (float64), `nearest_class`."""
        inputs = {f"layer{i}": argument(Tensor(dtype, ("N", dim))) for i, dim in enumerate(self.dims)}
        scores, nearest_class = self.fragments(dict(zip(self.names, inputs.values(), strict=True)))
        return build(inputs, {"scores": scores, "nearest_class": nearest_class})

    def fragment(self, features: dict[str, Var]) -> Var:
        """The score as a fragment of one Var per layer (by name), summed in float64."""
        return self.fragments(features)[0]

    def fragments(self, features: dict[str, Var]) -> tuple[Var, Var]:
        """(Σ_l w_l·s_l in float64, the last layer's nearest class)."""
        total: Var | None = None
        nearest_class: Var | None = None
        for name, detector in self.layers.items():
            scores, nearest_class = detector.model().fragment(features[name])
            weight = op.constant(value=np.asarray(self.weights_[name], np.float64))
            weighted = op.mul(weight, op.cast(scores, to=np.float64))
            total = weighted if total is None else op.add(total, weighted)
        assert total is not None and nearest_class is not None
        return total, nearest_class

    def fitted_arrays(self) -> dict[str, np.ndarray]:
        return {f"layer{i}.{k}": v for i, d in enumerate(self.layers.values()) for k, v in d.fitted_arrays().items()}

    def load_arrays(self, arrays: dict[str, np.ndarray], weights: dict[str, float]) -> Self:
        for index, detector in enumerate(self.layers.values()):
            prefix = f"layer{index}."
            detector.load_arrays({k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)})
        self.weights_ = {name: float(weights[name]) for name in self.names}
        return self
