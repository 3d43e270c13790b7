"""The web report and the CLI's report of multilabel and bag-level evaluations: pages render (no 500), the
multilabel metrics and the top-label reliability diagram are shown, and the comparison page pairs two of them."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient


def stored(client: TestClient, body: dict[str, object]) -> str:
    answer = client.post("/v1/evaluations", json={"model": "tagger", "dataset": "tags-test", **body})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def test_report_pages_of_multilabel_and_bag_evaluations(client: TestClient) -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(30, 6))
    sets = [sorted({int(i) for i in rng.choice(6, 2)}) for _ in range(30)]
    first = stored(client, {"task": "multilabel", "logits": z.tolist(), "label_sets": sets})
    second = stored(client, {"task": "multilabel", "logits": (z + 1).tolist(), "label_sets": sets})
    bag_targets = rng.dirichlet(np.ones(6), 3).tolist()
    bags = stored(client, {"logits": z.tolist(), "bags": (np.arange(30) % 3).tolist(), "bag_targets": bag_targets,
                           "losses": ["bag_level_ce"]})  # fmt: skip
    for evaluation_id in (first, second, bags):
        page = client.get(f"/ui/evaluations/{evaluation_id}")
        assert page.status_code == 200, page.text
    assert "precision_at_k" in client.get(f"/ui/evaluations/{first}").text
    assert "bag_level_ce" in client.get(f"/ui/evaluations/{bags}").text
    for path in ("/ui/evaluations", "/ui/models/tagger", f"/ui/compare?a={first}&b={second}&bootstrap=true"):
        page = client.get(path)
        assert page.status_code == 200, (path, page.text[-2000:])
