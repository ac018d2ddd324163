"""Procedural abdominal CT phantoms: a CT image in HU and its label map, different for every seed.

No real CT or pretrained weights can be downloaded where this project trains and tests, so the phantom is
what it trains, evaluates, benchmarks and demos on. It is built to look like an upper-abdominal CT to a
segmentation network: a body outline with skin, subcutaneous fat and an abdominal-wall muscle layer, ribs,
lung bases, visceral fat, bowel loops and a gas-filled colon, and the labelled structures

    liver, spleen, right_kidney, left_kidney, stomach, pancreas, gallbladder, aorta, inferior_vena_cava,
    vertebra

in their anatomical places, with realistic Hounsfield units (portal-venous phase by default), partial-volume
smoothing and correlated noise.

Geometry. Every shape is defined in world millimetres, RAS+ (nibabel's convention: the affine maps voxel
``(i, j, k)`` to ``(x, y, z)`` with ``+x`` towards the patient's Right, ``+y`` Anterior, ``+z`` Superior), so
the patient's liver has ``x > 0`` and the spleen ``x < 0``. The volume is centred on the world origin; the
default grid (128 x 128 x 64 voxels of 2.5 mm = 32 x 32 x 16 cm) holds the upper abdomen from the liver dome
to the lower poles of the kidneys. Any grid samples the same anatomy: a finer or anisotropic spacing over
the same field of view gives the same patient, a smaller field of view crops it.

Variation per seed: size of the abdominal cavity (+-6 %) and fat thickness (body 24-31 cm wide); the size
(+-15 %, liver and kidneys +-12 %, and +-5 % per axis), position (the whole abdomen up to 1.5 cm
cranio-caudally, each structure up to 1 cm per axis: centroids range over 2-3 cm), orientation (up to 10
degrees) and shape (low-frequency surface bumps) of each structure; a smooth deformation of the whole body
(a few mm); contrast enhancement, tissue HU offsets, stomach filling and gas, bowel loops and texture.
Structures are painted in a fixed order (a later one replaces an earlier one where they meet), so the
label map is exclusive: bowel, liver, stomach, spleen, pancreas, gallbladder, kidneys, IVC, aorta, muscles,
vertebrae.

Example::

    from TextGuidedSegLib.data.phantom import PhantomConfig, make_phantom, write_phantoms

    phantom = make_phantom(PhantomConfig(seed=3))   # image (128, 128, 64) int16 HU, labels uint8
    list_file = write_phantoms("out/phantoms", n=20, seed=0)   # images/, labels/, labels.json, phantom.txt
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from TextGuidedSegLib.inference.provenance import PHANTOM_MARKER

logger = logging.getLogger(__name__)

#: class_name -> label_id of the phantom's label maps (0 is background). ``vertebra`` (the lower thoracic
#: and lumbar vertebrae, bone only: discs and spinal canal excluded) is not in the 32-class taxonomy.
LABEL_IDS: dict[str, int] = {
    "liver": 1,
    "spleen": 2,
    "right_kidney": 3,
    "left_kidney": 4,
    "stomach": 5,
    "pancreas": 6,
    "gallbladder": 7,
    "aorta": 8,
    "inferior_vena_cava": 9,
    "vertebra": 10,
}

#: label_id -> class_name, the inverse of :data:`LABEL_IDS` (what ``labels.json`` holds).
LABEL_NAMES: dict[int, str] = {label_id: class_name for class_name, label_id in LABEL_IDS.items()}

#: Lesions a phantom may hold (``PhantomConfig(liver_tumor=True)``): class_name -> label_id in the exclusive
#: label map; each lies inside its host in :data:`LESION_HOSTS` (``Phantom.mask`` of the host includes it).
LESION_LABEL_IDS: dict[str, int] = {"liver_tumor": 11}
#: Lesion class_name -> the structure it lies in.
LESION_HOSTS: dict[str, str] = {"liver_tumor": "liver"}

#: Tissues the phantom is painted with: name -> (native HU, portal-venous HU, texture std in HU). A tissue
#: gets its label where it is painted (kidney tissues the label of their side); several tissues share a label
#: (kidney cortex / medulla / pelvis; stomach wall / fluid / gas; vertebral cortical / cancellous bone).
TISSUES: dict[str, tuple[float, float, float]] = {
    "air": (-1000.0, -1000.0, 0.0),
    "skin": (30.0, 40.0, 4.0),
    "subcutaneous_fat": (-105.0, -105.0, 8.0),
    "muscle": (50.0, 55.0, 6.0),
    "visceral_fat": (-90.0, -90.0, 10.0),
    "rib": (450.0, 450.0, 60.0),
    "lung": (-860.0, -860.0, 25.0),
    "bowel_wall": (40.0, 75.0, 6.0),
    "bowel_fluid": (15.0, 15.0, 6.0),
    "bowel_gas": (-1000.0, -1000.0, 0.0),
    "stool": (20.0, 20.0, 30.0),
    "liver": (60.0, 100.0, 6.0),
    "hepatic_vessel": (45.0, 160.0, 8.0),
    "spleen": (50.0, 110.0, 6.0),
    "kidney_cortex": (35.0, 160.0, 8.0),
    "kidney_medulla": (30.0, 120.0, 8.0),
    "renal_pelvis": (10.0, 15.0, 4.0),
    "stomach_wall": (40.0, 70.0, 6.0),
    "stomach_fluid": (10.0, 15.0, 10.0),
    "stomach_gas": (-1000.0, -1000.0, 0.0),
    "pancreas": (45.0, 90.0, 10.0),
    "gallbladder": (10.0, 10.0, 3.0),
    "aorta": (45.0, 180.0, 6.0),
    "inferior_vena_cava": (40.0, 120.0, 10.0),
    "portal_vein": (45.0, 160.0, 8.0),
    "vertebra_cortical": (700.0, 700.0, 50.0),
    "vertebra_cancellous": (250.0, 250.0, 40.0),
    "disc": (90.0, 90.0, 8.0),
    "spinal_canal": (20.0, 20.0, 4.0),
}

#: Contrast phases: the HU column of :data:`TISSUES` each uses.
PHASES: tuple[str, ...] = ("native", "venous")

# Lesion tissues, as :data:`TISSUES` but after them (so phantoms without lesions draw the same random
# numbers): a hypovascular liver tumour (a metastasis), about 45 HU below enhanced liver.
_LESION_TISSUES: dict[str, tuple[float, float, float]] = {"liver_tumor": (40.0, 55.0, 10.0)}
_TISSUE_IDS: dict[str, int] = {name: index for index, name in enumerate([*TISSUES, *_LESION_TISSUES])}
_HU_MIN, _HU_MAX = -1024, 3071  # the range a CT scanner writes
_PSF_MM = 0.8  # in-plane point-spread std of the scanner, added to voxel integration


@dataclass(frozen=True)
class PhantomConfig:
    """How one phantom is sampled: the grid, the noise, the contrast phase and the random seed.

    Args:
        shape: ``(I, J, K)`` voxels along the world x (right), y (anterior) and z (superior) axes.
        spacing: ``(sx, sy, sz)`` voxel size in mm, anisotropic allowed (e.g. ``(0.8, 0.8, 5.0)``).
            ``shape * spacing`` is the field of view; the anatomy spans about 30 x 23 cm in-plane.
        noise_hu: standard deviation of the (slightly correlated) Gaussian noise in HU; 0 for none.
        seed: the random seed; one seed is one patient, reproducibly.
        phase: ``"venous"`` (portal-venous contrast: liver ~100 HU, aorta ~180 HU) or ``"native"``.
        bowel: add bowel loops and a colon (unlabelled distractors) to the visceral fat.
        liver_tumor: add a hypodense tumour (10-18 mm radius) inside the liver, label ``liver_tumor`` (11);
            everything else stays as without it (own random stream), except the image near the tumour.

    Examples::

        PhantomConfig()                                              # 32 x 32 x 16 cm at 2.5 mm
        PhantomConfig(seed=3, liver_tumor=True)                      # the same patient with a liver tumour
        PhantomConfig(shape=(400, 400, 32), spacing=(0.8, 0.8, 5.0), seed=7)
    """

    shape: tuple[int, int, int] = (128, 128, 64)
    spacing: tuple[float, float, float] = (2.5, 2.5, 2.5)
    noise_hu: float = 15.0
    seed: int = 0
    phase: str = "venous"
    bowel: bool = True
    liver_tumor: bool = False

    def __post_init__(self) -> None:
        shape = tuple(int(n) for n in self.shape)
        spacing = tuple(float(s) for s in self.spacing)
        if len(shape) != 3 or min(shape) < 2:
            raise ValueError(f"shape must be 3 voxel counts >= 2 (I, J, K), got {self.shape!r}")
        if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"spacing must be 3 positive voxel sizes in mm, got {self.spacing!r}")
        if not (math.isfinite(self.noise_hu) and self.noise_hu >= 0):
            raise ValueError(
                f"noise_hu must be a non-negative standard deviation in HU, got {self.noise_hu!r}"
            )
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {self.phase!r}")
        object.__setattr__(self, "shape", shape)  # accept lists (from JSON), store tuples
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "seed", int(self.seed))

    @property
    def affine(self) -> np.ndarray:
        """``(4, 4)`` float64 voxel -> RAS mm affine: diagonal ``spacing``, volume centred on the origin."""
        affine = np.diag([*self.spacing, 1.0])
        affine[:3, 3] = -(np.asarray(self.shape) - 1) / 2 * np.asarray(self.spacing)
        return affine

    def to_dict(self) -> dict:
        """The config as JSON-ready values (lists for tuples)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> PhantomConfig:
        """Build a config from :meth:`to_dict` output; unknown keys raise ``ValueError`` naming them."""
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(
                f"unknown PhantomConfig keys {unknown}; known: {[f.name for f in dataclasses.fields(cls)]}"
            )
        return cls(**data)


