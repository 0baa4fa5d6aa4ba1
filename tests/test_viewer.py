"""The viewer panel, driven through nerfstudio's own Viewer on the shared tiny run."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.utils.eval_utils import eval_setup
from nerfstudio.viewer.viewer import Viewer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout: float = 20.0) -> None:
    """GUI callbacks run on viser's worker threads: wait until their effect is visible."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the viewer callback did not take effect"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def viewer_pipeline(tiny_run, tmp_path_factory):
    run, _ = tiny_run
    _, pipeline, _, _ = eval_setup(run / "config.yml", test_mode="test")
    log = tmp_path_factory.mktemp("viewer") / "viewer_log.txt"
    viewer = Viewer(ViewerConfig(websocket_port=free_port()), log, run.parents[3] / "scene", pipeline)
    yield pipeline
    viewer.viser_server.stop()


def render(pipeline) -> dict:
    camera = pipeline.datamanager.eval_dataset.cameras[0:1].to(pipeline.model.device)
    return pipeline.model.get_outputs_for_camera(camera)


def test_labels_output_is_first_and_legend_is_shown(viewer_pipeline):
    outputs = render(viewer_pipeline)
    assert next(iter(outputs)) == "labels"  # the viewer selects the first output by default
    assert "labels_overlay" in outputs
    panel = viewer_pipeline.segmentation_panel
    assert panel._legend_handle is not None and "data:image/png;base64," in panel._legend_handle.content


def test_editing_labels_rescores_the_label_map(viewer_pipeline):
    model = viewer_pipeline.model
    before = render(viewer_pipeline)["class_probabilities"].argmax(-1)
    reversed_labels = list(reversed(model.labels))
    viewer_pipeline.segmentation_panel.labels.gui_handle.value = "; ".join(reversed_labels)
    wait_for(lambda: model.display_labels == reversed_labels)
    outputs = render(viewer_pipeline)
    after = outputs["class_probabilities"].argmax(-1)
    # Same features, same text, reversed order: every pixel keeps its label under a new index.
    torch.testing.assert_close(after, len(reversed_labels) - 1 - before)
    torch.testing.assert_close(outputs["labels"], model.display_colours[after])
    viewer_pipeline.segmentation_panel.labels.gui_handle.value = "; ".join(model.labels)
    wait_for(lambda: model.display_labels == model.labels)


def test_free_query_adds_a_relevancy_output(viewer_pipeline):
    model = viewer_pipeline.model
    assert "query_relevancy" not in render(viewer_pipeline)
    viewer_pipeline.segmentation_panel.query.gui_handle.value = "a shiny red fruit"
    wait_for(lambda: model._query is not None)
    relevancy = render(viewer_pipeline)["query_relevancy"]
    height, width = relevancy.shape[:2]
    assert relevancy.shape == (height, width, 1)
    assert 0.0 <= float(relevancy.min()) and float(relevancy.max()) <= 1.0
    viewer_pipeline.segmentation_panel.query.gui_handle.value = ""
    wait_for(lambda: model._query is None)


def test_clicking_reports_label_and_top3(viewer_pipeline):
    model = viewer_pipeline.model
    camera = viewer_pipeline.datamanager.eval_dataset.cameras[0:1].to(model.device)
    ray = camera.generate_rays(camera_indices=0, coords=torch.tensor([[24.0, 32.0]]))
    text = viewer_pipeline.segmentation_panel.describe_ray(ray.origins[0].tolist(), ray.directions[0].tolist())
    entries = text.split(", ")
    assert len(entries) == 3 and all(entry.split()[-1].endswith("%") for entry in entries)
    assert entries[0].rsplit(" ", 1)[0] in model.display_labels
