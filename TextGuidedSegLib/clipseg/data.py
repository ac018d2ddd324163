"""2D axial slice data for CLIPSeg: 3D CT + label maps -> samples, one per (slice, structure), on disk once.

Each case goes through the same geometry and intensity steps as inference (``Segmenter.prepare``): the
volume is reoriented to RAS and resampled to ``SliceConfig.spacing`` (``to_model_space``; labels with
nearest neighbour), its raw labels are transferred into the universal32 structures with the case's dataset
(``data.label_transfer``: FLARE22, TotalSegmentator, BTCV, ... and our phantoms), then every axial slice
(fixed ``z``) becomes an image:

1. :func:`to_view`: the radiological view, ``(Y, X)``: rows anterior -> posterior, columns the patient's right
   -> left (the layout of a CT viewer, closer to CLIP's photographs than raw array order);
2. resized to ``image_size`` squared (bilinear with anti-aliasing; masks nearest);
3. intensity to [0, 1]: ``window`` (the HU window, default [-175, 250], clipped) or ``minmax`` (the seed's:
   each slice's own minimum and maximum), quantised to uint8 [0, 255].

A sample is a (slice, structure) pair of a structure the case's dataset annotates: every slice where the
structure is present, plus ``empty_ratio`` empty samples per present one, drawn (seeded) from that case's
empty pairs. Every slice of every case is stored, so predictions can be stacked back into volumes.

On disk (a folder named after the digest of the config and the source files, written once with a progress
bar, then reused; never pickled: ``np.load(..., allow_pickle=False)``)::

    images.npy     (N_slices, S, S) uint8    every axial slice of every case, case after case, z ascending
    masks.npy      (N_samples, S, S) uint8   {0, 1}, the structure's mask on the sample's slice
    samples.npy    (N_samples, 3) int32      slice index, structure index, present (1) / empty (0)
    metadata.json  format_version, key, config, structures, prompts, cases (source paths and sha256,
                   dataset, k_range, model-space shape and affine, first_slice, num_slices, annotated)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from TextGuidedSegLib.data.datasets import (
    DatasetSpec,
    UnknownDatasetError,
    dataset_for_path,
    get_dataset,
    read_list_file,
)
from TextGuidedSegLib.data.label_transfer import transfer_labels
from TextGuidedSegLib.files import sha256_file
from TextGuidedSegLib.inference.geometry import to_model_space, window_intensity
from TextGuidedSegLib.io import Volume, load_volume
from TextGuidedSegLib.taxonomy import get_taxonomy

__all__ = [
    "FLARE22_STRUCTURES",
    "INTENSITY_MODES",
    "WIDE_HU_WINDOW",
    "SliceCase",
    "SliceConfig",
    "SliceSet",
    "build_slice_set",
    "cases_from_lists",
    "crop_k",
    "from_view",
    "prepare_slices",
    "to_view",
]

logger = logging.getLogger(__name__)

SLICE_FORMAT_VERSION = 1
TAXONOMY = "universal32"
#: FLARE22's 13 organs, in FLARE22 label order (1 liver ... 13 left kidney), as universal32 class names.
FLARE22_STRUCTURES: tuple[str, ...] = (
    "liver",
    "right_kidney",
    "spleen",
    "pancreas",
    "aorta",
    "inferior_vena_cava",
    "right_adrenal_gland",
    "left_adrenal_gland",
    "gallbladder",
    "esophagus",
    "stomach",
    "duodenum",
    "left_kidney",
)
#: ``window``: the HU window -> [0, 1]; ``minmax``: each slice's own range -> [0, 1] (the seed).
INTENSITY_MODES: tuple[str, ...] = ("minmax", "window")
#: The window applied before ``minmax``: linear over any CT value, so the per-slice min-max is unchanged.
WIDE_HU_WINDOW: tuple[float, float] = (-32768.0, 32767.0)


@dataclass
class SliceConfig:
    """How volumes become 2D samples (everything that changes the slice set's content).

    Args:
        structures: universal32 class names to sample, in structure-index order (default FLARE22's 13).
        spacing: model-space voxel size (mm) along (x, y, z) the volumes are resampled to first.
        image_size: side ``S`` of the stored square slices (CLIPSeg's input, 352 for rd64-refined).
        intensity: ``minmax`` (each slice's own range, the seed) or ``window`` (``hu_window``).
        hu_window: HU window of ``intensity: window``.
        empty_ratio: empty samples (structure absent from the slice) per present sample, per case.
        prompt_template: a structure's prompt, ``{name}`` is its lower-case display name or synonym.
        seed: seed of the empty-sample draw.
    """

    structures: list[str] = field(default_factory=lambda: list(FLARE22_STRUCTURES))
    spacing: tuple[float, float, float] = (1.0, 1.0, 2.5)
    image_size: int = 352
    intensity: str = "minmax"
    hu_window: tuple[float, float] = (-175.0, 250.0)
    empty_ratio: float = 0.5
    prompt_template: str = "{name}"
    seed: int = 0

    def __post_init__(self) -> None:
        taxonomy = get_taxonomy(TAXONOMY)
        unknown = [s for s in self.structures if s not in taxonomy]
        if unknown or not self.structures or len(set(self.structures)) != len(self.structures):
            raise ValueError(
                f"slicing.structures must name distinct universal32 class names, got {self.structures} "
                f"(unknown: {unknown}); valid: {taxonomy.class_names}"
            )
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"slicing.spacing must be 3 positive mm values, got {self.spacing}")
        if self.image_size < 16 or self.image_size % 16:
            raise ValueError(
                f"slicing.image_size must be a multiple of 16 (the patch size), got {self.image_size}"
            )
        if self.intensity not in INTENSITY_MODES:
            raise ValueError(
                f"slicing.intensity must be one of {list(INTENSITY_MODES)}, got {self.intensity!r}"
            )
        low, high = (float(v) for v in self.hu_window)
        if not low < high:
            raise ValueError(f"slicing.hu_window must be (low, high) with low < high, got {self.hu_window}")
        self.hu_window = (low, high)
        if self.empty_ratio < 0:
            raise ValueError(f"slicing.empty_ratio must be >= 0, got {self.empty_ratio}")
        if "{name}" not in self.prompt_template:
            raise ValueError(f"slicing.prompt_template must contain {{name}}, got {self.prompt_template!r}")

    @property
    def model_hu_window(self) -> tuple[float, float]:
        """The HU window inference applies before this config's intensity step (wide for ``minmax``)."""
        return self.hu_window if self.intensity == "window" else WIDE_HU_WINDOW

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SliceConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise naming them."""
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown SliceConfig key(s) {unknown}")
        return cls(**data)

    def prompts(self, class_name: str) -> list[str]:
        """The prompts of a structure: the canonical one (its name) first, then one per synonym."""
        structure = get_taxonomy(TAXONOMY)[class_name]
        names = [structure.name, *structure.synonyms]
        return list(dict.fromkeys(self.prompt_template.format(name=n.lower()) for n in names))


@dataclass(frozen=True)
class SliceCase:
    """One volume to slice.

    Attributes:
        image: the CT.
        label: its raw label map, on the same grid.
        dataset: dataset key (``flare22``, ``totalseg``, ...) or a ``DatasetSpec`` (e.g. from a class map).
        name: case id.
        k_range: only voxel slices ``k0 <= k < k1`` along the volume's third array axis (before any
            reorientation); None for all.
    """

    image: Path
    label: Path
    dataset: str | DatasetSpec
    name: str
    k_range: tuple[int, int] | None = None

    @property
    def dataset_key(self) -> str:
        """The dataset's key."""
        return self.dataset.key if isinstance(self.dataset, DatasetSpec) else self.dataset


def publish_slice_folder(staging: Path, folder: Path, metadata: dict[str, Any]) -> None:
    """Write ``metadata.json`` into the finished ``staging`` folder, then move it to ``folder`` at once."""
    (staging / "metadata.json").write_text(json.dumps(metadata, indent=1) + "\n", encoding="utf-8")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(staging, folder)


def cases_from_lists(
    list_files: Sequence[str | Path], data_root: str | Path | None = None, default_dataset: str | None = None
) -> list[SliceCase]:
    """Cases of the trainer's list files (``image<TAB>label`` a line, see ``read_list_file``)."""
    cases: list[SliceCase] = []
    for list_file in list_files:
        for case in read_list_file(list_file, data_root=data_root, default_dataset=default_dataset):
            if case.label is None:
                raise ValueError(f"{list_file}:{case.line}: a CLIPSeg training case needs a label map")
            cases.append(SliceCase(case.image, case.label, case.dataset, case.name))
    return cases


def dataset_of(path: str | Path, default: str | None = None) -> str:
    """The dataset key of a file from any of its folders (``.../totalseg/ct.nii.gz`` -> ``totalseg``)."""
    parts = PurePath(path).parts
    for start in range(len(parts) - 1):
        try:
            return dataset_for_path(PurePath(*parts[start:]))
        except UnknownDatasetError:
            continue
    if default is None:
        raise ValueError(
            f"cannot tell the dataset of {path} from its folders; name it (e.g. flare22, totalseg)"
        )
    return default


def crop_k(volume: Volume, k_range: tuple[int, int] | None) -> Volume:
    """The voxel slices ``k0 <= k < k1`` of a volume (third array axis), with the matching affine."""
    if k_range is None:
        return volume
    k0, k1 = int(k_range[0]), int(k_range[1])
    if not 0 <= k0 < k1 <= volume.shape[2]:
        raise ValueError(f"k_range {k_range} is outside 0..{volume.shape[2]} of {volume.source}")
    affine = volume.affine.copy()
    affine[:3, 3] += affine[:3, 2] * k0
    return Volume(volume.array[:, :, k0:k1], affine, source=volume.source)


# ----------------------------------------------------------------------------------------------------------
# Slice geometry and intensity: one implementation for the slice set and the 2D->3D engine
# ----------------------------------------------------------------------------------------------------------


def to_view(slices: torch.Tensor) -> torch.Tensor:
    """RAS ``(..., X, Y)`` slices -> radiological view ``(..., Y, X)``: anterior up, patient's right left."""
    return slices.flip(-1, -2).transpose(-1, -2)


def from_view(view: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_view`: ``(..., Y, X)`` -> ``(..., X, Y)``."""
    return view.transpose(-1, -2).flip(-1, -2)


def minmax(slices: torch.Tensor) -> torch.Tensor:
    """Each slice of ``(N, H, W)`` scaled to [0, 1] by its own min and max (a constant slice becomes 0)."""
    flat = slices.reshape(slices.shape[0], -1)
    low = flat.min(dim=1).values[:, None, None]
    high = flat.max(dim=1).values[:, None, None]
    return (slices - low) / (high - low).clamp_min(1e-12)


def prepare_slices(unit: torch.Tensor, intensity: str, image_size: int) -> torch.Tensor:
    """Model-space slices -> CLIPSeg images.

    Args:
        unit: ``(N, X, Y)`` float32 RAS slices, ``window_intensity`` with ``SliceConfig.model_hu_window``.
        intensity: ``minmax`` or ``window`` (``window``: ``unit`` is already the final [0, 1] intensity).
        image_size: output side ``S``.

    Returns:
        ``(N, S, S)`` uint8 images in the radiological view.
    """
    view = to_view(unit.to(torch.float32))
    resized = F.interpolate(view[:, None], size=(image_size, image_size), mode="bilinear", antialias=True)[
        :, 0
    ]
    if intensity == "minmax":  # after resizing, so that every stored slice spans exactly [0, 255]
        resized = minmax(resized)
    return resized.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)


def prepare_masks(masks: torch.Tensor, image_size: int) -> torch.Tensor:
    """``(N, X, Y)`` {0, 1} RAS masks -> ``(N, S, S)`` uint8 in the view (nearest neighbour)."""
    view = to_view(masks.to(torch.float32))
    resized = F.interpolate(view[:, None], size=(image_size, image_size), mode="nearest-exact")
    return resized[:, 0].to(torch.uint8)


def slice_back(logits: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``(N, C, S, S)`` view logits -> ``(N, C, X, Y)`` RAS logits on a ``(X, Y)`` slice grid (bilinear)."""
    x, y = shape
    resized = F.interpolate(logits, size=(y, x), mode="bilinear", align_corners=False)
    return from_view(resized)


# ----------------------------------------------------------------------------------------------------------
# The slice set
# ----------------------------------------------------------------------------------------------------------


def _dataset_fingerprint(dataset: str | DatasetSpec) -> str:
    spec = dataset if isinstance(dataset, DatasetSpec) else get_dataset(dataset)
    table = {str(k): [str(t) for t in v] for k, v in sorted(spec.table.items())}
    return hashlib.sha256(json.dumps([spec.key, table], sort_keys=True).encode()).hexdigest()[:16]


def _digest(config: SliceConfig, sources: list[dict[str, Any]]) -> str:
    payload = {"format_version": SLICE_FORMAT_VERSION, "config": config.to_dict(), "cases": sources}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _sources(cases: Sequence[SliceCase]) -> list[dict[str, Any]]:
    """What identifies each case's content: names, sha256 of both files, dataset mapping, k range."""
    names = [c.name for c in cases]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"case names must be unique within a slice set; repeated: {repeated}")
    return [
        {
            "name": c.name,
            "image": str(c.image),
            "label": str(c.label),
            "dataset": c.dataset_key,
            "dataset_fingerprint": _dataset_fingerprint(c.dataset),
            "image_sha256": sha256_file(c.image),
            "label_sha256": sha256_file(c.label),
            "k_range": list(c.k_range) if c.k_range is not None else None,
        }
        for c in cases
    ]


def _slice_case(
    case: SliceCase, config: SliceConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Images ``(Z, S, S)``, masks ``(n, S, S)``, samples ``(n, 3)`` (slice in the case) and case facts."""
    volume = crop_k(load_volume(case.image), case.k_range)
    label = crop_k(load_volume(case.label), case.k_range)
    if volume.shape != label.shape or not np.allclose(volume.affine, label.affine, atol=1e-3):
        raise ValueError(
            f"case {case.name}: label {case.label} ({label.shape}) does not lie on the grid of image "
            f"{case.image} ({volume.shape})"
        )
    image = to_model_space(volume, config.spacing)
    unit = window_intensity(image, config.model_hu_window).as_tensor()[0]  # (X, Y, Z)
    raw = to_model_space(label, config.spacing, mode="nearest").as_tensor()[0]
    affine = np.asarray(image.affine, dtype=np.float64)
    transferred = transfer_labels(np.rint(raw.numpy()).astype(np.int64), case.dataset, affine=affine)
    taxonomy = get_taxonomy(TAXONOMY)
    annotated = [i for i, s in enumerate(config.structures) if taxonomy[s].label_id in transferred.annotated]
    images = prepare_slices(unit.permute(2, 0, 1), config.intensity, config.image_size).numpy()
    n_slices = images.shape[0]
    masks: list[np.ndarray] = []
    present: list[tuple[int, int]] = []
    empty: list[tuple[int, int]] = []
    by_structure: dict[int, np.ndarray] = {}
    for s in annotated:
        target = torch.from_numpy(transferred.mask(taxonomy[config.structures[s]].label_id))
        stack = prepare_masks(target.permute(2, 0, 1), config.image_size).numpy()
        by_structure[s] = stack
        for z in range(n_slices):
            (present if stack[z].any() else empty).append((z, s))
    n_empty = min(len(empty), int(round(config.empty_ratio * len(present))))
    chosen = (
        [empty[i] for i in sorted(rng.choice(len(empty), size=n_empty, replace=False))] if n_empty else []
    )
    pairs = sorted([(z, s, 1) for z, s in present] + [(z, s, 0) for z, s in chosen])
    for z, s, _ in pairs:
        masks.append(by_structure[s][z])
    size = config.image_size
    mask_array = np.stack(masks) if masks else np.zeros((0, size, size), np.uint8)
    sample_array = np.asarray(pairs, dtype=np.int32).reshape(-1, 3)
    facts = {
        "shape": [int(v) for v in unit.shape],
        "affine": affine.tolist(),
        "annotated": annotated,
        "num_present": len(present),
        "num_empty": n_empty,
    }
    return images, mask_array, sample_array, facts


def _concatenate(parts: list[Path], target: Path, shape_tail: tuple[int, ...], dtype: Any) -> int:
    """Concatenate per-case ``.npy`` files along axis 0 into one ``.npy`` (streamed through a memmap)."""
    arrays = [np.load(p, mmap_mode="r", allow_pickle=False) for p in parts]
    total = sum(a.shape[0] for a in arrays)
    out = np.lib.format.open_memmap(target, mode="w+", dtype=dtype, shape=(total, *shape_tail))
    start = 0
    for a in arrays:
        out[start : start + a.shape[0]] = a
        start += a.shape[0]
    out.flush()
    del out
    return total


def build_slice_set(
    cases: Sequence[SliceCase], config: SliceConfig, root: str | Path, progress: bool = True
) -> SliceSet:
    """Slice ``cases`` into ``root/slices-<digest>`` (or reuse it when it exists), and open it.

    The digest covers the config, the format version and each case's name, dataset mapping, ``k_range`` and
    the sha256 of its image and label, so a changed file or setting gives a new folder. The folder is
    written under a temporary name and renamed when complete.

    Returns:
        The :class:`SliceSet`.
    """
    if not cases:
        raise ValueError("build_slice_set: no cases")
    sources = _sources(cases)
    key = _digest(config, sources)
    root = Path(root)
    folder = root / f"slices-{key[:16]}"
    if (folder / "metadata.json").is_file():
        existing = SliceSet(folder)
        if existing.key == key:
            logger.info("reusing slice set %s (%d samples)", folder, len(existing))
            return existing
    root.mkdir(parents=True, exist_ok=True)
    size = config.image_size
    with tempfile.TemporaryDirectory(dir=root, prefix=".slices-") as tmp:
        staging = Path(tmp) / "set"
        staging.mkdir()
        parts: dict[str, list[Path]] = {"images": [], "masks": [], "samples": []}
        case_records = []
        first_slice = first_sample = 0
        for index, case in enumerate(tqdm(cases, desc="slicing", unit="case", disable=not progress)):
            rng = np.random.default_rng([config.seed, index])
            images, masks, samples, facts = _slice_case(case, config, rng)
            samples[:, 0] += first_slice
            for name, array in (("images", images), ("masks", masks), ("samples", samples)):
                path = Path(tmp) / f"{name}_{index:05d}.npy"
                np.save(path, array, allow_pickle=False)
                parts[name].append(path)
            case_records.append(
                {
                    **sources[index],
                    **facts,
                    "first_slice": first_slice,
                    "num_slices": int(images.shape[0]),
                    "first_sample": first_sample,
                    "num_samples": int(samples.shape[0]),
                }
            )
            first_slice += images.shape[0]
            first_sample += samples.shape[0]
            logger.info(
                "%s: %d slices, %d samples (%d present, %d empty)",
                case.name,
                images.shape[0],
                samples.shape[0],
                facts["num_present"],
                facts["num_empty"],
            )
        _concatenate(parts["images"], staging / "images.npy", (size, size), np.uint8)
        _concatenate(parts["masks"], staging / "masks.npy", (size, size), np.uint8)
        _concatenate(parts["samples"], staging / "samples.npy", (3,), np.int32)
        metadata = {
            "format_version": SLICE_FORMAT_VERSION,
            "key": key,
            "config": config.to_dict(),
            "structures": list(config.structures),
            "prompts": {s: config.prompts(s) for s in config.structures},
            "num_slices": first_slice,
            "num_samples": first_sample,
            "cases": case_records,
        }
        publish_slice_folder(staging, folder, metadata)
    logger.info("wrote slice set %s: %d slices, %d samples", folder, first_slice, first_sample)
    return SliceSet(folder)


class SliceSet:
    """A slice set folder opened read-only (arrays memory-mapped).

    Attributes:
        folder: the folder.
        key: sha256 digest of config and sources.
        config: the :class:`SliceConfig` it was built with.
        structures: class names, indexed by the samples' structure index.
        cases: per-case records of ``metadata.json``.
        images: ``(N_slices, S, S)`` uint8.
        masks: ``(N_samples, S, S)`` uint8 in {0, 1}.
        samples: ``(N_samples, 3)`` int32: slice index, structure index, present.
        slice_case: ``(N_slices,)`` case index of each slice.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / "metadata.json"
        try:
            metadata = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{meta_path}: not a readable slice set index ({err})") from err
        if metadata.get("format_version") != SLICE_FORMAT_VERSION:
            raise ValueError(
                f"{meta_path}: slice set format {metadata.get('format_version')!r} is not supported"
            )
        self.metadata = metadata
        self.key: str = metadata["key"]
        self.config = SliceConfig.from_dict(metadata["config"])
        self.structures: list[str] = list(metadata["structures"])
        self.cases: list[dict[str, Any]] = metadata["cases"]
        self.prompt_lists: dict[str, list[str]] = metadata["prompts"]
        self.images = np.load(self.folder / "images.npy", mmap_mode="r", allow_pickle=False)
        self.masks = np.load(self.folder / "masks.npy", mmap_mode="r", allow_pickle=False)
        self.samples = np.asarray(np.load(self.folder / "samples.npy", allow_pickle=False))
        if self.images.shape[0] != metadata["num_slices"] or self.masks.shape[0] != metadata["num_samples"]:
            raise ValueError(f"{self.folder}: array sizes do not match metadata.json; rebuild the slice set")
        self.slice_case = np.repeat(np.arange(len(self.cases)), [c["num_slices"] for c in self.cases]).astype(
            np.int64
        )

    def __len__(self) -> int:
        return int(self.samples.shape[0])

    def __repr__(self) -> str:
        counts = f"{len(self.cases)} cases, {self.images.shape[0]} slices, {len(self)} samples"
        return f"SliceSet({self.folder}, {counts})"

    def prompt(self, structure: int) -> str:
        """The canonical prompt of structure index ``structure``."""
        return self.prompt_lists[self.structures[structure]][0]

    def prompts(self, structure: int) -> list[str]:
        """Every prompt of a structure index (canonical first, then synonyms)."""
        return list(self.prompt_lists[self.structures[structure]])

    def case_slices(self, case: int) -> slice:
        """The slice indices of case ``case``."""
        record = self.cases[case]
        return slice(record["first_slice"], record["first_slice"] + record["num_slices"])

    def reference_volume(self, case: int, structure: int) -> np.ndarray:
        """``(Z, S, S)`` uint8 reference of a structure on every slice of a case (absent slices are zero)."""
        record = self.cases[case]
        first, count = record["first_slice"], record["num_slices"]
        size = self.config.image_size
        volume = np.zeros((count, size, size), dtype=np.uint8)
        rows = np.flatnonzero(
            (self.samples[:, 1] == structure)
            & (self.samples[:, 0] >= first)
            & (self.samples[:, 0] < first + count)
        )
        for row in rows:
            volume[self.samples[row, 0] - first] = self.masks[row]
        return volume