@dataclass
class Phantom:
    """One phantom CT and its label map, on the same grid.

    Attributes:
        image: ``(I, J, K)`` int16 CT in Hounsfield units, air -1000, clipped to [-1024, 3071].
        labels: ``(I, J, K)`` uint8 label ids, exclusive (one structure per voxel), 0 = background;
            ids from :data:`LABEL_IDS` (and :data:`LESION_LABEL_IDS` with a lesion: its voxels carry the
            lesion's id, not its host's; :meth:`mask` gives the host with its lesions).
        affine: ``(4, 4)`` float64 voxel ``(i, j, k)`` -> world RAS mm.
        label_names: label_id -> class_name for every structure (background excluded).
        config: the config the phantom was made from.
    """

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    label_names: dict[int, str]
    config: PhantomConfig = field(repr=False)

    def mask(self, class_name: str) -> np.ndarray:
        """``(I, J, K)`` bool mask of a structure, its lesions included (the liver with its tumour)."""
        ids = [i for i, name in self.label_names.items() if class_name in (name, LESION_HOSTS.get(name))]
        if not ids:
            raise KeyError(
                f"{class_name!r} is not a structure of this phantom: {sorted(self.label_names.values())}"
            )
        return np.isin(self.labels, ids)

    def volumes_ml(self) -> dict[str, float]:
        """class_name -> volume of its voxels in mL (the field of view only)."""
        voxel_ml = float(np.prod(self.config.spacing)) / 1000.0
        counts = np.bincount(self.labels.ravel(), minlength=max(self.label_names) + 1)
        return {name: float(counts[label_id]) * voxel_ml for label_id, name in self.label_names.items()}

    def save(self, image_path: str | Path, labels_path: str | Path) -> None:
        """Write the image (int16) and the label map (uint8) as NIfTI files with the phantom's affine."""
        _save_nifti(self.image, self.affine, Path(image_path))
        _save_nifti(self.labels, self.affine, Path(labels_path))


