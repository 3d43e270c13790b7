"""The multilabel side of an evaluation request (api.md, "Multi-label, extreme, cosine-margin and bag-level
evaluation"): its label sets and propensity counts taken out of the request, what only multiclass takes
refused by name, and multilabel fields on a multiclass request refused too."""

from __future__ import annotations

import numpy as np

from app.core.errors import InputError
from app.core.evaluation import Batch, validate_multilabel
from app.core.label_sets import LabelSets
from app.evaluation.schemas import EvaluationRequest
from app.evaluation.streamed import MultilabelTruth

MULTILABEL_FIELDS = ("label_sets", "label_frequencies", "n_train")  # what only task multilabel takes
MULTICLASS_OPTIONS = ("calibrator_id", "sdm_id", "conformal_id", "slices")  # not built for multilabel
MULTICLASS_ONLY = ("probabilities", "labels", "teacher_logits", "embeddings", "cosines", "class_weights", "bags")


def multilabel_truth(request: EvaluationRequest, arrays: dict[str, np.ndarray]) -> MultilabelTruth:
    """A task: multilabel request's label sets (JSON lists, or the CSR parts, taken out of `arrays`) and
    propensity counts; what only multiclass takes, inline or from files, is refused by name."""
    for name in (*MULTICLASS_ONLY, *(f"{name}." for name in MULTICLASS_ONLY)):
        if name in arrays or name in (request.source or {}):
            raise InputError(
                name, "is not taken by task: multilabel (it takes `logits` with `targets` or `label_sets`)"
            )
    for option in MULTICLASS_OPTIONS:
        if getattr(request, option) is not None or any(k.startswith(f"{option}.") for k in arrays):
            raise InputError(option, "is not available with task: multilabel (yet)")
    parts = [arrays.pop(f"label_sets.{part}", None) for part in ("indices", "offsets")]
    sets = None
    if request.label_sets is not None:
        if any(p is not None for p in parts):
            raise InputError("label_sets", "given both as parts and inside 'request'")
        listed = LabelSets.of_lists(request.label_sets)
        sets = (listed.indices, listed.offsets)
    elif any(p is not None for p in parts):
        indices, offsets = parts
        if indices is None or offsets is None:
            raise InputError("label_sets", "give both `label_sets.indices` and `label_sets.offsets`")
        sets = (indices, offsets)
    return MultilabelTruth(sets, arrays.pop("label_frequencies", None), request.n_train)


def multilabel_batch(request: EvaluationRequest, arrays: dict[str, np.ndarray]) -> Batch:
    """A task: multilabel request's batch: logits with multi-hot targets or label sets, weights and counts."""
    truth = multilabel_truth(request, arrays)
    return validate_multilabel(
        logits=arrays.get("logits"),
        targets=arrays.get("targets"),
        label_sets=truth.label_sets,
        sample_weight=arrays.get("sample_weight"),
        label_frequencies=truth.label_frequencies,
        n_train=truth.n_train,
    )


def refuse_multilabel_fields(request: EvaluationRequest, arrays: dict[str, np.ndarray]) -> None:
    """A multiclass request naming a multilabel field is a 422 (not silently ignored)."""
    for name in MULTILABEL_FIELDS:
        if getattr(request, name) is not None or name in arrays or any(k.startswith(f"{name}.") for k in arrays):
            raise InputError(name, 'needs "task": "multilabel"')
