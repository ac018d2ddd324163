"""``SegmentationOptions``: validated once, one name in every layer, ``None`` resolved to the bundle's value
by the ``Segmenter``, and the Slicer parameter node mapped to it field for field
(``TextGuidedSegLogic/parameters.py``, loaded on its own: it imports neither slicer nor Qt).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
import typing
from typing import Annotated

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, StandInModel

from TextGuidedSegLib.bundle import load_bundle
from TextGuidedSegLib.inference import SegmentationOptions, Segmenter, count_windows
from TextGuidedSegLib.io import Volume

PARAMETERS_FILE = REPO_ROOT / "TextGuidedSeg" / "TextGuidedSegLogic" / "parameters.py"
GLOSSARY = [
    "device",
    "precision",
    "overlap",
    "threshold",
    "sw_batch_size",
    "largest_component",
    "split_laterality",
    "flip_tta",
    "probabilities",
    "force",
]
RANGE = object()  # stands for the panel's WithinRange annotation


@pytest.fixture(scope="module")
def parameters():
    spec = importlib.util.spec_from_file_location("option_parameters", PARAMETERS_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class WindowCounter(StandInModel, torch.nn.Module):
    """Records the batch size of every call; logits rise with intensity, the same for every query."""

    predicts_volume = False

    def __init__(self, config) -> None:
        super().__init__(config)
        self.batches: list[int] = []

    def forward(self, image, text=None, class_indices=None):
        self.batches.append(image.shape[0])
        return 40.0 * (image - 0.5).expand(-1, text.shape[1], -1, -1, -1)


def ramp_volume() -> Volume:
    """A 48 x 40 x 36 CT at 3 mm whose HU rise along I from -200 to 270."""
    hu = np.linspace(-200.0, 270.0, 48, dtype=np.float32)[:, None, None]
    array = np.broadcast_to(hu, (48, 40, 36)).copy()
    return Volume(array=array, affine=np.diag([3.0, 3.0, 3.0, 1.0]))


# -- the dataclass ------------------------------------------------------------------------------------------


def test_the_fields_are_the_glossary_names_and_none_is_the_bundles_value():
    assert SegmentationOptions.names() == GLOSSARY
    defaults = SegmentationOptions()
    assert (defaults.overlap, defaults.threshold, defaults.sw_batch_size) == (None, None, None)
    glossary = (REPO_ROOT / "TextGuidedSegLib" / "__init__.py").read_text()
    assert "``options``: ``SegmentationOptions`` fields" in glossary


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"overlap": 1.0}, r"overlap must be in \[0, 1\), got 1.0"),
        ({"overlap": -0.1}, r"overlap must be in \[0, 1\), got -0.1"),
        ({"threshold": 0.0}, r"threshold must be in \(0, 1\), got 0.0"),
        ({"threshold": 1.0}, r"threshold must be in \(0, 1\), got 1.0"),
        ({"sw_batch_size": 0}, r"sw_batch_size must be >= 1, got 0"),
        ({"sw_batch_size": 1.5}, r"sw_batch_size must be an integer, got 1.5"),
        ({"sw_batch_size": True}, r"sw_batch_size must be an integer, got True"),
        ({"device": "tpu"}, r"device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
        ({"precision": "f64"}, r"precision must be one of auto, float32, bfloat16, float16, got 'f64'"),
        ({"flip_tta": "yes"}, r"flip_tta must be true or false, got 'yes'"),
        ({"probabilities": 1}, r"probabilities must be true or false, got 1"),
    ],
)
def test_invalid_values_are_refused_naming_the_option(changes, message):
    with pytest.raises(ValueError, match=message):
        SegmentationOptions(**changes)
    with pytest.raises(ValueError, match=message):
        SegmentationOptions().replace(**changes)
    with pytest.raises(ValueError, match=message):
        SegmentationOptions.from_dict(changes)


def test_unknown_names_are_refused_listing_the_valid_ones(make_bundle):
    listed = r"'uncertainty'.*valid.*device.*precision.*overlap.*flip_tta.*probabilities"
    with pytest.raises(ValueError, match=listed):
        SegmentationOptions().replace(uncertainty=True)
    with pytest.raises(ValueError, match=listed):
        SegmentationOptions.from_dict({"uncertainty": True})
    with pytest.raises(ValueError, match=r"'return_probabilities'.*valid") as refused:
        SegmentationOptions.from_dict({"return_probabilities": True, "probability_volumes": True})
    assert "'probability_volumes'" in str(refused.value)
    with pytest.raises(ValueError, match="must be an object, got list"):
        SegmentationOptions.from_dict(["device"])
    bundle = load_bundle(make_bundle())
    with pytest.raises(ValueError, match=listed):
        Segmenter(bundle, device="cpu", progress=False, uncertainty=True)
    with pytest.raises(TypeError, match="options must be a SegmentationOptions, got dict"):
        Segmenter(bundle, {"device": "cpu"})


def test_to_dict_and_from_dict_round_trip_through_json():
    options = SegmentationOptions(
        device="cpu",
        precision="bfloat16",
        overlap=0.25,
        sw_batch_size=3,
        split_laterality=True,
        flip_tta=True,
    )
    data = json.loads(json.dumps(options.to_dict()))
    assert data == {
        "device": "cpu",
        "precision": "bfloat16",
        "overlap": 0.25,
        "threshold": None,
        "sw_batch_size": 3,
        "largest_component": False,
        "split_laterality": True,
        "flip_tta": True,
        "probabilities": False,
        "force": False,
    }
    assert SegmentationOptions.from_dict(data) == options
    assert SegmentationOptions.from_dict({}) == SegmentationOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.overlap = 0.5


# -- the Segmenter ----------------------------------------------------------------------------------------


def test_the_segmenter_resolves_none_to_the_bundles_values_and_runs_with_them(make_bundle):
    bundle = load_bundle(make_bundle(spacing=3.0, roi_size=32))
    bundle.config.inference = dataclasses.replace(
        bundle.config.inference, overlap=0.25, threshold=0.4, sw_batch_size=2
    )
    bundle.model = WindowCounter(bundle.model.config)
    volume = ramp_volume()

    own = Segmenter(bundle, device="cpu", progress=False)
    assert own.options == SegmentationOptions(device="cpu")  # the options keep None ...
    assert (own.overlap, own.threshold, own.sw_batch_size) == (0.25, 0.4, 2)  # ... the run uses the bundle's
    assert own.settings.roi_size == bundle.config.inference.roi_size
    totals = []
    result = own.segment(volume, "liver", progress_callback=lambda done, total: totals.append(total))
    windows = count_windows(own.prepare(volume).image.shape[2:], (32, 32, 32), 0.25)
    assert totals[-1] == windows > 2
    assert sum(bundle.model.batches) == windows and max(bundle.model.batches) == 2
    assert result.probabilities is None and result.uncertainty is None

    bundle.model.batches.clear()
    options = SegmentationOptions(
        device="cpu", overlap=0.5, threshold=0.6, sw_batch_size=1, probabilities=True
    )
    chosen = Segmenter(bundle, options, progress=False)
    assert chosen.options is options
    assert (chosen.overlap, chosen.threshold, chosen.sw_batch_size) == (0.5, 0.6, 1)
    result = chosen.segment(volume, "liver")
    assert sum(bundle.model.batches) == count_windows(chosen.prepare(volume).image.shape[2:], (32,) * 3, 0.5)
    assert set(bundle.model.batches) == {1}
    assert result.probabilities is not None
    # the label map is the probabilities thresholded at the chosen 0.6, not the bundle's 0.4
    np.testing.assert_array_equal(result.labels == 1, np.asarray(result.probabilities[0]) >= 0.6)
    assert bundle.config.inference.overlap == 0.25, "the bundle's own settings are left alone"


def test_keyword_changes_apply_on_top_of_the_options(make_bundle):
    bundle = load_bundle(make_bundle())
    base = SegmentationOptions(device="cpu", overlap=0.1, largest_component=True)
    segmenter = Segmenter(bundle, base, progress=False, overlap=0.3, flip_tta=True)
    assert segmenter.options == base.replace(overlap=0.3, flip_tta=True)
    assert (segmenter.overlap, segmenter.options.flip_tta, segmenter.largest_component) == (0.3, True, True)
    with pytest.raises(ValueError, match="float16 needs a CUDA device"):
        Segmenter(bundle, device="cpu", precision="float16")


# -- the Slicer parameter node ---------------------------------------------------------------------------


def test_the_parameter_members_are_the_option_names_with_a_flag_for_the_bundles_value(parameters):
    names = parameters.option_parameter_names()
    assert [n for n in names if not n.endswith("_from_bundle")] == GLOSSARY
    assert [n for n in names if n.endswith("_from_bundle")] == [
        "overlap_from_bundle",
        "threshold_from_bundle",
        "sw_batch_size_from_bundle",
    ]
    base = parameters.option_parameters()
    hints = typing.get_type_hints(base)
    assert list(hints) == list(names)
    assert (hints["overlap"], hints["sw_batch_size"], hints["flip_tta"], hints["device"]) == (
        float,
        int,
        bool,
        str,
    )
    assert all(hints[n] is bool and getattr(base, n) is True for n in names if n.endswith("_from_bundle"))
    # the defaults of the members are the options' defaults
    assert parameters.options_from_parameters(base()) == SegmentationOptions()


def test_a_panel_class_derived_as_slicer_reads_it(parameters):
    """What ``@parameterNodeWrapper`` reads of a class (``typing.get_type_hints(cls, include_extras=True)``
    and ``hasattr(cls, name)`` for defaults, Slicer's ``parameterNodeWrapper/wrapper.py: _processClass``) for
    a class built as the panel's ``TextGuidedSegParameterNode``: its re-declared numbers win."""

    class Panel(parameters.option_parameters()):
        prompt: str = ""
        overlap: Annotated[float, RANGE] = 0.5

    members = typing.get_type_hints(Panel, include_extras=True)
    assert set(parameters.option_parameter_names()) | {"prompt"} == set(members)
    assert members["overlap"] == Annotated[float, RANGE] and Panel.overlap == 0.5
    assert all(hasattr(Panel, name) for name in members)
    panel = Panel()
    assert parameters.options_from_parameters(panel).overlap is None  # "bundle default" is ticked
    panel.overlap_from_bundle = False
    assert parameters.options_from_parameters(panel).overlap == 0.5


def test_parameters_map_to_options_field_for_field(parameters):
    stored = {
        "device": "cpu",
        "precision": "float32",
        "overlap": 0.3,
        "overlap_from_bundle": False,
        "threshold": 0.7,
        "threshold_from_bundle": True,  # the number is kept for the panel, the bundle's value is used
        "sw_batch_size": 4,
        "sw_batch_size_from_bundle": False,
        "largest_component": True,
        "split_laterality": False,
        "flip_tta": True,
        "probabilities": True,
        "bundle": "demo",  # not an option: ignored
    }
    options = parameters.options_from_parameters(stored)
    assert options == SegmentationOptions(
        device="cpu",
        precision="float32",
        overlap=0.3,
        threshold=None,
        sw_batch_size=4,
        largest_component=True,
        flip_tta=True,
        probabilities=True,
    )
    back = parameters.parameters_from_options(options)
    assert back["threshold_from_bundle"] is True and "threshold" not in back
    assert parameters.options_from_parameters(back) == options
    assert parameters.options_from_parameters({"device": "cuda"}) == SegmentationOptions(device="cuda")
    assert parameters.options_from_parameters({}, probabilities=True).probabilities is True
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\), got 0.0"):
        parameters.options_from_parameters({"threshold": 0.0, "threshold_from_bundle": False})


def test_the_panel_can_derive_its_parameter_node_at_start_up_without_the_model_stack():
    """``TextGuidedSeg.py`` calls ``option_parameters()`` when Slicer loads it, before the dependency check:
    the library's options module must need nothing beyond the standard library."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('p', {str(PARAMETERS_FILE)!r})\n"
        "p = importlib.util.module_from_spec(spec); spec.loader.exec_module(p)\n"
        "p.option_parameters(); p.options_from_parameters({'flip_tta': True})\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'torch', 'monai', 'scipy'}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"