def make_phantom(config: PhantomConfig | None = None) -> Phantom:
    """Make one phantom: sample a patient from ``config.seed`` and render it on ``config``'s grid.

    Args:
        config: grid, noise, phase and seed; ``PhantomConfig()`` when omitted.

    Returns:
        A :class:`Phantom` with ``image`` ``(I, J, K)`` int16 HU, ``labels`` ``(I, J, K)`` uint8 and the
        voxel -> RAS affine. The same config gives identical arrays.
    """
    if config is None:
        config = PhantomConfig()
    # two streams: the patient (grid-independent draws only) and the image (texture, noise)
    patient_rng, image_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(2))
    canvas = _Canvas(config.shape, config.spacing, _warp_modes(patient_rng))
    _paint_anatomy(canvas, patient_rng, bowel=config.bowel)
    label_names = dict(LABEL_NAMES)
    if config.liver_tumor:  # a third stream: the patient and the image draws stay those without a tumour
        lesion_rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(2,)))
        if _paint_liver_tumor(canvas, lesion_rng):
            label_names[LESION_LABEL_IDS["liver_tumor"]] = "liver_tumor"
    image = _render(canvas, image_rng, config)
    missing = [name for name, label_id in LABEL_IDS.items() if not (canvas.labels == label_id).any()]
    if missing:
        logger.warning(
            "phantom seed %d: %s outside the %s mm field of view",
            config.seed,
            ", ".join(missing),
            "x".join(f"{n * s:.0f}" for n, s in zip(config.shape, config.spacing, strict=True)),
        )
    return Phantom(
        image=image, labels=canvas.labels, affine=config.affine, label_names=label_names, config=config
    )


