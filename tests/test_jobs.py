"""Jobs (api.md, "Jobs, data sources and scale-out"): `Prefer: respond-async` on a creating POST answers
202 with a job whose result is exactly the synchronous answer; progress rises to the total; a failure is
the problem the synchronous call would have answered, and stores nothing; a cancelled job stores
nothing; a job whose server process died is failed on the next start; jobs are per project."""

from __future__ import annotations

import io
import json
import time
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.config import Settings
from app.jobs.service import _Reporter
from app.records import utc_now
from app.storage.models import JobRecord
from tests.conftest import LOCAL, count_rows
from tests.test_api_bad_input import assert_problem

ASYNC = {"Prefer": "respond-async"}


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def finished(client: TestClient, job_id: str, timeout_s: float = 60) -> tuple[dict[str, Any], list[tuple[int, Any]]]:
    """The job once it has left queued/running, and the progress seen while polling."""
    seen = []
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        job = client.get(f"/v1/jobs/{job_id}").json()
        seen.append((job["progress"]["done"], job["progress"]["total"]))
        if job["state"] not in ("queued", "running"):
            return job, seen
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish in {timeout_s} s")


def evaluation_files(n: int, c: int = 3, seed: int = 0, top: int | None = None) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)).astype(np.float32)
    labels = rng.integers(0, top or c, n)
    options = {"metrics": ["accuracy", "ece"], "model": "m"}
    return {
        "request": (None, json.dumps(options), "application/json"),
        "logits": ("l.npy", npy(logits)),
        "labels": ("y.npy", npy(labels)),
    }


def test_an_async_evaluation_answers_what_the_sync_one_does(client: TestClient) -> None:
    accepted = client.post("/v1/evaluations", files=evaluation_files(3000), headers=ASYNC)
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()
    assert accepted.headers["location"] == f"/v1/jobs/{job['id']}"
    assert accepted.headers["preference-applied"] == "respond-async"
    assert job["kind"] == "evaluation" and job["state"] in ("queued", "running", "succeeded")
    done, seen = finished(client, job["id"])
    assert done["state"] == "succeeded" and done["error"] is None, done
    assert done["progress"] == {"done": 3000, "total": 3000, "unit": "rows"}
    dones = [d for d, _ in seen]
    assert dones == sorted(dones)  # progress never goes back
    result = done["result"]
    stored = client.get(f"/v1/evaluations/{result['id']}").json()
    assert stored == result  # the job's result is the stored evaluation as the API answers it
    direct = client.post("/v1/evaluations", files=evaluation_files(3000)).json()
    for key in ("losses", "metrics", "reliability", "n", "dataset_fingerprint"):
        assert result[key] == direct[key], key
    assert done["started_at"] >= done["created_at"] and done["finished_at"] >= done["started_at"]
    listed = client.get("/v1/jobs", params={"kind": "evaluation"}).json()["items"]
    assert [j["id"] for j in listed] == [job["id"]]


@pytest.mark.parametrize("prefer", ["respond-async, wait=10", "RESPOND-ASYNC", "handling=lenient, respond-async"])
def test_the_preference_is_read_as_rfc_7240_writes_it(client: TestClient, prefer: str) -> None:
    response = client.post("/v1/evaluations", files=evaluation_files(10), headers={"Prefer": prefer})
    assert response.status_code == 202, response.text


def test_other_preferences_answer_synchronously(client: TestClient) -> None:
    response = client.post("/v1/evaluations", files=evaluation_files(10), headers={"Prefer": "return=minimal"})
    assert response.status_code == 201, response.text


def test_a_failing_job_carries_the_synchronous_problem_and_stores_nothing(client: TestClient, app: Any) -> None:
    before = count_rows(app)
    sync = client.post("/v1/evaluations", files=evaluation_files(50, top=5))
    assert_problem(sync, 422, "labels")
    accepted = client.post("/v1/evaluations", files=evaluation_files(50, top=5), headers=ASYNC)
    job, _ = finished(client, accepted.json()["id"])
    assert job["state"] == "failed" and job["result"] is None
    assert job["error"] == sync.json()
    after = count_rows(app)
    assert {k: v for k, v in after.items() if k != "jobs"} == {k: v for k, v in before.items() if k != "jobs"}


def test_a_malformed_body_is_refused_before_any_job(client: TestClient, app: Any) -> None:
    response = client.post("/v1/evaluations", content=b"{", headers={**ASYNC, "Content-Type": "application/json"})
    assert_problem(response, 400)
    assert count_rows(app)["jobs"] == 0


