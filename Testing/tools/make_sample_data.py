"""Write the extension's sample data, its SampleData thumbnail and the Extensions Index screenshot.

Usage (from the repository root)::

    .venv/bin/python Testing/tools/make_sample_data.py            # rewrite the files in the repository
    .venv/bin/python Testing/tools/make_sample_data.py --out DIR  # write them elsewhere (the tests do)
    .venv/bin/python Testing/tools/make_sample_data.py --demo     # screenshot from the demo bundle's result

Writes, from the library's procedural phantom on the demo bundle's 2.5 mm grid (seed 400, unseen in
training):

- ``TextGuidedSeg/Resources/SampleData/TextGuidedSegPhantomCT.nrrd``: the CT (int16 HU, gzip);
- ``TextGuidedSeg/Resources/SampleData/TextGuidedSegPhantomCT.seg.nrrd``: its reference segmentation
  (named, coloured, terminology-coded segments);
- ``TextGuidedSeg/Resources/SampleData/TextGuidedSegPhantomCT.png``: the SampleData thumbnail;
- ``TextGuidedSeg/Resources/SampleData/SampleData.json``: file names, node names, load types, SHA256;
- ``Screenshot01.png`` (repository root): an axial and a coronal slice with the segments of "liver, spleen
  and both kidneys" overlaid: the demo bundle's result with ``--demo`` (minutes on a CPU), else the
  reference segments of those structures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_FOLDER = Path("TextGuidedSeg") / "Resources" / "SampleData"
SCREENSHOT = Path("Screenshot01.png")
SAMPLE_NAME = "TextGuidedSegPhantomCT"
SEED = 400
SPACING = (2.5, 2.5, 2.5)
PROMPT = "liver, spleen and both kidneys"
PROMPT_NAMES = ("Liver", "Spleen", "Right Kidney", "Left Kidney")


def sampledata_module():
    """``TextGuidedSegLogic/sampledata.py`` loaded on its own (its package imports slicer; it does not)."""
    import importlib.util

    path = REPO_ROOT / "TextGuidedSeg" / "TextGuidedSegLogic" / "sampledata.py"
    spec = importlib.util.spec_from_file_location("textguidedseg_sampledata", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_phantom():
    """The sample phantom (the library's, on the demo's field of view at the demo bundle's spacing)."""
    from TextGuidedSegLib.data.phantom import make_phantom as make
    from TextGuidedSegLib.demo import demo_phantom_config

    return make(demo_phantom_config(SPACING, seed=SEED))


def segment_descriptions(phantom) -> list:
    """One description per phantom structure the default taxonomy knows (name, colour, terminology)."""
    from types import SimpleNamespace

    from TextGuidedSegLib.taxonomy import get_taxonomy

    taxonomy = get_taxonomy()
    known = set(taxonomy.class_names)
    described = []
    for label_id, class_name in sorted(phantom.label_names.items()):
        if class_name not in known or not (phantom.labels == label_id).any():
            continue
        structure = taxonomy[class_name]
        described.append(
            SimpleNamespace(
                label_id=label_id,
                name=structure.name,
                color=tuple(int(c) for c in structure.terminology.color),
                terminology=structure.terminology.slicer_entry(),
            )
        )
    return described


def overlay_rgb(image: np.ndarray, labels: np.ndarray, colors: dict[int, tuple[int, int, int]]) -> np.ndarray:
    """An ``(H, W, 3)`` float RGB slice: the CT in a soft-tissue window, segments blended at 50 %."""
    window = np.clip((image.astype(np.float32) + 160.0) / 400.0, 0.0, 1.0)
    rgb = np.repeat(window[..., None], 3, axis=-1)
    for label_id, color in colors.items():
        inside = labels == label_id
        rgb[inside] = 0.5 * rgb[inside] + 0.5 * np.asarray(color, dtype=np.float32) / 255.0
    return rgb


def radiological(slice_ij: np.ndarray) -> np.ndarray:
    """An ``(I, J)`` RAS slice as displayed in radiological convention (patient's right on the left)."""
    return np.flipud(np.fliplr(slice_ij.T))


def demo_labels(phantom, segments) -> tuple[np.ndarray, list]:
    """The demo bundle's ``(I, J, K)`` label map of :data:`PROMPT` on the phantom, and its segments."""
    from TextGuidedSegLib.bundle import load_bundle
    from TextGuidedSegLib.demo import DEFAULT_DEMO_BUNDLE
    from TextGuidedSegLib.inference import Segmenter
    from TextGuidedSegLib.io.volume import Volume

    volume = Volume(array=phantom.image.astype(np.float32), affine=phantom.affine, source="sample phantom")
    result = Segmenter(load_bundle(DEFAULT_DEMO_BUNDLE)).segment(volume, PROMPT)
    return result.labels, list(result.segments)


def reference_labels(phantom, segments) -> tuple[np.ndarray, list]:
    """The phantom's reference label map of the structures of :data:`PROMPT` only, and their segments."""
    chosen = [s for s in segments if s.name in PROMPT_NAMES]
    return np.where(np.isin(phantom.labels, [s.label_id for s in chosen]), phantom.labels, 0), chosen


def render(
    phantom, labels, segments, path: Path, size_inches: tuple[float, float], dpi: int, titles: bool
) -> None:
    """Save an axial (and, for the screenshot, coronal) view of the phantom with ``labels`` overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {s.label_id: s.color for s in segments}
    k = int(np.argmax([(labels[:, :, k] > 0).sum() for k in range(labels.shape[2])]))
    axial = overlay_rgb(radiological(phantom.image[:, :, k]), radiological(labels[:, :, k]), colors)
    views = [("Axial", axial)]
    if titles:
        j = int(np.argmax([(labels[:, j, :] > 0).sum() for j in range(labels.shape[1])]))
        coronal_image = np.flipud(np.flipud(phantom.image[:, j, :]).T)
        coronal_labels = np.flipud(np.flipud(labels[:, j, :]).T)
        views.append(("Coronal", overlay_rgb(coronal_image, coronal_labels, colors)))
    figure, axes = plt.subplots(1, len(views), figsize=size_inches, dpi=dpi, squeeze=False)
    for axis, (title, rgb) in zip(axes[0], views, strict=True):
        axis.imshow(rgb, interpolation="nearest", aspect="equal")
        axis.set_axis_off()
        if titles:
            axis.set_title(title, fontsize=9)
    if titles:
        figure.suptitle(f'Text prompt: "{PROMPT}"', fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi, metadata={"Software": None})
    plt.close(figure)


def write_all(out: Path, demo: bool = False) -> dict:
    """Write every file under ``out`` (the repository layout); return the manifest. ``demo``: render the
    screenshot from the demo bundle's result instead of the reference segments."""
    import SimpleITK as sitk

    from TextGuidedSegLib.io.itk_geometry import array_affine_to_sitk
    from TextGuidedSegLib.io.seg_nrrd import save_seg_nrrd
    from TextGuidedSegLib.io.volume import Volume

    sampledata = sampledata_module()
    MANIFEST, sha256_file = sampledata.MANIFEST, sampledata.sha256_file  # noqa: N806

    phantom = make_phantom()
    segments = segment_descriptions(phantom)
    folder = out / SAMPLE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    ct_path = folder / f"{SAMPLE_NAME}.nrrd"
    seg_path = folder / f"{SAMPLE_NAME}.seg.nrrd"
    sitk.WriteImage(array_affine_to_sitk(phantom.image.astype(np.int16), phantom.affine), str(ct_path), True)
    labels = np.where(np.isin(phantom.labels, [s.label_id for s in segments]), phantom.labels, 0)
    reference = Volume(array=phantom.image.astype(np.float32), affine=phantom.affine, source=ct_path.name)
    save_seg_nrrd(seg_path, labels.astype(np.uint8), segments, reference)
    render(phantom, labels, segments, folder / f"{SAMPLE_NAME}.png", (1.28, 1.28), 100, titles=False)
    shown, shown_segments = (demo_labels if demo else reference_labels)(phantom, segments)
    render(phantom, shown, shown_segments, out / SCREENSHOT, (8.0, 4.4), 100, titles=True)
    manifest = {
        "generator": "Testing/tools/make_sample_data.py",
        "phantom": {"seed": SEED, "spacing": list(SPACING), "shape": list(phantom.image.shape)},
        "sources": [
            {
                "sampleName": SAMPLE_NAME,
                "thumbnail": f"{SAMPLE_NAME}.png",
                "files": [
                    {
                        "fileName": ct_path.name,
                        "nodeName": SAMPLE_NAME,
                        "loadFileType": "VolumeFile",
                        "sha256": sha256_file(ct_path),
                    },
                    {
                        "fileName": seg_path.name,
                        "nodeName": f"{SAMPLE_NAME} reference",
                        "loadFileType": "SegmentationFile",
                        "sha256": sha256_file(seg_path),
                    },
                ],
            }
        ],
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT, help="root to write under (default: the repo)")
    parser.add_argument("--demo", action="store_true", help="screenshot from the demo bundle (slow on a CPU)")
    args = parser.parse_args(argv)
    manifest = write_all(args.out, demo=args.demo)
    for entry in manifest["sources"][0]["files"]:
        print(f"{entry['fileName']}: SHA256 {entry['sha256']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
