"""``textguidedseg serve`` as a real subprocess on 127.0.0.1, driven by the Slicer module's stdlib client.

One server per module (a tiny random-weight bundle at 8 mm, a 48 x 48 x 24 phantom at 5 mm, so each job is
quick): segment and re-prompt without re-sending the volume, answers equal to the in-process ``Segmenter``;
bad requests get 4xx with a message naming the problem; cancel mid-run leaves the server working; concurrent
clients get correct, distinct answers while the cache stays within its bound. The Slicer logic's path
(``logic.submit`` on a local server it starts itself, a server killed mid-job, the restart) is tested on real
MRML in ``test_slicer_logic.py`` (``test_the_panel_path_...``, ``test_a_killed_server_...``).
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "TextGuidedSeg" / "TextGuidedSegLogic"))
import service  # noqa: E402 - the module's client, imported without Slicer (stdlib and numpy only)

sys.path.remove(str(REPO_ROOT / "TextGuidedSeg" / "TextGuidedSegLogic"))

TOKEN = "0123456789abcdef-test-token"
STRUCTURES = ("liver", "spleen", "right_kidney", "left_kidney")
PROMPTS = ("liver", "spleen", "both kidneys", "liver and spleen", "left kidney")


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    """A random-weight film_v1 bundle (feature size 12) at 8 mm with 64^3 windows."""
    import torch

    from TextGuidedSegLib.bundle import BundleConfig, InferenceConfig, PreprocessConfig, save_bundle
    from TextGuidedSegLib.models import ModelConfig, build_model
    from TextGuidedSegLib.taxonomy import get_taxonomy
    from TextGuidedSegLib.text import EmbeddingCache

    taxonomy = get_taxonomy().subset(list(STRUCTURES))
    model_config = ModelConfig(feature_size=12, text_dim=16)
    torch.manual_seed(0)
    model = build_model(model_config)
    cache = EmbeddingCache("random-test-vectors", model_config.text_dim)
    generator = torch.Generator().manual_seed(0)
    cache.add(taxonomy.prompts, torch.randn(len(taxonomy), model_config.text_dim, generator=generator))
    config = BundleConfig(
        name="tiny_server",
        model=model_config,
        taxonomy=taxonomy,
        preprocessing=PreprocessConfig(spacing=(8.0, 8.0, 8.0)),
        inference=InferenceConfig(roi_size=(64, 64, 64)),
    )
    return save_bundle(tmp_path_factory.mktemp("bundle") / "tiny_server", model, config, cache)


@pytest.fixture(scope="module")
def phantom():
    from TextGuidedSegLib.data.phantom import PhantomConfig, make_phantom
    from TextGuidedSegLib.io import Volume

    made = make_phantom(PhantomConfig(shape=(48, 48, 24), spacing=(6.0, 6.0, 6.0)))
    return Volume(made.image, made.affine, source="phantom")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A ``textguidedseg serve`` process with a token, a 1 MiB volume bound and a 24 MiB cache bound."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    command = [sys.executable, "-m", "TextGuidedSegLib.cli", "--log-level", "WARNING", "serve"]
    command += ["--token", TOKEN, "--device", "cpu", "--max-volume-mb", "1", "--max-cache-mb", "24"]
    with open(log, "wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, cwd=REPO_ROOT)
    line = process.stdout.readline().decode()
    match = re.match(r"Serving on (http://127\.0\.0\.1:\d+)$", line.strip())
    assert match, f"unexpected first line {line!r}; log: {log.read_text()}"
    yield service.ServiceClient(match.group(1), TOKEN)
    process.terminate()
    process.wait(10)


def run_job(client, bundle, volume_id, prompt, **options):
    status = client.submit(str(bundle), volume_id, prompt, {"device": "cpu", **options})
    status = service.wait_for_job(client, status["job_id"], lambda *a: None, None, "phantom")
    result, summary = client.result(status["job_id"])
    client.forget(status["job_id"])
    return result, status


def assert_labels_agree(actual: np.ndarray, expected: np.ndarray, what: str = "") -> None:
    """Same grid and dtype, and at most 0.1% of voxels differ: a re-prompt reads the encoder features from
    the bfloat16 feature cache (``inference.feature_cache``), the in-process reference computes them."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    assert set(np.unique(actual)) == set(np.unique(expected)), what
    assert np.mean(actual != expected) <= 1e-3, (what, int(np.sum(actual != expected)))


def in_process(bundle, volume, prompt):
    from TextGuidedSegLib.bundle import load_bundle
    from TextGuidedSegLib.inference import Segmenter

    return Segmenter(load_bundle(bundle), device="cpu", progress=False).segment(volume, prompt)