def test_every_creating_post_runs_as_a_job(client: TestClient) -> None:
    rng = np.random.default_rng(1)
    z, y = rng.normal(size=(60, 3)), rng.integers(0, 3, 60)
    bodies = {
        "/v1/calibrators": {"method": "temperature", "logits": z.tolist(), "labels": y.tolist()},
        "/v1/detectors": {"method": "mahalanobis", "features": z.tolist(), "labels": y.tolist()},
    }
    for path, body in bodies.items():
        sync = client.post(path, json=body)
        job, _ = finished(client, client.post(path, json=body, headers=ASYNC).json()["id"])
        assert job["state"] == "succeeded", job
        assert set(job["result"]) == set(sync.json())
        same = "fitted" if path == "/v1/calibrators" else "fit_info"  # the fit itself, not only its shape
        assert job["result"][same] == sync.json()[same], path
        assert client.get(f"{path}/{job['result']['id']}").json()["id"] == job["result"]["id"]  # stored
    ids = [client.post("/v1/evaluations", json={"logits": z.tolist(), "labels": y.tolist()}).json()["id"]
           for _ in range(2)]  # fmt: skip
    gate = {"candidate": ids[0], "baseline": ids[1], "significance": 0.9, "resamples": 500,
            "rules": [{"metric": "accuracy", "op": "max_decrease_abs", "value": 0.1}]}  # fmt: skip
    job, _ = finished(client, client.post("/v1/gates", json=gate, headers=ASYNC).json()["id"])
    assert job["state"] == "succeeded" and job["kind"] == "gate"
    assert job["progress"]["unit"] == "resamples" and job["progress"]["total"] == 500
    assert job["result"]["rules"] == client.post("/v1/gates", json=gate).json()["rules"]


def test_cancelling_a_running_job_stores_nothing(client: TestClient, app: Any) -> None:
    before = count_rows(app)
    accepted = client.post("/v1/evaluations", files=evaluation_files(200_000), headers=ASYNC)
    job_id = accepted.json()["id"]
    until = time.monotonic() + 30
    while client.get(f"/v1/jobs/{job_id}").json()["progress"]["done"] == 0 and time.monotonic() < until:
        time.sleep(0.01)
    cancelled = client.delete(f"/v1/jobs/{job_id}")
    assert cancelled.status_code in (200, 202), cancelled.text
    job, _ = finished(client, job_id)
    assert job["state"] == "cancelled" and job["result"] is None
    assert job["error"]["status"] == 409 and job["error"]["type"].endswith("/cancelled")
    assert 0 < job["progress"]["done"] < 200_000
    after = count_rows(app)
    assert {k: v for k, v in after.items() if k != "jobs"} == {k: v for k, v in before.items() if k != "jobs"}
    again = client.delete(f"/v1/jobs/{job_id}")
    assert again.status_code == 200 and again.json()["state"] == "cancelled"  # idempotent


def test_a_finished_job_cannot_be_cancelled_and_unknown_ids_are_404(client: TestClient) -> None:
    job, _ = finished(client, client.post("/v1/evaluations", files=evaluation_files(10), headers=ASYNC).json()["id"])
    assert_problem(client.delete(f"/v1/jobs/{job['id']}"), 409)
    assert_problem(client.get("/v1/jobs/nope"), 404)
    assert_problem(client.delete("/v1/jobs/nope"), 404)


def test_a_job_whose_process_died_is_failed_at_the_next_start(settings: Settings, client: TestClient, app: Any) -> None:
    stale = utc_now() - timedelta(seconds=settings.job_stale_s + 5)
    with app.state.resources.database.begin() as session:
        for state in ("queued", "running"):
            session.add(JobRecord(
                id=f"dead{state}", created_at=stale, kind="evaluation", state=state, done=7, total=100, unit="rows",
                heartbeat_at=stale, owner="gone:1:dead", cancel_requested=False,
            ))  # fmt: skip
    restarted = create_app(settings)
    with TestClient(restarted, base_url=LOCAL) as fresh:
        for state in ("queued", "running"):
            job = fresh.get(f"/v1/jobs/dead{state}").json()
            assert job["state"] == "failed" and job["finished_at"] is not None
            assert job["error"]["type"].endswith("/job-lost") and "submit it again" in job["error"]["detail"]


def test_the_reporter_keeps_the_largest_pass_and_never_goes_back() -> None:
    class Rows:
        def __init__(self) -> None:
            self.written: list[tuple[int, int, str]] = []

        def report(self, job_id: str, done: int, total: int, unit: str) -> bool:
            self.written.append((done, total, unit))
            return False

    import threading

    from app.jobs import service

    rows = Rows()
    service.REPORT_EVERY_S, saved = 0.0, service.REPORT_EVERY_S
    try:
        reporter = _Reporter(rows, "j", threading.Event())  # type: ignore[arg-type]
        for done, total, unit in [(10, 100, "rows"), (20, 100, "rows"), (5, 50, "rows"), (3, 500, "resamples"),
                                  (50, 200, "rows"), (10, 200, "rows")]:  # fmt: skip
            reporter(done, total, unit)
    finally:
        service.REPORT_EVERY_S = saved
    assert rows.written == [(10, 100, "rows"), (20, 100, "rows"), (50, 200, "rows")]
    assert reporter.final() == {"done": 200, "total": 200, "unit": "rows"}
