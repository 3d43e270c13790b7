"""Evaluations from files on Dask (api.md, "Jobs, data sources and scale-out"): a LocalCluster of two
worker processes gives the numbers one process gives (counts exactly, sums to 1e-12: the windows hold
the same chunks, merged in a fixed order), with the same stored rows; a job's progress rises by
windows; a cancelled job cancels its tasks and stores nothing; a worker killed mid-job costs a retry,
not a wrong number."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.core.evaluation import EvaluationState
from app.distributed.windows import merged, windows
from tests import onnx_models
from tests.conftest import LOCAL, count_rows, files_app

N, C, SHARDS = 20_000, 6, 5
CALIPER = [sys.executable, "-m", "app.cli"]
BODY: dict[str, Any] = {
    "losses": ["cross_entropy", "brier", {"name": "focal", "gamma": 2.0}],
    "metrics": ["accuracy", "ece", "mce", "classwise_ece", "aurc", "roc_auc", "f1", "confusion_matrix",
                {"name": "top_k_accuracy", "k": 2}],
}  # fmt: skip


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(21)
    labels = rng.integers(0, C, N)
    logits = (rng.normal(size=(N, C)) * 2 + 2.0 * np.eye(C)[labels]).astype(np.float32)
    for k, part in enumerate(np.array_split(np.arange(N), SHARDS)):
        np.save(folder / f"logits-{k:02d}.npy", logits[part])
    np.save(folder / "labels.npy", labels)
    np.save(folder / "weights.npy", rng.uniform(0.5, 2.0, N))
    return folder


def app_with(folder: Path, root: Path, scheduler: str) -> FastAPI:
    return files_app(folder, root, chunk_size=500, dask_scheduler=scheduler, model_batch_rows=1_000)


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory, root: Path) -> Iterator[dict[str, FastAPI]]:
    made = {
        "single": app_with(tmp_path_factory.mktemp("single"), root, ""),
        "dask": app_with(tmp_path_factory.mktemp("dask"), root, "local:2"),
    }
    yield made
    for app in made.values():
        app.state.resources.close()


@pytest.fixture(scope="module")
def clients(apps: dict[str, FastAPI]) -> Iterator[dict[str, TestClient]]:
    with TestClient(apps["single"], base_url=LOCAL) as single, TestClient(apps["dask"], base_url=LOCAL) as dask:
        yield {"single": single, "dask": dask}


def sources(root: Path, weights: bool = False) -> dict[str, Any]:
    given = {"logits": str(root / "logits-*.npy"), "labels": str(root / "labels.npy")}
    return {"source": given | ({"sample_weight": str(root / "weights.npy")} if weights else {})}


def evaluated(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/evaluations", json={**BODY, **body})
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


def close(got: Any, expected: Any, path: str = "", rel: float = 1e-12) -> None:
    if isinstance(expected, dict):
        assert got.keys() == expected.keys(), path
        for key in expected:
            close(got[key], expected[key], f"{path}.{key}", rel)
    elif isinstance(expected, list):
        assert len(got) == len(expected), path
        for k, (g, e) in enumerate(zip(got, expected, strict=True)):
            close(g, e, f"{path}[{k}]", rel)
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, rel=rel, abs=1e-15), path
    else:
        assert got == expected, path


@pytest.mark.parametrize("weights", [False, True], ids=["unweighted", "weighted"])
def test_dask_gives_the_numbers_one_process_gives(clients: dict[str, TestClient], root: Path, weights: bool) -> None:
    region = (np.arange(N) % 4).astype(str).tolist()
    body = {**sources(root, weights), "slices": {"region": region}}
    single, dask = evaluated(clients["single"], body), evaluated(clients["dask"], body)
    for key in ("n", "classes", "dataset_fingerprint"):
        assert dask[key] == single[key], key
    assert [b["count"] for b in dask["reliability"]["bins"]] == [b["count"] for b in single["reliability"]["bins"]]
    if not weights:  # counts are exact
        assert dask["metrics"]["confusion_matrix"] == single["metrics"]["confusion_matrix"]
        assert dask["metrics"]["accuracy"] == single["metrics"]["accuracy"]
    close(
        {k: dask[k] for k in ("losses", "metrics", "slices")}, {k: single[k] for k in ("losses", "metrics", "slices")}
    )
    rows = {name: clients[name].get(f"/v1/evaluations/{answer['id']}", params={"per_sample": True}).json()
            for name, answer in (("single", single), ("dask", dask))}  # fmt: skip
    close(rows["dask"]["per_sample"], rows["single"]["per_sample"])  # the stored rows, in row order


def test_a_dask_job_reports_progress_by_windows(clients: dict[str, TestClient], root: Path) -> None:
    client = clients["dask"]
    job = client.post("/v1/evaluations", json={**BODY, **sources(root)}, headers={"Prefer": "respond-async"}).json()
    seen = []
    until = time.monotonic() + 120
    while time.monotonic() < until:
        polled = client.get(f"/v1/jobs/{job['id']}").json()
        seen.append(polled["progress"]["done"])
        if polled["state"] not in ("queued", "running"):
            break
        time.sleep(0.02)
    assert polled["state"] == "succeeded", polled["error"]
    assert seen == sorted(seen) and polled["progress"] == {"done": N, "total": N, "unit": "rows"}


def scheduled_tasks(cluster: Any) -> int:
    return int(cluster.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)))


def test_cancelling_a_dask_job_cancels_its_tasks_and_stores_nothing(
    apps: dict[str, FastAPI], clients: dict[str, TestClient], root: Path
) -> None:
    from distributed import Event, wait

    client, app = clients["dask"], apps["dask"]
    cluster = app.state.resources.cluster.client()
    before = count_rows(app)
    gate = Event("hold-the-workers", client=cluster)
    holders = [cluster.submit(gate.wait, 60, pure=False) for _ in range(app.state.resources.cluster.workers())]
    try:  # every worker thread waits on the gate, so the job's windows cannot finish before it is cancelled
        until = time.monotonic() + 30
        while sum(map(len, cluster.processing().values())) < len(holders) and time.monotonic() < until:
            time.sleep(0.005)
        job = client.post("/v1/evaluations", json={**BODY, **sources(root)}, headers={"Prefer": "respond-async"})
        while scheduled_tasks(cluster) <= len(holders) and time.monotonic() < until:
            time.sleep(0.005)
        assert scheduled_tasks(cluster) > len(holders), "the job's windows never reached the scheduler"
        cancelled = client.delete(f"/v1/jobs/{job.json()['id']}")
        assert cancelled.status_code in (200, 202), cancelled.text
        done = app.state.resources.jobs.wait(job.json()["id"], 60)
        assert done.state == "cancelled" and done.result is None, done
    finally:
        gate.set()
        wait(holders, timeout=60)
        cluster.cancel(holders)
    assert {k: v for k, v in count_rows(app).items() if k != "jobs"} == {k: v for k, v in before.items() if k != "jobs"}
    until = time.monotonic() + 30
    while scheduled_tasks(cluster) and time.monotonic() < until:
        time.sleep(0.05)
    assert scheduled_tasks(cluster) == 0  # cancelled, not left to run after the gate opened; no earlier job's held


def test_a_worker_killed_mid_job_costs_a_retry_not_a_wrong_number(
    apps: dict[str, FastAPI], clients: dict[str, TestClient], root: Path
) -> None:
    expected = evaluated(clients["single"], sources(root))
    client = clients["dask"]
    job = client.post("/v1/evaluations", json={**BODY, **sources(root)}, headers={"Prefer": "respond-async"}).json()
    cluster = apps["dask"].state.resources.cluster.client()
    victim = next(iter(cluster.scheduler_info()["workers"]))
    while client.get(f"/v1/jobs/{job['id']}").json()["state"] == "queued":
        time.sleep(0.005)
    assert client.get(f"/v1/jobs/{job['id']}").json()["progress"]["done"] < N  # mid-job
    with contextlib.suppress(Exception):  # the worker dies answering: the nanny restarts it, Dask reruns its tasks
        cluster.run(os._exit, 1, workers=[victim])
    until = time.monotonic() + 30  # the scheduler notices the closed stream a moment later
    while victim in cluster.scheduler_info()["workers"] and time.monotonic() < until:
        time.sleep(0.05)
    assert victim not in cluster.scheduler_info()["workers"]
    done = apps["dask"].state.resources.jobs.wait(job["id"], 120)
    assert done.state == "succeeded", done.error
    assert done.result is not None
    close({k: done.result[k] for k in ("losses", "metrics")}, {k: expected[k] for k in ("losses", "metrics")})


@pytest.mark.parametrize("params", [{"shrinkage": "ledoit_wolf"}, {"covariance": "per_class"}], ids=["lw", "per-class"])
def test_a_mahalanobis_fit_on_dask_equals_the_fit_in_one_process(
    apps: dict[str, FastAPI], clients: dict[str, TestClient], root: Path, params: dict[str, Any]
) -> None:
    """The workers gather each window's Gaussian statistics (and Ledoit–Wolf's second pass), merged here:
    the same detector to 1e-12 (sums merged in another order), the same counts exactly."""
    body = {"method": "mahalanobis", "params": params,
            "source": {"features": str(root / "logits-*.npy"), "labels": str(root / "labels.npy")}}  # fmt: skip
    cluster = apps["dask"].state.resources.cluster.client()
    executed = lambda: sum(cluster.run(lambda dask_worker: dask_worker.state.executed_count).values())  # noqa: E731
    before, fitted = executed(), {}
    for name, client in clients.items():
        response = client.post("/v1/detectors", json=body)
        assert response.status_code == 201, response.text
        fitted[name] = response.json()
    assert executed() > before  # the windows ran on the workers
    assert fitted["dask"]["fit_info"] == fitted["single"]["fit_info"]
    probe = np.random.default_rng(3).normal(size=(40, C)) * 3
    scored = {name: clients[name].post(f"/v1/detectors/{fitted[name]['id']}/score", json={"features": probe.tolist()})
              for name in clients}  # fmt: skip
    close(scored["dask"].json()["scores"], scored["single"].json()["scores"], rel=1e-10)
    assert scored["dask"].json()["nearest_class"] == scored["single"].json()["nearest_class"]


def test_a_model_evaluation_from_files_runs_the_model_on_the_workers(
    apps: dict[str, FastAPI], clients: dict[str, TestClient], root: Path
) -> None:
    """The uploaded model runs on the Dask workers (read from the artifact store, in model processes under
    the server's limits) over windows of its input shards: the numbers and stored rows one process gives."""
    data, _ = onnx_models.mlp(d=C, hidden=5, classes=C, dtype=np.float32, seed=4)
    cluster = apps["dask"].state.resources.cluster.client()
    executed = lambda: sum(cluster.run(lambda dask_worker: dask_worker.state.executed_count).values())  # noqa: E731
    source = {"inputs.x": str(root / "logits-*.npy"), "labels": str(root / "labels.npy")}
    body = {**BODY, "source": source, "slices": {"region": (np.arange(N) % 3).astype(str).tolist()}}
    answers, before = {}, executed()
    for name, client in clients.items():
        model = client.post("/v1/models", files={"file": ("m.onnx", data, "application/octet-stream")},
                            data={"request": json.dumps({"name": "mlp"})}).json()  # fmt: skip
        response = client.post(f"/v1/models/{model['id']}/evaluations", json=body)
        assert response.status_code == 201, response.text
        answers[name] = response.json()
    assert executed() > before  # the windows ran on the workers
    single, dask = answers["single"], answers["dask"]
    for key in ("n", "classes", "dataset_fingerprint"):
        assert dask[key] == single[key], key
    assert dask["metrics"]["confusion_matrix"] == single["metrics"]["confusion_matrix"]
    close(
        {k: dask[k] for k in ("losses", "metrics", "slices")}, {k: single[k] for k in ("losses", "metrics", "slices")}
    )
    rows = {name: clients[name].get(f"/v1/evaluations/{answer['id']}", params={"per_sample": True}).json()
            for name, answer in answers.items()}  # fmt: skip
    close(rows["dask"]["per_sample"], rows["single"]["per_sample"])


def test_windows_hold_whole_chunks_and_merge_in_a_fixed_order() -> None:
    spans = windows(10_007, 500, 2)
    assert spans[0][0] == 0 and spans[-1][1] == 10_007
    assert all(b == c for (_, b), (c, _) in itertools.pairwise(spans))
    assert all((b - a) % 500 == 0 for a, b in spans[:-1]) and len(spans) <= 8
    states = [EvaluationState(1, {"s": np.array([v])}) for v in (1e16, 1.0, -1e16, 1.0)]
    # pairwise, left before right: (1e16 + 1) + (−1e16 + 1) rounds to 0; a left-to-right fold would give 1
    assert merged(states).sums["s"][0] == (1e16 + 1.0) + (-1e16 + 1.0) == 0.0
    assert merged(states).n == 4


def test_the_cli_evaluates_sources_in_process_on_dask_and_over_http(
    tmp_path: Path, root: Path, clients: dict[str, TestClient], live_server: str
) -> None:
    """`caliper evaluate --source … --dask local:2` (in-process) and `--url` (a job, polled) answer the
    numbers of the same evaluation made over HTTP in one process."""
    expected = evaluated(clients["single"], {**sources(root), "metrics": ["accuracy", "ece"], "losses": None})
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALIPER_") and k != "DATABASE_URL"}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'cli.db'}"
    subprocess.run([*CALIPER, "db", "upgrade"], env=env, check=True, capture_output=True)
    command = [*CALIPER, "evaluate", "--source", f"logits={root}/logits-*.npy", "--source",
               f"labels={root}/labels.npy", "--metric", "accuracy", "--metric", "ece", "--json"]  # fmt: skip
    for extra in (["--dask", "local:2"], ["--url", live_server]):
        result = subprocess.run([*command, *extra], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        got = json.loads(result.stdout)
        assert got["n"] == N and got["dataset_fingerprint"] == expected["dataset_fingerprint"]
        # other chunk sizes than the expected's (the defaults; the live server's 7 rows): float32 partial sums
        # round differently, by far less than float32's own 1e-7
        close({k: got[k] for k in ("losses", "metrics")}, {k: expected[k] for k in ("losses", "metrics")}, rel=1e-6)
    refused = subprocess.run([*command, "--url", live_server, "--dask", "local:2"], env=env, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    assert refused.returncode == 2 and "--dask runs in-process" in refused.stderr


def test_a_bad_window_is_the_422_one_process_gives(clients: dict[str, TestClient], root: Path) -> None:
    labels = np.load(root / "labels.npy")
    labels[N - 3] = C  # out of range, in the last window
    np.save(root / "bad-labels.npy", labels)
    body = {"source": {"logits": str(root / "logits-*.npy"), "labels": str(root / "bad-labels.npy")}}
    answers = [client.post("/v1/evaluations", json=body) for client in (clients["single"], clients["dask"])]
    assert [a.status_code for a in answers] == [422, 422], answers[1].text
    assert answers[1].json()["errors"] == answers[0].json()["errors"]
    assert answers[1].json()["errors"][0]["field"] == "labels"