def test_segment_then_reprompt_without_resending_the_volume(server, tiny_bundle, phantom):
    volume_id = server.upload_volume(phantom.array, phantom.affine, "phantom")
    encodes = server.health()["encode_count"]
    first, first_status = run_job(server, tiny_bundle, volume_id, "liver and spleen", probabilities=True)
    second, second_status = run_job(server, tiny_bundle, volume_id, "both kidneys")
    assert server.health()["encode_count"] == encodes + 1
    assert (first_status["reused_encoding"], second_status["reused_encoding"]) == (False, True)
    assert [s.name for s in second.segments] == ["Right Kidney", "Left Kidney"]
    for result, prompt in ((first, "liver and spleen"), (second, "both kidneys")):
        expected = in_process(tiny_bundle, phantom, prompt)
        assert result.labels.shape == phantom.shape and result.labels.dtype == expected.labels.dtype
        assert_labels_agree(result.labels, expected.labels)
        assert [s.voxels for s in result.segments] == np.bincount(result.labels.ravel())[1:].tolist()
    assert first.probabilities.shape == (2, *phantom.shape) and first.probabilities.dtype == np.float32
    assert first.provenance["bundle"]["name"] == "tiny_server"


def test_bad_requests_get_4xx_naming_the_problem(server, tiny_bundle, phantom):
    volume_id = server.upload_volume(phantom.array, phantom.affine)
    cases = [
        (
            lambda: service.ServiceClient(server.url, "wrong-token-xxxxxxxx").upload_volume(
                phantom.array, phantom.affine
            ),
            401,
            "token",
        ),
        (
            lambda: service.ServiceClient(server.url).submit(str(tiny_bundle), volume_id, "liver", {}),
            401,
            "Bearer",
        ),
        (
            lambda: server.request("POST", "/jobs", {"bundle": "x", "volume": volume_id}),
            422,
            "unknown field 'volume'",
        ),
        (lambda: server.request("POST", "/jobs", b"{not json"), 422, "malformed request body"),
        (lambda: server.submit(str(tiny_bundle), volume_id, "liver", {"overlapp": 0.5}), 422, "'overlapp'"),
        (
            lambda: server.submit(str(tiny_bundle), volume_id, "liver", {"overlap": 2}),
            422,
            "overlap must be in [0, 1)",
        ),
        (lambda: server.submit(str(tiny_bundle), "no-such-id", "liver", {}), 404, "'no-such-id' is unknown"),
        (lambda: server.status("no-such-job"), 404, "'no-such-job' is unknown"),
        (
            lambda: server.upload_volume(np.zeros((80, 80, 80), np.float32), np.eye(4)),
            413,
            "--max-volume-mb 1",
        ),
        (lambda: server.request("POST", "/volumes", b"not an npz"), 422, "not an .npz archive"),
    ]
    for call, status, words in cases:
        with pytest.raises(service.ServerError) as caught:
            call()
        assert caught.value.status == status, caught.value
        assert words in caught.value.detail, caught.value.detail
    assert server.health()["status"] == "ok"


@pytest.mark.slow
def test_cancel_mid_run_then_the_next_job_works(server, tiny_bundle, phantom):
    # the phantom's voxels on an 18 mm grid: 256 windows at overlap 0.9 with flips, so the job is long
    stretched = phantom.affine @ np.diag([3.0, 3.0, 3.0, 1.0])
    volume_id = server.upload_volume(phantom.array, stretched)
    options = {"device": "cpu", "overlap": 0.9, "flip_tta": True, "sw_batch_size": 1}
    status = server.submit(str(tiny_bundle), volume_id, "liver", options)
    cancel = threading.Event()

    def progress(stage, done, total):
        if stage == "segment":
            cancel.set()

    started = time.monotonic()
    with pytest.raises(service.JobCancelled):
        service.wait_for_job(server, status["job_id"], progress, cancel, "phantom")
    for _ in range(200):
        state = server.status(status["job_id"])
        if state["state"] != "running":
            break
        time.sleep(0.05)
    assert state["state"] == "cancelled" and state["done"] < state["total"], state
    assert time.monotonic() - started < 60
    result, _ = run_job(server, tiny_bundle, server.upload_volume(phantom.array, phantom.affine), "spleen")
    assert_labels_agree(result.labels, in_process(tiny_bundle, phantom, "spleen").labels)


@pytest.mark.slow
def test_twenty_requests_from_four_clients_are_correct_and_memory_bounded(server, tiny_bundle, phantom):
    volumes = [phantom, type(phantom)(np.flip(phantom.array, 0).copy(), phantom.affine)]
    expected = {(v, p): in_process(tiny_bundle, volumes[v], p).labels for v in range(2) for p in PROMPTS}
    clients = [service.ServiceClient(server.url, TOKEN) for _ in range(4)]
    ids = [[c.upload_volume(v.array, v.affine) for v in volumes] for c in clients]
    requests = [(n % 4, n % 2, PROMPTS[n % len(PROMPTS)]) for n in range(20)]
    bound = server.health()["max_cache_bytes"]
    peaks = []

    def one(request):
        client, volume, prompt = request
        result, _ = run_job(clients[client], tiny_bundle, ids[client][volume], prompt)
        peaks.append(server.health()["cache_bytes"])
        return result.labels

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, requests))
    assert len({e.tobytes() for e in expected.values()}) == len(expected)  # distinct questions, answers
    for (_client, volume, prompt), labels in zip(requests, answers, strict=True):
        assert_labels_agree(labels, expected[(volume, prompt)], f"{prompt} on volume {volume}")
        nearest = min(expected, key=lambda key: int(np.sum(labels != expected[key])))
        assert nearest == (volume, prompt), (nearest, volume, prompt)  # no answer went to another request
    assert max(peaks) <= bound, (max(peaks), bound)