def case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` of a phantom set made with ``seed`` (independent of the set's size)."""
    return int(np.random.SeedSequence(seed, spawn_key=(index,)).generate_state(1)[0])


def write_phantoms(
    folder: str | Path,
    n: int,
    config: PhantomConfig | None = None,
    seed: int = 0,
    list_name: str = "phantom.txt",
    progress: bool = True,
) -> Path:
    """Write ``n`` phantoms as NIfTI files plus the list file the trainer reads.

    Layout under ``folder``: ``images/phantom_000.nii.gz`` (int16 HU), ``labels/phantom_000.nii.gz`` (uint8),
    ``labels.json`` (label_id -> class_name), ``phantoms.json`` (the config and every case's seed) and
    ``list_name``, one case per line: ``images/phantom_000.nii.gz<TAB>labels/phantom_000.nii.gz`` (paths
    relative to ``folder``). Existing files of the same names are overwritten.

    Args:
        folder: output folder, created when missing.
        n: number of cases, >= 1.
        config: grid, noise and phase of every case (its ``seed`` is ignored); default ``PhantomConfig()``.
        seed: the set's seed; case ``i`` uses :func:`case_seed` ``(seed, i)``, so the set is reproducible and
            its first cases do not change when ``n`` grows.
        list_name: file name of the case list.
        progress: show a tqdm progress bar over cases.

    Returns:
        The path of the list file.
    """
    from tqdm.auto import tqdm

    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive number of cases, got {n!r}")
    if Path(list_name).name != list_name:
        raise ValueError(f"list_name must be a file name inside folder, got {list_name!r}")
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    if config is None:
        config = PhantomConfig()
    width = max(3, len(str(n - 1)))
    lines, seeds = [], []
    for index in tqdm(range(int(n)), desc="phantoms", unit="case", disable=not progress):
        case = dataclasses.replace(config, seed=case_seed(seed, index))
        phantom = make_phantom(case)
        name = f"phantom_{index:0{width}d}.nii.gz"
        phantom.save(folder / "images" / name, folder / "labels" / name)
        lines.append(f"images/{name}\tlabels/{name}\n")
        seeds.append(case.seed)
    (folder / "labels.json").write_text(
        json.dumps({str(k): v for k, v in LABEL_NAMES.items()}, indent=1) + "\n"
    )
    manifest = {"seed": seed, "config": config.to_dict(), "case_seeds": seeds}
    (folder / "phantoms.json").write_text(json.dumps(manifest, indent=1) + "\n")
    list_path = folder / list_name
    list_path.write_text("".join(lines))
    logger.info("wrote %d phantoms to %s (list %s)", n, folder, list_path.name)
    return list_path


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write ``array`` unscaled, as its own dtype, with ``affine`` as both qform and sform (scanner, mm), and
    ``PHANTOM_MARKER`` as its description."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_slope_inter(1.0, 0.0)
    image.header["descrip"] = PHANTOM_MARKER.encode()  # tells the Segmenter this is no real CT
    nib.save(image, path)


# ------------------------------------------------------------------------------------------------------------
# Geometry: shapes as level functions of warped world coordinates (inside where level < 1)
# ------------------------------------------------------------------------------------------------------------

_Coords = tuple[np.ndarray, np.ndarray, np.ndarray]
_Window = tuple[slice, slice, slice]


def _rotation(degrees: Sequence[float]) -> np.ndarray:
    """``(3, 3)`` rotation ``Rz @ Ry @ Rx`` from angles about x, y, z (degrees); columns: the local axes."""
    ax, ay, az = np.radians(degrees)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class _Ellipsoid:
    """Rotated ellipsoid with low-frequency surface bumps; level 1 on the surface.

    ``bumps`` is ``(n, 5)``: wave vector (3) in radius-normalised local coordinates, phase, relative size.
    """

    center: np.ndarray
    radii: np.ndarray
    rotation: np.ndarray
    bumps: np.ndarray

    def local(self, p: _Coords) -> _Coords:
        """Radius-normalised local coordinates (the unit ball is the undeformed ellipsoid)."""
        d = [p[a] - np.float32(self.center[a]) for a in range(3)]
        r = self.rotation
        return tuple(
            (np.float32(r[0, a]) * d[0] + np.float32(r[1, a]) * d[1] + np.float32(r[2, a]) * d[2])
            * np.float32(1.0 / self.radii[a])
            for a in range(3)
        )

    def level(self, p: _Coords, q: _Coords | None = None) -> np.ndarray:
        q = self.local(p) if q is None else q
        level = np.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2])
        if len(self.bumps):
            bump = sum(
                np.float32(amp)
                * np.sin(
                    np.float32(kx) * q[0] + np.float32(ky) * q[1] + np.float32(kz) * q[2] + np.float32(ph)
                )
                for kx, ky, kz, ph, amp in self.bumps
            )
            level *= 1 + bump
        return level

    def box(self) -> tuple[np.ndarray, np.ndarray]:
        grow = 1.0 / (1.0 - float(np.abs(self.bumps[:, 4]).sum())) if len(self.bumps) else 1.0
        half = np.sqrt(((self.rotation * self.radii[None, :]) ** 2).sum(axis=1)) * grow
        return self.center - half, self.center + half


@dataclass(frozen=True)
class _Tube:
    """Polyline of ``(n, 3)`` points with ``(n,)`` radii interpolated along each segment (rounded ends)."""

    points: np.ndarray
    radii: np.ndarray

    def level(self, p: _Coords) -> np.ndarray:
        best = None
        for a, b, ra, rb in zip(
            self.points[:-1], self.points[1:], self.radii[:-1], self.radii[1:], strict=True
        ):
            ab = (b - a).astype(np.float32)
            d = [p[i] - np.float32(a[i]) for i in range(3)]
            t = (d[0] * ab[0] + d[1] * ab[1] + d[2] * ab[2]) * np.float32(1.0 / max(float(ab @ ab), 1e-6))
            np.clip(t, 0, 1, out=t)
            dist2 = sum((d[i] - t * ab[i]) ** 2 for i in range(3))
            level = np.sqrt(dist2) / (np.float32(ra) + t * np.float32(rb - ra))
            best = level if best is None else np.minimum(best, level)
        return best

    def box(self) -> tuple[np.ndarray, np.ndarray]:
        radii = self.radii[:, None]
        return (self.points - radii).min(axis=0), (self.points + radii).max(axis=0)


@dataclass(frozen=True)
class _Column:
    """Elliptic cylinder along z whose centre follows quadratics ``c(z) = c0 + c1 z + c2 z^2`` (x and y)."""

    cx: tuple[float, float, float]
    cy: tuple[float, float, float]
    rx: float
    ry: float

    def center(self, z: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        return (
            self.cx[0] + self.cx[1] * z + self.cx[2] * z * z,
            self.cy[0] + self.cy[1] * z + self.cy[2] * z * z,
        )

    def level(self, p: _Coords) -> np.ndarray:
        cx, cy = self.center(p[2])
        return np.sqrt(((p[0] - cx) / np.float32(self.rx)) ** 2 + ((p[1] - cy) / np.float32(self.ry)) ** 2)

    def box(self, z_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        z = np.linspace(*z_range, 9)
        cx, cy = self.center(z)
        lo = np.array([cx.min() - self.rx, cy.min() - self.ry, z_range[0]])
        hi = np.array([cx.max() + self.rx, cy.max() + self.ry, z_range[1]])
        return lo, hi


def _warp_modes(
    rng: np.random.Generator,
    wavelength: tuple[float, float] = (150.0, 300.0),
    amplitude: tuple[float, float] = (1.5, 4.0),
) -> np.ndarray:
    """``(6, 6)`` random plane waves: component (0-2), wave vector (3, rad/mm), phase, amplitude (mm) each.

    Summed per component they are the smooth deformation of the whole body (a few mm over 15-30 cm).
    """
    waves = []
    for component in (0, 1, 2, 0, 1, 2):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        k = direction * 2 * math.pi / rng.uniform(*wavelength)
        waves.append([component, *k, rng.uniform(0, 2 * math.pi), rng.uniform(*amplitude)])
    return np.array(waves)


class _Canvas:
    """The voxel grid, its warped world coordinates, and the tissue and label maps being painted.

    ``tissue`` and ``labels`` are ``(I, J, K)`` uint8; painting writes both, so a later structure replaces an
    earlier one and every voxel holds exactly one label (the painting order is the priority).
    """

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float], warp: np.ndarray):
        self.shape = shape
        self.spacing = np.asarray(spacing, dtype=np.float64)
        self.origin = -(np.asarray(shape) - 1) / 2 * self.spacing
        self.axes = [
            (self.origin[a] + self.spacing[a] * np.arange(shape[a])).astype(np.float32) for a in range(3)
        ]
        grid = np.meshgrid(*self.axes, indexing="ij", sparse=True)
        coords = [np.broadcast_to(g, shape).astype(np.float32) for g in grid]
        for component, kx, ky, kz, phase, amplitude in warp:
            # sin(a + b) = sin(a) cos(b) + cos(a) sin(b), a along x, b over (y, z): no full-volume sin
            a = grid[0] * np.float32(kx) + np.float32(phase)
            b = grid[1] * np.float32(ky) + grid[2] * np.float32(kz)
            amp = np.float32(amplitude)
            coords[int(component)] += (amp * np.sin(a)) * np.cos(b) + (amp * np.cos(a)) * np.sin(b)
        self.coords: _Coords = tuple(coords)
        self.margin = float(np.abs(warp[:, 5]).sum()) if len(warp) else 0.0
        self.tissue = np.zeros(shape, dtype=np.uint8)
        self.labels = np.zeros(shape, dtype=np.uint8)
        self.cavity = np.zeros(shape, dtype=bool)

    def window(self, lo: np.ndarray, hi: np.ndarray) -> _Window | None:
        """Voxel slices holding the world box ``[lo, hi]`` (mm, before warping), or None outside the grid."""
        first = np.floor((np.asarray(lo) - self.margin - self.origin) / self.spacing).astype(int)
        last = np.ceil((np.asarray(hi) + self.margin - self.origin) / self.spacing).astype(int) + 1
        first = np.clip(first, 0, self.shape)
        last = np.clip(last, 0, self.shape)
        if (last <= first).any():
            return None
        return tuple(slice(int(f), int(e)) for f, e in zip(first, last, strict=True))

    def at(self, window: _Window) -> _Coords:
        """Warped world coordinates (mm) of the voxels in ``window``: three float32 arrays."""
        return tuple(c[window] for c in self.coords)

    def paint(
        self, window: _Window, mask: np.ndarray, tissue: str, label: int = 0, cavity: bool = False
    ) -> None:
        """Set ``tissue`` and ``label`` where ``mask`` (inside ``window``); ``cavity``: only in the cavity."""
        if cavity:
            mask = mask & self.cavity[window]
        self.tissue[window][mask] = _TISSUE_IDS[tissue]
        self.labels[window][mask] = label

    def paint_index(self, index: np.ndarray, tissue: str, label: int = 0) -> None:
        """Set ``tissue`` and ``label`` at flat (C-order) voxel indices."""
        self.tissue.ravel()[index] = _TISSUE_IDS[tissue]
        self.labels.ravel()[index] = label

    def paint_shape(
        self, shape: _Ellipsoid | _Tube, tissue: str, label: int = 0, cavity: bool = True
    ) -> tuple[_Window, np.ndarray] | None:
        """Paint the inside (level < 1) of a shape; return its window and mask (None: outside the grid)."""
        window = self.window(*shape.box())
        if window is None:
            return None
        mask = shape.level(self.at(window)) < 1
        self.paint(window, mask, tissue, label, cavity)
        return window, mask


# ------------------------------------------------------------------------------------------------------------
# Anatomy: where each structure goes (mm, RAS, body centred on the origin) and how it varies per seed
# ------------------------------------------------------------------------------------------------------------


def _bumps(
    rng: np.random.Generator, n: int = 3, amplitude: float = 0.06, frequency: float = 2.5
) -> np.ndarray:
    """``(n, 5)`` random low-frequency surface bumps for :class:`_Ellipsoid` (total relative amplitude)."""
    waves = rng.normal(size=(n, 3))
    waves *= (frequency * rng.uniform(0.6, 1.2, size=n) / np.linalg.norm(waves, axis=1))[:, None]
    amps = rng.dirichlet(np.ones(n)) * amplitude * rng.uniform(0.5, 1.0)
    return np.column_stack([waves, rng.uniform(0, 2 * math.pi, n), amps])


def _organ(
    rng: np.random.Generator,
    center: Sequence[float],
    radii: Sequence[float],
    angles: Sequence[float],
    shift: float = 10.0,
    turn: float = 10.0,
    bumps: float = 0.06,
    size: float = 0.15,
) -> _Ellipsoid:
    """An ellipsoid at a random offset (+-``shift`` mm), size (+-``size``, and +-5 % per axis), orientation
    (+-``turn`` degrees) and surface (bumps of relative height ``bumps``)."""
    center = np.asarray(center, float) + rng.uniform(-shift, shift, 3)
    radii = np.asarray(radii, float) * rng.uniform(1 - size, 1 + size) * rng.uniform(0.95, 1.05, 3)
    rotation = _rotation(np.asarray(angles, float) + rng.uniform(-turn, turn, 3))
    return _Ellipsoid(center, radii, rotation, _bumps(rng, amplitude=bumps))


def _superellipse(
    x: np.ndarray, y: np.ndarray, a: float, b_ant: float, b_post: float, n: float
) -> np.ndarray:
    """Level of a body outline: semi-axes ``a`` (lateral), ``b_ant`` / ``b_post`` (front / back), power n."""
    b = np.where(y > 0, np.float32(b_ant), np.float32(b_post))
    return (np.abs(x / np.float32(a)) ** n + np.abs(y / b) ** n) ** np.float32(1.0 / n)


def _paint_anatomy(canvas: _Canvas, rng: np.random.Generator, bowel: bool = True) -> None:
    """Sample a patient from ``rng`` and paint it onto ``canvas`` (tissue and label maps, cavity mask)."""
    x, y, z = canvas.coords
    zlo, zhi = -400.0, 400.0  # z extent of the columns (aorta, spine, ...): beyond any field of view
    dz = rng.uniform(-15, 15)  # global cranio-caudal shift: which part of the abdomen the scan covers
    scale = rng.uniform(0.94, 1.06)  # size of the abdominal cavity, and in-plane of everything in it

    # ---- body wall: the cavity, then muscle and subcutaneous fat (habitus: fat thickness) outside it -------
    # semi-axes (mm) of the cavity: lateral, anterior, posterior
    cavity_axes = np.array([110.0, 76.0, 95.0]) * scale * rng.uniform(0.97, 1.03, 3)
    n = rng.uniform(2.1, 2.6)
    wall = rng.uniform(8.0, 13.0)
    fat = rng.uniform(6.0, 22.0) * np.array([1.0, rng.uniform(0.9, 1.3), rng.uniform(0.5, 0.8)])
    inner = _superellipse(x, y, *cavity_axes, n)
    under_fat = _superellipse(x, y, *(cavity_axes + wall), n)
    a = cavity_axes[0] + wall + fat[0]
    outer = _superellipse(x, y, *(cavity_axes + wall + fat), n)
    everywhere = (slice(None),) * 3
    canvas.paint(everywhere, outer < 1, "skin")
    canvas.paint(everywhere, outer < 1 - 2.0 / a, "subcutaneous_fat")
    canvas.paint(everywhere, under_fat < 1, "muscle")
    np.less(inner, 1, out=canvas.cavity)
    canvas.paint(everywhere, canvas.cavity, "visceral_fat")

    # ---- ribs: in the inner part of the wall, dropping ~15 cm from the spine to the front, above the costal
    # margin; angle 0 is the posterior midline, pi the anterior midline
    period, drop, offset, half = (
        rng.uniform(30, 38),
        rng.uniform(140, 200),
        rng.uniform(0, 40),
        rng.uniform(3.5, 5),
    )
    margin_z, margin_rise = rng.uniform(-45, -20), rng.uniform(50, 90)
    wall_index = np.flatnonzero((inner >= 1) & (under_fat < 1))
    wx, wy, wz = (c.ravel()[wall_index] for c in canvas.coords)
    deep = _superellipse(wx, wy, *(cavity_axes + wall - 2), n) < 1
    angle = np.arctan2(np.abs(wx), -wy)
    rib_phase = np.mod(wz - dz + drop * angle / np.pi + offset, period)
    ribs = deep & (np.abs(rib_phase - period / 2) < half) & (angle > 0.35) & (angle < 2.6)
    ribs &= wz - dz > margin_z + margin_rise * np.clip(angle - 1.6, 0, None)  # costal margin, rising in front
    canvas.paint_index(wall_index[ribs], "rib")

    # ---- lung bases above the diaphragm, posterior (the liver and spleen push into them) -------------------
    for side in (1, -1):
        lung = _organ(
            rng, (side * 80 * scale, -75 * scale, 145 + dz), (80, 120, 100), (0, 0, 0), turn=5, bumps=0.03
        )
        canvas.paint_shape(lung, "lung")

    # ---- bowel: small-bowel loops and the transverse colon, unlabelled distractors -------------------------
    bowel_rng = np.random.default_rng(rng.integers(2**63))  # own stream: bowel=False keeps the same patient
    if bowel:
        _paint_bowel(canvas, bowel_rng, scale, dz)

    # ---- liver: right lobe and left lobe, with portal and hepatic vein branches ----------------------------
    right_lobe = _organ(
        rng, (68 * scale, 16 * scale, 12 + dz), (78, 84, 82), (0, -10, 0), bumps=0.05, size=0.12
    )
    left_lobe = _organ(rng, (-12 * scale, 42 * scale, 36 + dz), (60, 34, 36), (0, 15, -15), bumps=0.08)
    liver = LABEL_IDS["liver"]
    window = canvas.window(*right_lobe.box())
    if window is not None:  # the inferior (visceral) surface rises medially, above the pancreatic head
        p = canvas.at(window)
        cx, cy, cz = right_lobe.center
        above = p[2] > cz - 64 + (cx - p[0]) - 0.5 * (p[1] - cy) + 0.005 * (p[1] - cy) ** 2
        canvas.paint(window, (right_lobe.level(p) < 1) & above, "liver", liver, cavity=True)
    canvas.paint_shape(left_lobe, "liver", liver)
    hilum = np.array([32 * scale, 12 * scale, 5 + dz]) + rng.uniform(-6, 6, 3)
    ivc_top = np.array([22 * scale, 2 * scale, 62 + dz])
    for start, count in ((hilum, 3), (ivc_top, 3)):
        for _ in range(count):
            target = right_lobe.center + right_lobe.rotation @ (right_lobe.radii * rng.uniform(-0.7, 0.7, 3))
            vessel = _Tube(np.stack([start, target]), np.array([rng.uniform(4, 6.5), 2.0]))
            window = canvas.window(*vessel.box())
            if window is not None:
                inside = (vessel.level(canvas.at(window)) < 1) & (canvas.labels[window] == liver)
                canvas.paint(window, inside, "hepatic_vessel", liver)

    # ---- stomach, left upper quadrant, behind the left lobe (indenting it): wall, fluid, anterior gas ------
    stomach = _organ(rng, (-52 * scale, 30 * scale, 32 + dz), (36, 28, 56), (20, -30, 0))
    gas_fraction = rng.uniform(-0.1, 0.7)
    hit = canvas.paint_shape(stomach, "stomach_wall", LABEL_IDS["stomach"])
    if hit is not None:
        window, mask = hit
        p = canvas.at(window)
        lumen = mask & (stomach.level(p) < 1 - 5.0 / stomach.radii.mean()) & canvas.cavity[window]
        gas = p[1] >= stomach.center[1] + stomach.radii[1] * gas_fraction  # supine: gas rises anteriorly
        canvas.paint(window, lumen & ~gas, "stomach_fluid", LABEL_IDS["stomach"])
        canvas.paint(window, lumen & gas, "stomach_gas", LABEL_IDS["stomach"])

    # ---- spleen: left posterolateral, long axis along the ribs ---------------------------------------------
    spleen = _organ(rng, (-82 * scale, -35 * scale, 44 + dz), (25, 54, 46), (-10, 0, 35))
    canvas.paint_shape(spleen, "spleen", LABEL_IDS["spleen"])

    # ---- pancreas: head right of the midline, body anterior to the aorta, tail to the splenic hilum --------
    pancreas_points = np.array(
        [[34, 10, -28], [14, 24, -14], [-12, 20, -6], [-42, 2, 6], [-68, -20, 14]], float
    )
    pancreas_points[:, :2] *= scale
    pancreas_points += rng.uniform(-5, 5, pancreas_points.shape) + [0, 0, dz + rng.uniform(-8, 8)]
    pancreas = _Tube(pancreas_points, np.array([17, 12, 11, 10, 9]) * rng.uniform(0.85, 1.15))
    canvas.paint_shape(pancreas, "pancreas", LABEL_IDS["pancreas"])
    splenic_vein = _Tube(pancreas_points[1:] + [0, -9, 2], np.full(4, rng.uniform(4, 5.5)))
    canvas.paint_shape(splenic_vein, "portal_vein")
    portal_vein = _Tube(np.stack([pancreas_points[1] + [0, -9, 2], hilum]), np.full(2, rng.uniform(5.5, 7)))
    canvas.paint_shape(portal_vein, "portal_vein")

    # ---- gallbladder: under the liver, fundus pointing anterior-inferior -----------------------------------
    gallbladder = _organ(rng, (45 * scale, 38 * scale, -18 + dz), (15, 17, 32), (35, -10, 0), shift=6)
    canvas.paint_shape(gallbladder, "gallbladder", LABEL_IDS["gallbladder"])

    # ---- kidneys: posterior-lateral, upper poles medial and posterior, the right one lower -----------------
    for side, name, z_center in ((1, "right_kidney", -20), (-1, "left_kidney", -10)):
        kidney = _organ(
            rng,
            (side * 72 * scale, -40 * scale, z_center + dz),
            (32, 25, 53),
            (15, -side * 12, -side * 30),
            turn=8,
            size=0.12,
        )
        hit = canvas.paint_shape(kidney, "kidney_cortex", LABEL_IDS[name])
        if hit is None:
            continue
        window, mask = hit
        q = kidney.local(canvas.at(window))
        depth = kidney.level(canvas.at(window), q)
        # the renal sinus (pelvis) opens at the hilum, on the medial side of the local u axis
        medial_u = -side * kidney.rotation[0, 0] / max(abs(kidney.rotation[0, 0]), 1e-6)
        sinus = ((q[0] - np.float32(0.55 * medial_u)) / 0.5) ** 2 + (q[1] / 0.4) ** 2 + (q[2] / 0.45) ** 2 < 1
        canvas.paint(window, mask & (depth < 0.78), "kidney_medulla", LABEL_IDS[name], cavity=True)
        canvas.paint(window, mask & sinus, "renal_pelvis", LABEL_IDS[name], cavity=True)

    # ---- great vessels: IVC right of midline (anterior as it enters the liver), aorta left of midline ------
    ivc = _Column(
        (24 * scale + rng.uniform(-5, 5), rng.uniform(-0.03, 0.03), 0.0),
        (-2 * scale + rng.uniform(-4, 4) - 0.12 * dz, 0.12, 0.0),
        rng.uniform(12, 16) * scale,
        rng.uniform(8, 11) * scale,
    )
    aorta = _Column(
        (-14 * scale + rng.uniform(-4, 4), rng.uniform(-0.03, 0.03), 0.0),
        (-8 * scale + rng.uniform(-3, 3), rng.uniform(-0.05, 0.05), rng.uniform(-2e-4, 2e-4)),
        rng.uniform(10, 13) * scale,
        rng.uniform(10, 13) * scale,
    )
    for column, name in ((ivc, "inferior_vena_cava"), (aorta, "aorta")):
        window = canvas.window(*column.box((zlo, zhi)))
        if window is not None:
            canvas.paint(window, column.level(canvas.at(window)) < 1, name, LABEL_IDS[name], cavity=True)

    # ---- muscles: psoas (growing caudally from about T12) and the paraspinal muscles -----------------------
    y_body = -40.0 * scale + rng.uniform(-4, 4)  # centre of the vertebral bodies
    y_canal = y_body - 32.0 * scale
    for side in (1, -1):
        paraspinal = _Column((side * 34 * scale, 0, 0), (y_canal - 14 * scale, 0, 0), 27 * scale, 21 * scale)
        window = canvas.window(*paraspinal.box((zlo, zhi)))
        if window is not None:
            canvas.paint(window, paraspinal.level(canvas.at(window)) < 1, "muscle")
    psoas_top, psoas_max = rng.uniform(10, 35) + dz, 24.0 * scale
    window = canvas.window(np.array([-90.0, y_body - 30, zlo]), np.array([90.0, y_body + 26, zhi]))
    if window is not None:
        px, py, pz = canvas.at(window)
        radius = np.clip(3.0 + 0.16 * (psoas_top - pz), 0.0, psoas_max)
        for side in (1, -1):
            psoas = (px - side * (22 * scale + 0.8 * radius)) ** 2 + (py - (y_body - 2)) ** 2 < radius**2
            canvas.paint(window, psoas, "muscle")

    # ---- vertebrae: body (cortical rim, cancellous core), discs, arch around the canal, processes ----------
    vertebra = LABEL_IDS["vertebra"]
    v_period = rng.uniform(32, 38) * scale
    disc_height = rng.uniform(7, 10) * scale
    body = _Column(
        (0, 0, 0), (y_body, 0, 0), 22 * scale * rng.uniform(0.9, 1.1), 17 * scale * rng.uniform(0.9, 1.1)
    )
    first_disc = dz + rng.uniform(0, v_period)
    window = canvas.window(*_Column((0, 0, 0), (y_canal, 0, 0), 45 * scale, 36 * scale).box((zlo, zhi)))
    if window is not None:
        vx, vy, vz = canvas.at(window)
        level = body.level((vx, vy, vz))
        segment = np.mod(vz - first_disc, v_period)  # position within one vertebra + disc
        in_bone = segment >= disc_height
        endplate = (segment < disc_height + 1.5) | (segment > v_period - 1.5)
        canvas.paint(window, (level < 1) & ~in_bone, "disc")
        canvas.paint(window, (level < 1) & in_bone, "vertebra_cortical", vertebra)
        canvas.paint(window, (level < 0.85) & in_bone & ~endplate, "vertebra_cancellous", vertebra)
        ring = np.sqrt((vx / (17 * scale)) ** 2 + ((vy - y_canal) / (15 * scale)) ** 2)
        canal = np.sqrt((vx / (9 * scale)) ** 2 + ((vy - y_canal) / (8 * scale)) ** 2) < 1
        spinous_segment = np.mod(segment + 8 * scale, v_period) >= disc_height
        spinous = (np.abs(vx) < 4 * scale) & (vy < y_canal) & (vy > y_canal - 34 * scale) & spinous_segment
        transverse = (np.abs(vx) < 38 * scale) & (np.abs(vy - y_canal - 3 * scale) < 3.5 * scale)
        transverse &= (segment > disc_height + 6 * scale) & (segment < disc_height + 14 * scale)
        canvas.paint(window, ((ring < 1) & in_bone) | spinous | transverse, "vertebra_cortical", vertebra)
        canvas.paint(window, canal, "spinal_canal")


def _paint_bowel(canvas: _Canvas, rng: np.random.Generator, scale: float, dz: float) -> None:
    """Paint small-bowel loops (fluid or gas) and a transverse colon (stool) into the visceral fat."""
    for _ in range(int(rng.integers(8, 16))):
        center = (rng.uniform(-90, 90) * scale, rng.uniform(-20, 70) * scale, rng.uniform(-95, 0) + dz)
        loop = _organ(rng, center, rng.uniform(9, 17, 3), rng.uniform(-90, 90, 3), shift=0, turn=0)
        content = "bowel_gas" if rng.random() < 0.3 else "bowel_fluid"
        hit = canvas.paint_shape(loop, "bowel_wall")
        if hit is not None:
            window, mask = hit
            lumen = (
                mask & (loop.level(canvas.at(window)) < 1 - 2.5 / loop.radii.mean()) & canvas.cavity[window]
            )
            canvas.paint(window, lumen, content)
    colon_points = np.array([[90, 10, -30], [55, 55, -25], [0, 65, -15], [-55, 55, -5], [-90, 15, 10]], float)
    colon_points[:, :2] *= scale
    colon_points += rng.uniform(-10, 10, colon_points.shape) + [0, 0, dz]
    colon = _Tube(colon_points, rng.uniform(16, 24, len(colon_points)))
    hit = canvas.paint_shape(colon, "bowel_wall")
    if hit is not None:  # stool, mottled with gas bubbles when rendered
        window, mask = hit
        canvas.paint(window, mask & (colon.level(canvas.at(window)) < 0.85), "stool", cavity=True)


# ------------------------------------------------------------------------------------------------------------
# Rendering: tissue map -> HU, texture, partial-volume blur, noise
# ------------------------------------------------------------------------------------------------------------


def _paint_liver_tumor(canvas: _Canvas, rng: np.random.Generator) -> bool:
    """Paint a bumpy ellipsoidal tumour, radius 10-18 mm, wholly inside the liver (at least 3 mm from its
    surface where the liver allows); False when the field of view holds no liver."""
    liver = canvas.labels == LABEL_IDS["liver"]
    if not liver.any():
        logger.warning("no liver in the field of view: the phantom has no liver tumour")
        return False
    depth = ndimage.distance_transform_edt(liver, sampling=canvas.spacing)
    radius = rng.uniform(10.0, 18.0)
    inside = depth >= radius + 3.0
    if not inside.any():  # a small liver in the field of view: a smaller tumour at its deepest point
        radius = 0.6 * float(depth.max())
        inside = depth >= depth.max()
    candidates = np.flatnonzero(inside)
    index = np.unravel_index(candidates[rng.integers(len(candidates))], canvas.shape)
    center = np.array([float(c[index]) for c in canvas.coords])  # warped world mm, as shapes are tested
    radii = radius * rng.uniform(0.85, 1.15, 3)
    tumor = _Ellipsoid(center, radii, _rotation(rng.uniform(-90, 90, 3)), _bumps(rng, amplitude=0.08))
    window = canvas.window(*tumor.box())
    if window is None:
        return False
    mask = (tumor.level(canvas.at(window)) < 1) & liver[window]
    canvas.paint(window, mask, "liver_tumor", LESION_LABEL_IDS["liver_tumor"])
    return bool(mask.any())


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, ...], spacing: np.ndarray, scale_mm: float
) -> np.ndarray:
    """``shape`` float32 Gaussian random field, unit std, correlation length about ``scale_mm``."""
    coarse_shape = tuple(int(np.ceil(n * s / scale_mm)) + 2 for n, s in zip(shape, spacing, strict=True))
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape).astype(np.float32), 0.7, mode="wrap")
    field_ = ndimage.zoom(coarse, np.divide(shape, coarse_shape), order=1, grid_mode=False)
    field_ = field_[tuple(slice(0, n) for n in shape)]
    return field_ / max(float(field_.std()), 1e-6)


def _render(canvas: _Canvas, rng: np.random.Generator, config: PhantomConfig) -> np.ndarray:
    """Turn the tissue map into a CT image: ``(I, J, K)`` int16 HU (see :class:`Phantom`)."""
    column = PHASES.index(config.phase)
    tissues = [*TISSUES.values(), *_LESION_TISSUES.values()]
    table = np.array([values[column] for values in tissues], dtype=np.float32)
    native = np.array([values[0] for values in tissues], dtype=np.float32)
    if config.phase == "venous":  # the patient's enhancement: cardiac output, bolus timing
        table = native + (table - native) * np.float32(rng.uniform(0.85, 1.15))
    soft = (table > -500) & (table < 300)
    offsets = rng.normal(0.0, 4.0, len(TISSUES))  # per-patient offsets; a lesion moves with its host
    offsets = np.append(offsets, [offsets[_TISSUE_IDS["liver"]]] * len(_LESION_TISSUES))
    table += np.where(soft, offsets, 0.0).astype(np.float32)
    texture = np.array([values[2] for values in tissues], dtype=np.float32)

    image = table[canvas.tissue]
    image += texture[canvas.tissue] * _smooth_field(rng, canvas.shape, canvas.spacing, 12.0)
    stool = np.nonzero(canvas.tissue == _TISSUE_IDS["stool"])
    if len(stool[0]):  # gas bubbles (a few mm) in the stool
        window = tuple(slice(int(i.min()), int(i.max()) + 1) for i in stool)
        shape = tuple(w.stop - w.start for w in window)
        bubbles = _smooth_field(rng, shape, canvas.spacing, 5.0) > rng.uniform(0.0, 1.0)
        inside = canvas.tissue[window] == _TISSUE_IDS["stool"]
        image[window][inside & bubbles] = table[_TISSUE_IDS["bowel_gas"]]
    # partial volume: voxel integration (~0.35 voxel) combined with the scanner's in-plane PSF
    psf = np.array([_PSF_MM, _PSF_MM, 0.0])
    sigma = np.sqrt(0.35**2 + (psf / canvas.spacing) ** 2)
    image = ndimage.gaussian_filter(image, sigma, mode="nearest")
    if config.noise_hu > 0:
        noise = ndimage.gaussian_filter(rng.standard_normal(canvas.shape, dtype=np.float32), (0.6, 0.6, 0.3))
        noise *= np.float32(config.noise_hu / max(float(noise.std()), 1e-6))
        image += noise
    np.clip(image, _HU_MIN, _HU_MAX, out=image)
    return np.rint(image).astype(np.int16)
