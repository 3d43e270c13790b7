"""Slices (api.md, "Binary models, the classic classification metrics, and slices"): every loss and metric
per group of rows, from one pass of the fused graph (per-slot sums), equal to evaluating each group's
rows alone with the evaluation's C classes; chunked = one-shot; stored, returned and listed; gate rules
on one group with the bootstrap resampling its rows; bad slices are 422s naming the field."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from caliper_client import CaliperClient
from caliper_client.cli import ConfigurationError, load_policy
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.chunking import Chunking
from app.core.errors import InputError
from app.core.evaluation import EvaluationPlan, EvaluationResult, Evaluator, validate_batch
from app.core.losses import LOSSES
from app.core.metrics import METRICS
from app.core.slices import MAX_VALUES, Slices
from tests.conftest import count_rows
from tests.test_api_bad_input import assert_problem

LOSS_NAMES = ("cross_entropy", "focal", "brier")
METRIC_NAMES = (
    "accuracy", "nll", "brier", "ece", "mce", "classwise_ece", "smooth_ece", "entropy", "aurc", "top_k_accuracy",
    "precision", "recall", "f1", "balanced_accuracy", "mcc", "cohen_kappa", "roc_auc", "average_precision",
)  # fmt: skip


def _plan_terms(names: tuple[str, ...] = METRIC_NAMES) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    return tuple(LOSSES[n].spec(name=n) for n in LOSS_NAMES), tuple(METRICS[n].spec(name=n) for n in names)


def _evaluate(scores: np.ndarray, labels: np.ndarray, weight: np.ndarray | None, slices: Slices | None,
              chunk: int | None = None, names: tuple[str, ...] = METRIC_NAMES) -> EvaluationResult:  # fmt: skip
    batch = validate_batch(logits=scores, labels=labels, sample_weight=weight).sliced(slices)
    losses, metrics = _plan_terms(names)
    evaluator = Evaluator(EvaluationPlan(batch.layout, losses, metrics))
    return evaluator.evaluate(batch, None if chunk is None else Chunking.blocks_of(chunk)).result


def _assert_close(got: dict[str, float], want: dict[str, float], rtol: float, what: str) -> None:
    assert got.keys() == want.keys()
    for name in got:
        assert np.isclose(got[name], want[name], rtol=rtol, atol=rtol, equal_nan=True), (
            what,
            name,
            got[name],
            want[name],
        )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("binary", [False, True])
def test_each_group_equals_its_rows_evaluated_alone(dtype: type, weighted: bool, binary: bool) -> None:
    """The oracle is the evaluation itself on each subset (already checked against numpy and scikit-learn),
    so every metric is covered. Per-row values may differ in their last bits between the two runs (a
    chunk's softmax shift depends on its rows), so the tolerance is a few ulps of the dtype, summed."""
    rtol = 1e-5 if dtype == np.float32 else 1e-9
    rng = np.random.default_rng(7)
    n, classes = 400, 2 if binary else 5
    scores = (rng.normal(size=n) * 2 if binary else rng.normal(size=(n, classes)) * 2).astype(dtype)
    labels = rng.integers(0, classes, n)
    weight = rng.uniform(0.2, 3.0, n).astype(dtype) if weighted else None
    region = rng.choice(["eu", "us", "apac"], n)
    device = rng.integers(-2, 3, n)
    names = tuple(m for m in METRIC_NAMES if not (binary and m == "top_k_accuracy"))
    slices = Slices.of({"region": region, "device": device}, n)
    result = _evaluate(scores, labels, weight, slices, chunk=37, names=names)
    assert len(result.slots) == 3 + 5 and slices.values == (("apac", "eu", "us"), ("-2", "-1", "0", "1", "2"))
    for k, column in enumerate((region, device)):
        for slot, value in zip(slices.slot_range(k), slices.values[k], strict=True):
            member = column.astype(str) == value
            alone = _evaluate(
                scores[member], labels[member], None if weight is None else weight[member], None, names=names
            )
            group = result.slots[slot]
            assert group.n == int(member.sum()) and group.classes == classes
            _assert_close(group.losses, alone.losses, rtol, f"{k}={value}")
            _assert_close(group.metrics, alone.metrics, rtol, f"{k}={value}")
    whole = _evaluate(scores, labels, weight, None, chunk=37, names=names)
    assert result.metrics == whole.metrics and result.losses == whole.losses  # slicing leaves the whole alone


def test_a_group_keeps_the_evaluations_classes() -> None:
    """A group whose rows never show class 2 still has C = 3: its confusion matrix and per-class
    averages count that class (zero division gives 0, as in the whole evaluation)."""
    scores = np.array([[3.0, 0.0, -1.0], [0.0, 2.0, 0.0], [0.0, 0.0, 4.0], [1.0, 0.0, 0.0]])
    labels = np.array([0, 1, 2, 0])
    slices = Slices.of({"g": np.array(["a", "a", "b", "a"])}, 4)
    result = _evaluate(scores, labels, None, slices, names=("f1", "accuracy"))
    group_a = result.slots[0]
    assert group_a.n == 3 and group_a.classes == 3
    assert group_a.metrics["f1"] == pytest.approx((1 + 1 + 0) / 3)


@settings(max_examples=25, deadline=None)
@given(chunk=st.integers(1, 60), seed=st.integers(0, 2**16))
def test_chunked_sliced_states_merge_to_the_one_shot_values(chunk: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 60
    scores, labels = rng.normal(size=(n, 3)), rng.integers(0, 3, n)
    slices = Slices.of({"g": rng.integers(0, 4, n)}, n)
    names = ("accuracy", "ece", "f1", "roc_auc")
    one_shot, chunked = (
        _evaluate(scores, labels, None, slices, names=names),
        _evaluate(scores, labels, None, slices, chunk, names),
    )
    for a, b in zip(one_shot.slots, chunked.slots, strict=True):
        assert a.n == b.n
        _assert_close(b.metrics, a.metrics, 1e-12, "chunked")
        _assert_close(b.losses, a.losses, 1e-12, "chunked")


@pytest.mark.parametrize(
    ("columns", "rows", "field"),
    [
        ({"g": np.array([1, 2])}, 3, "slices.g"),  # wrong length
        ({"g": np.array([0.5, 1.0, 2.0])}, 3, "slices.g"),  # floats
        ({"g": np.arange(MAX_VALUES + 1)}, MAX_VALUES + 1, "slices.g"),  # too many distinct values
        ({"": np.array([1, 2, 3])}, 3, "slices"),  # an empty key
        ({"g": np.array(["a", "b\x00c", "a"])}, 3, "slices.g"),  # NUL (PostgreSQL's JSON refuses it)
    ],
)
def test_slice_columns_are_refused_with_the_key_named(columns: dict[str, np.ndarray], rows: int, field: str) -> None:
    with pytest.raises(InputError) as raised:
        Slices.of(columns, rows)
    assert raised.value.field == field


def test_a_state_too_wide_for_its_groups_is_refused_before_any_work() -> None:
    """classwise_ece sums C·B per group: 1,000 groups × 2,000 classes × 15 bins is refused; the confusion
    matrix (C² per group) keeps rows instead, so f1 is not."""
    from app.core.evaluation import check_plan

    slices = Slices.of({"g": np.arange(1000)}, 1000)
    batch = validate_batch(logits=np.zeros((1000, 2000), np.float32), labels=np.zeros(1000, np.int64)).sliced(slices)
    check_plan(EvaluationPlan(batch.layout, (), _plan_terms(("f1", "ece"))[1]), 2000, slices)
    with pytest.raises(InputError, match="1000 groups"):
        check_plan(EvaluationPlan(batch.layout, (), _plan_terms(("classwise_ece",))[1]), 2000, slices)


# -- over HTTP -----------------------------------------------------------------------------------------

LOGITS = [[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [-0.5, 1.5, 0.0], [1.0, 1.0, 1.0], [0.3, -0.2, 0.9]]
LABELS = [0, 2, 0, 1, 2]
BODY: dict[str, Any] = {"logits": LOGITS, "labels": LABELS, "metrics": ["accuracy", "ece", "f1"]}


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_slices_over_json_are_answered_stored_and_listed(client: TestClient) -> None:
    body = {
        **BODY,
        "slices": {"region": ["eu", "us", "eu", "us", "eu"], "device": [1, 1, 2, 2, 7]},
        "min_slice_rows": 2,
    }
    created = client.post("/v1/evaluations", json=body)
    assert created.status_code == 201, created.text
    slices = created.json()["slices"]
    assert set(slices) == {"region", "device"} and set(slices["device"]) == {"1", "2", "7"}
    assert slices["device"]["7"] == {"n": 1}  # below min_slice_rows: n alone
    eu = slices["region"]["eu"]
    alone = client.post(
        "/v1/evaluations", json={**BODY, "logits": [LOGITS[i] for i in (0, 2, 4)], "labels": [0, 0, 2], "store": False}
    ).json()
    assert (
        eu["n"] == 3
        and eu["metrics"] == pytest.approx(alone["metrics"])
        and eu["losses"] == pytest.approx(alone["losses"])
    )
    stored = client.get(f"/v1/evaluations/{created.json()['id']}").json()
    assert stored["slices"] == slices
    listed = client.get("/v1/evaluations").json()["items"]
    assert next(e for e in listed if e["id"] == created.json()["id"])["slices"] == slices
    plain = client.post("/v1/evaluations", json=BODY).json()
    assert plain["slices"] is None


def test_slices_as_multipart_parts_mix_with_json_lists(client: TestClient) -> None:
    request = {**BODY, "slices": {"region": ["eu", "us", "eu", "us", "eu"]}, "store": False}
    files = {
        "request": (None, json.dumps(request), "application/json"),
        "slices.device": ("device.npy", _npy(np.array([1, 1, 2, 2, 7], np.int32)), "application/octet-stream"),
    }
    multipart = client.post("/v1/evaluations", files=files)
    assert multipart.status_code == 201, multipart.text
    as_json = client.post(
        "/v1/evaluations", json={**request, "slices": {**request["slices"], "device": [1, 1, 2, 2, 7]}}
    ).json()
    assert multipart.json()["slices"] == as_json["slices"]


@pytest.mark.parametrize(
    ("slices", "field"),
    [
        ({"region": ["eu", "us"]}, "slices.region"),  # wrong length
        ({"region": ["eu", None, "eu", "us", "eu"]}, "slices.region"),  # a null
        ({"region": [0.5, 1, 1, 1, 1]}, "slices.region"),  # a float
        ({"region": [True, 1, 1, 1, 1]}, "slices.region"),  # a boolean
        ({"region": "eu"}, "slices.region"),
    ],
)
def test_bad_slices_are_422_naming_the_key_and_store_nothing(client: TestClient, slices: Any, field: str) -> None:
    assert_problem(client.post("/v1/evaluations", json={**BODY, "slices": slices}), 422, field)
    assert sum(count_rows(client.app).values()) == 0  # type: ignore[arg-type]


def test_too_many_groups_and_a_key_given_twice_are_422(client: TestClient) -> None:
    n = MAX_VALUES + 1
    many = {"logits": np.zeros((n, 2)).tolist(), "labels": [0] * n, "slices": {"user": list(range(n))}}
    assert_problem(client.post("/v1/evaluations", json=many), 422, "slices.user")
    files = {
        "request": (None, json.dumps({**BODY, "slices": {"device": [1, 1, 2, 2, 7]}}), "application/json"),
        "slices.device": ("device.npy", _npy(np.array([1, 1, 2, 2, 7])), "application/octet-stream"),
    }
    assert_problem(client.post("/v1/evaluations", files=files), 422, "slices.device")
    floats = {
        "request": (None, json.dumps(BODY), "application/json"),
        "slices.device": ("device.npy", _npy(np.array([1.0, 1, 2, 2, 7])), "application/octet-stream"),
    }
    assert_problem(client.post("/v1/evaluations", files=floats), 422, "slices.device")
    assert sum(count_rows(client.app).values()) == 0  # type: ignore[arg-type]


# -- gates ---------------------------------------------------------------------------------------------


def _sliced_pair(client: TestClient) -> tuple[str, str]:
    """A baseline and a candidate on the same 600 rows: the candidate is as good overall but much worse
    on region "b" (its logits there are shuffled)."""
    rng = np.random.default_rng(3)
    n = 600
    labels = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 3 * np.eye(3)[labels]
    region = np.where(np.arange(n) % 3 == 0, "b", "a")
    worse = logits.copy()
    b_rows = np.flatnonzero(region == "b")
    worse[b_rows] = logits[rng.permutation(b_rows)]
    ids = []
    for z in (logits, worse):
        body = {"logits": z.tolist(), "labels": labels.tolist(), "slices": {"region": region.tolist()}}
        created = client.post("/v1/evaluations", json=body)
        assert created.status_code == 201, created.text
        ids.append(created.json()["id"])
    return ids[0], ids[1]


def test_a_gate_rule_on_a_slice_judges_that_group_with_its_own_bootstrap(client: TestClient) -> None:
    baseline, candidate = _sliced_pair(client)
    rules = [
        {"metric": "accuracy", "op": "max_decrease_abs", "value": 0.05, "slice": {"region": "a"}},
        {"metric": "accuracy", "op": "max_decrease_abs", "value": 0.05, "slice": {"region": "b"}},
        {"metric": "nll", "op": "max_increase_abs", "value": 0.05, "slice": {"region": "b"}},
    ]
    gate = client.post(
        "/v1/gates", json={"candidate": candidate, "baseline": baseline, "rules": rules, "significance": 0.95}
    )
    assert gate.status_code == 201, gate.text
    results = gate.json()["rules"]
    stored_c = client.get(f"/v1/evaluations/{candidate}").json()["slices"]["region"]
    stored_b = client.get(f"/v1/evaluations/{baseline}").json()["slices"]["region"]
    assert results[1]["candidate"] == stored_c["b"]["metrics"]["accuracy"]
    assert results[1]["baseline"] == stored_b["b"]["metrics"]["accuracy"]
    assert results[0]["passed"] and results[0]["delta"] == 0 and results[0]["slice"] == {"region": "a"}
    assert not results[1]["passed"] and not results[2]["passed"] and gate.json()["verdict"] == "fail"
    low, high = results[1]["interval"]
    assert low <= results[1]["delta"] <= high < 0  # the group's rows resampled: the interval holds its delta


def test_a_gate_rule_naming_a_slice_an_evaluation_lacks_is_422(client: TestClient) -> None:
    baseline, candidate = _sliced_pair(client)
    plain = client.post("/v1/evaluations", json=BODY).json()["id"]
    for rule_slice, other in (({"region": "c"}, baseline), ({"device": "1"}, baseline), ({"region": "a"}, plain)):
        rule = {"metric": "accuracy", "op": "max_decrease_abs", "value": 0.05, "slice": rule_slice}
        answer = client.post("/v1/gates", json={"candidate": candidate, "baseline": other, "rules": [rule]})
        assert_problem(answer, 422, "rules[0].slice")
    assert count_rows(client.app)["gates"] == 0  # type: ignore[arg-type]


def test_a_model_evaluation_slices_its_streamed_chunks_like_an_evaluation_of_its_logits(client: TestClient) -> None:
    """The model runs in chunks of 64 rows (the suite's CALIPER_MODEL_BATCH_ROWS): each chunk's slots
    travel with it, and the groups equal those of the same logits evaluated directly."""
    from tests.onnx_models import mlp
    from tests.test_api_models import plain_run, upload

    data, _ = mlp()
    model = upload(client, data).json()
    rng = np.random.default_rng(5)
    x = rng.normal(size=(150, 6)).astype(np.float32)
    labels = rng.integers(0, 3, 150)
    region = rng.choice(["a", "b", "c"], 150).tolist()
    options = {"labels": labels.tolist(), "metrics": ["accuracy", "ece", "f1"], "slices": {"region": region}}
    files = {
        "request": (None, json.dumps({**options, "inputs": {"x": x.tolist()}}), "application/json"),
        "slices.shard": ("shard.npy", _npy(np.arange(150) % 2), "application/octet-stream"),
    }
    evaluated = client.post(f"/v1/models/{model['id']}/evaluations", files=files)
    assert evaluated.status_code == 201, evaluated.text
    logits = plain_run(data, x)["logits"]
    direct = client.post(
        "/v1/evaluations",
        json={
            **options,
            "logits": logits.tolist(),
            "slices": {"region": region, "shard": (np.arange(150) % 2).tolist()},
        },
    ).json()
    got = evaluated.json()["slices"]
    assert got.keys() == direct["slices"].keys()
    for key, groups in got.items():
        for value, group in groups.items():
            want = direct["slices"][key][value]
            assert group["n"] == want["n"] and group["metrics"] == pytest.approx(want["metrics"], rel=1e-5)
    wrong = client.post(
        f"/v1/models/{model['id']}/evaluations", json={**options, "inputs": {"x": x.tolist()}, "slices": {"r": ["a"]}}
    )
    assert_problem(wrong, 422, "slices.r")


# -- CLI and client ------------------------------------------------------------------------------------


def test_the_client_sends_slices_as_lists_or_as_integer_parts(caliper: CaliperClient) -> None:
    rng = np.random.default_rng(11)
    logits, labels = rng.normal(size=(300, 3)), rng.integers(0, 3, 300)
    region, device = rng.choice(["eu", "us"], 300), rng.integers(0, 4, 300)
    small = caliper.evaluate(logits=logits, labels=labels, slices={"region": region, "device": device}, store=False)
    caliper.multipart_threshold = 0  # the same request as multipart: device goes as an .npy part
    large = caliper.evaluate(logits=logits, labels=labels, slices={"region": region, "device": device}, store=False)
    assert small["slices"] == large["slices"] and set(small["slices"]["device"]) == {"0", "1", "2", "3"}


def test_cli_evaluate_with_slices_in_process(tmp_path: Path) -> None:
    from tests.test_gating import caliper as run

    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["CALIPER_DATABASE_URL"] = f"sqlite:///{tmp_path / 'slices.db'}"
    assert run("db", "upgrade", env=env).returncode == 0
    rng = np.random.default_rng(12)
    np.savez(tmp_path / "eval.npz", logits=rng.normal(size=(50, 3)), labels=rng.integers(0, 3, 50))
    np.save(tmp_path / "region.npy", rng.choice(["eu", "us"], 50))
    np.save(tmp_path / "device.npy", rng.integers(0, 3, 50))
    args = ["evaluate", "--npz", str(tmp_path / "eval.npz"), "--json"]
    done = run(
        *args, "--slice", f"region={tmp_path / 'region.npy'}", "--slice", f"device={tmp_path / 'device.npy'}", env=env
    )
    assert done.returncode == 0, done.stderr
    slices = json.loads(done.stdout)["slices"]
    assert set(slices) == {"region", "device"} and set(slices["region"]) == {"eu", "us"}
    assert sum(group["n"] for group in slices["device"].values()) == 50
    bad = run(*args, "--slice", "region", env=env)
    assert bad.returncode == 2 and "KEY=FILE.npy" in bad.stderr


def test_a_policy_rule_may_name_one_slice_group(tmp_path: Path) -> None:
    rule = '[[rules]]\nmetric = "accuracy"\nop = "max_decrease_abs"\nvalue = 0.01\n'
    (tmp_path / "ok.toml").write_text(rule + 'slice = { region = "eu" }\n')
    assert load_policy(tmp_path / "ok.toml")["rules"][0]["slice"] == {"region": "eu"}
    for bad in ('slice = { region = "eu", device = "1" }\n', "slice = { device = 1 }\n", 'slice = "eu"\n'):
        (tmp_path / "bad.toml").write_text(rule + bad)
        with pytest.raises(ConfigurationError, match="slice"):
            load_policy(tmp_path / "bad.toml")


def test_list_valued_answers_too_large_are_refused_before_any_work() -> None:
    """A 1,000-class confusion matrix is 10⁶ numbers; per group of 100 groups it would be 10⁸ (≈ 1 GB of
    JSON): 422 naming slices, while the matrix alone, or per-class lists per group, are answered."""
    from app.core.evaluation import check_plan

    slices = Slices.of({"g": np.arange(100)}, 100)
    batch = validate_batch(logits=np.zeros((100, 1000), np.float32), labels=np.zeros(100, np.int64)).sliced(slices)
    matrix = _plan_terms(("confusion_matrix",))[1]
    per_class = (METRICS["recall"].spec.model_validate({"name": "recall", "average": "none"}),)
    check_plan(EvaluationPlan(batch.layout, (), matrix), 1000)
    check_plan(EvaluationPlan(batch.layout, (), per_class), 1000, slices)
    with pytest.raises(InputError) as refused:
        check_plan(EvaluationPlan(batch.layout, (), matrix), 1000, slices)
    assert refused.value.field == "slices"
    with pytest.raises(InputError) as refused:
        check_plan(EvaluationPlan(batch.layout, (), matrix), 3000)
    assert refused.value.field == "metrics"
