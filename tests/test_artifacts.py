"""The content-addressed artifact store: its lock excludes other processes (uploads and deletions of
several API processes share CALIPER_ARTIFACT_DIR), and a file is kept while any model or pipeline names it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from app.records import new_id, utc_now
from app.storage.artifacts import ArtifactStore
from app.storage.models import PipelineRecord
from tests import onnx_models
from tests.test_api_models import resources, upload

CHILD = """
import sys
from pathlib import Path
from app.storage.artifacts import ArtifactStore
store = ArtifactStore(Path(sys.argv[1]), 1)
print("ready", flush=True)
with store.lock():
    print("locked", flush=True)
"""


def test_the_store_lock_excludes_another_process(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts", 1024)
    with store.lock():
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(store.root)], stdout=subprocess.PIPE, text=True, cwd=Path.cwd()
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # time enough to take a free lock and say so
        assert child.poll() is None  # still waiting for ours
    out, _ = child.communicate(timeout=30)
    assert out.strip() == "locked" and child.returncode == 0
    assert list(store.root.iterdir()) == []  # no lock file left in the store


def test_a_file_named_by_a_model_and_a_pipeline_stays_until_neither_names_it(client: TestClient) -> None:
    model = upload(client, onnx_models.mlp()[0]).json()
    services = resources(client)
    path = services.artifacts.path(model["sha256"])
    services.pipelines.repository.add_version(
        PipelineRecord(
            id=new_id(),
            created_at=utc_now(),
            name="same-bytes",
            version=0,
            model_id=model["id"],
            dtype="float64",
            sha256=model["sha256"],  # an export identical to the upload shares its file
            size_bytes=model["size_bytes"],
            inputs=model["inputs"],
            outputs=model["outputs"],
            tags={},
        )
    )
    (pipeline,) = services.pipelines.page(10, None, name="same-bytes").items
    services.pipelines.delete(pipeline.id)
    assert path.exists()  # the model still names it
    predicted = client.post(f"/v1/models/{model['id']}/predict", json={"inputs": {"x": np.ones((1, 6)).tolist()}})
    assert predicted.status_code == 200, predicted.text
    assert client.delete(f"/v1/models/{model['id']}").status_code == 204
    assert not path.exists()
