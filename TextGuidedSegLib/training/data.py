"""Training and validation data: list files -> MONAI dictionary transforms -> batches, resumable mid-epoch.

Pipeline (MONAI dictionary transforms; ``image`` is the CT, ``label`` the raw label map):

1. deterministic, cached by ``data.cache``: ``LoadImaged`` -> ``EnsureChannelFirstd`` -> ``Orientationd``
   RAS -> ``Spacingd`` (bilinear / nearest) -> ``ScaleIntensityRanged`` (HU window -> [0, 1], clipped) ->
   :class:`TransferLabelsd` (raw labels -> the training structures, with the affine of the resampled grid,
   before any crop so that left/right splits see the whole body) -> ``CropForegroundd`` -> ``SpatialPadd``
   to the ROI;
2. random (training only), :class:`DatasetCropd` by the case's dataset as the seed's pipeline: ``RandZoomd``
   (``data.zoom_datasets``, the MSD ones) then ``RandCropByLabelClassesd`` (background : organ : tumour
   1:1:5, ``data.class_crop_datasets``: LiTS, MSD Task03/07/08) or ``RandCropByPosNegLabeld`` (the others;
   ``num_samples`` crops, pos:neg) -> ``RandRotate90d`` -> ``RandShiftIntensityd`` -> :class:`SampleQueriesd`
   (partial-label query sampling).

Exact resumption. The data a step sees is a pure function of ``(seed, epoch, position)``: the
:class:`ResumableSampler` orders an epoch from ``(seed, epoch)`` and hands each item its own augmentation
seed, which :class:`AugmentedDataset` installs into the random transforms before applying them. Nothing
depends on worker scheduling or on earlier draws, so a run resumed at ``(epoch, position)`` sees exactly the
batches the uninterrupted run saw, at any number of DataLoader workers.

A batch (after ``list_data_collate``; ``N = batch_size * num_samples`` crops, ``S`` structures, ``Q`` query
slots) holds ``image`` ``(N, 1, D, H, W)`` float32 in [0, 1], ``label`` ``(N, S, D, H, W)`` uint8,
``annotated`` ``(N, S)`` bool (the case's dataset annotates structure ``s``), ``class_indices`` ``(N, Q)``
int64 and ``query_mask`` ``(N, Q)`` bool, plus ``dataset`` and ``name`` (lists of str).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, MetaTensor, PersistentDataset, list_data_collate
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    RandCropByLabelClassesd,
    RandCropByPosNegLabeld,
    Randomizable,
    RandRotate90d,
    RandShiftIntensityd,
    RandZoomd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)
from torch.utils.data import DataLoader, Sampler

from TextGuidedSegLib.data.datasets import Case, get_dataset, read_list_file
from TextGuidedSegLib.data.label_transfer import transfer_labels
from TextGuidedSegLib.taxonomy import get_taxonomy

from .config import TRAINING_TAXONOMY, ConfigError, DataConfig
from .queries import sample_queries

__all__ = [
    "TUMOUR_LABEL_IDS",
    "AugmentedDataset",
    "DatasetCropd",
    "ResumableSampler",
    "SampleQueriesd",
    "TransferLabelsd",
    "build_train_loader",
    "build_val_loader",
    "case_dicts",
    "list_datasets",
    "read_cases",
    "rotate90_axes",
    "structure_channels",
]

logger = logging.getLogger(__name__)

#: Label ids of the tumour channels (kidney, liver, pancreas, hepatic-vessel, lung, colon tumour): the
#: "tumour" class of :class:`DatasetCropd`'s class-balanced crops.
TUMOUR_LABEL_IDS = frozenset({26, 27, 28, 29, 30, 31})


def structure_channels(structures: Sequence[str]) -> list[int]:
    """0-based channels of ``structures`` in the transferred 32-channel target (universal32 order)."""
    taxonomy = get_taxonomy(TRAINING_TAXONOMY)
    return [taxonomy.index(name) for name in structures]


# ----------------------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------------------


def read_cases(
    list_files: Sequence[str], data: DataConfig, structures: Sequence[str], purpose: str
) -> list[Case]:
    """Read list files; drop (with a warning) cases whose dataset annotates none of ``structures``.

    Raises:
        ConfigError: a case without a label, or no usable case at all.
        DatasetListError: a malformed list file or missing files.
    """
    channels = {c + 1 for c in structure_channels(structures)}
    cases: list[Case] = []
    for list_file in list_files:
        cases += read_list_file(
            list_file, data_root=data.data_root or None, default_dataset=data.default_dataset or None
        )
    unlabelled = [f"{c.image} (line {c.line})" for c in cases if c.label is None]
    if unlabelled:
        raise ConfigError(f"{purpose} cases need a label map; these have none: {unlabelled[:5]}")
    useless = sorted({c.dataset for c in cases if not channels & set(_reachable(c.dataset))})
    if useless:
        logger.warning(
            "%s: datasets %s annotate none of the training structures; their cases are skipped",
            purpose,
            useless,
        )
        cases = [c for c in cases if c.dataset not in useless]
    if not cases:
        raise ConfigError(
            f"no {purpose} case annotates any of the structures {list(structures)} in {list(list_files)}"
        )
    return cases


def list_datasets(list_files: Sequence[str], data: DataConfig, structures: Sequence[str]) -> list[str]:
    """The sorted dataset keys of the list files' cases that :func:`read_cases` keeps (no warnings here)."""
    channels = {c + 1 for c in structure_channels(structures)}
    keys: set[str] = set()
    for list_file in list_files:
        cases = read_list_file(
            list_file, data_root=data.data_root or None, default_dataset=data.default_dataset or None
        )
        keys.update(c.dataset for c in cases)
    return sorted(k for k in keys if channels & set(_reachable(k)))


def _reachable(dataset: str) -> tuple[int, ...]:
    """Every label id the dataset can annotate (optional raw values included)."""
    spec = get_dataset(dataset)
    return spec.channels_of(list(spec.table))


def case_dicts(cases: Sequence[Case], cache_key: str) -> list[dict[str, str]]:
    """The MONAI data dicts of ``cases``; ``cache_key`` makes a disk cache depend on the pre-processing."""
    return [
        {
            "image": str(c.image),
            "label": str(c.label),
            "dataset": c.dataset,
            "name": c.name,
            "cache_key": cache_key,
        }
        for c in cases
    ]


# ----------------------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------------------


class TransferLabelsd(MapTransform):
    """Raw label map -> ``(S, I, J, K)`` uint8 masks of the training structures, plus what is annotated.

    Uses :func:`~TextGuidedSegLib.data.label_transfer.transfer_labels` with the case's dataset (``dataset``
    key) and the label MetaTensor's current affine (after ``Orientationd``/``Spacingd``), then keeps the
    channels of the training subset in its order.

    Args:
        channels: 0-based channels of the 32-channel transferred target to keep (``structure_channels``).
        label_key: the raw label map, ``(1, I, J, K)`` MetaTensor; replaced by the masks.
        dataset_key: the dataset key of the case.
        annotated_key: written: ``(S,)`` bool, the dataset annotates the structure in this case.
    """

    def __init__(
        self,
        channels: Sequence[int],
        label_key: str = "label",
        dataset_key: str = "dataset",
        annotated_key: str = "annotated",
    ) -> None:
        super().__init__(keys=[label_key])
        self.channels = list(channels)
        self.label_key, self.dataset_key, self.annotated_key = label_key, dataset_key, annotated_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        label = d[self.label_key]
        affine = np.asarray(label.affine, dtype=np.float64) if isinstance(label, MetaTensor) else None
        if isinstance(label, MetaTensor) and str(label.meta.get("space", "RAS")).upper() == "LPS":
            affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS -> RAS world coordinates
        raw = torch.as_tensor(label).numpy()
        if raw.ndim != 4 or raw.shape[0] != 1:
            raise ValueError(f"{d.get('name', '?')}: expected a (1, I, J, K) label map, got {raw.shape}")
        transferred = transfer_labels(raw[0], d[self.dataset_key], affine, case=d.get("name"))
        target = torch.from_numpy(np.ascontiguousarray(transferred.target[self.channels]))
        d[self.label_key] = MetaTensor(target, meta=label.meta) if isinstance(label, MetaTensor) else target
        annotated = set(transferred.annotated)
        d[self.annotated_key] = torch.tensor([c + 1 in annotated for c in self.channels], dtype=torch.bool)
        return d


class SampleQueriesd(Randomizable, MapTransform):
    """Draw the crop's queries from the structures its dataset annotates (see ``sample_queries``).

    Writes ``class_indices`` ``(Q,)`` int64 and ``query_mask`` ``(Q,)`` bool.

    Args:
        num_queries: ``Q``.
        negative_fraction: share of the slots for annotated structures absent from the crop.
    """

    def __init__(
        self,
        num_queries: int,
        negative_fraction: float,
        label_key: str = "label",
        annotated_key: str = "annotated",
    ) -> None:
        MapTransform.__init__(self, keys=[label_key])
        self.num_queries, self.negative_fraction = num_queries, negative_fraction
        self.label_key, self.annotated_key = label_key, annotated_key

    def randomize(self, data: Any = None) -> None:  # draws happen in __call__ through self.R
        pass

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        label = torch.as_tensor(d[self.label_key])
        present = label.flatten(1).any(1).numpy()
        annotated = torch.as_tensor(d[self.annotated_key]).numpy()
        indices, mask = sample_queries(present, annotated, self.num_queries, self.negative_fraction, self.R)
        d["class_indices"] = torch.from_numpy(indices)
        d["query_mask"] = torch.from_numpy(mask)
        return d


class DatasetCropd(Randomizable, MapTransform):
    """The seed's per-dataset zoom and crop: ``num_samples`` crops of ``image`` and ``label``.

    A case of a dataset matching ``data.zoom_datasets`` is first zoomed (``RandZoomd``, area / nearest, size
    kept). A case of ``data.class_crop_datasets`` is cropped by ``RandCropByLabelClassesd`` on three classes,
    background (no annotated structure), organ (an annotated non-tumour structure) and tumour
    (:data:`TUMOUR_LABEL_IDS`), at ``data.class_crop_ratios``; any other case by ``RandCropByPosNegLabeld``.

    Args:
        data: the data settings.
        label_ids: the label id of each channel of ``label`` (the training structures).
    """

    def __init__(self, data: DataConfig, label_ids: Sequence[int]) -> None:
        MapTransform.__init__(self, keys=["image", "label"])
        keys = ["image", "label"]
        self.zoom_patterns = list(data.zoom_datasets)
        self.class_datasets = set(data.class_crop_datasets)
        self.tumour = torch.tensor([i in TUMOUR_LABEL_IDS for i in label_ids], dtype=torch.bool)
        self.zoom = RandZoomd(
            keys=keys,
            prob=data.zoom_prob,
            min_zoom=data.zoom_range[0],
            max_zoom=data.zoom_range[1],
            mode=("area", "nearest"),
        )
        self.pos_neg = RandCropByPosNegLabeld(
            keys=keys,
            label_key="label",
            spatial_size=data.roi_size,
            pos=data.pos,
            neg=data.neg,
            num_samples=data.num_samples,
            image_key="image",
            image_threshold=0,
        )
        self.by_class = RandCropByLabelClassesd(
            keys=keys,
            label_key="crop_classes",
            spatial_size=data.roi_size,
            ratios=list(data.class_crop_ratios),
            num_classes=3,
            num_samples=data.num_samples,
            warn=False,
        )

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        """Seed this transform and its zoom and crops (each from its own draw)."""
        super().set_random_state(seed, state)
        for child in (self.zoom, self.pos_neg, self.by_class):
            child.set_random_state(seed=int(self.R.randint(0, 2**31 - 1)))
        return self

    def randomize(self, data: Any = None) -> None:  # the children draw
        pass

    def zooms(self, dataset: str) -> bool:
        """Whether cases of ``dataset`` are zoomed."""
        return any(fnmatchcase(dataset, pattern) for pattern in self.zoom_patterns)

    def crop_classes(self, label: torch.Tensor) -> torch.Tensor:
        """``(S, I, J, K)`` masks -> ``(1, I, J, K)`` class map: 0 background, 1 organ, 2 tumour."""
        label = torch.as_tensor(label).bool()
        organ = (
            label[~self.tumour].any(0)
            if bool((~self.tumour).any())
            else torch.zeros(label.shape[1:], dtype=torch.bool)
        )
        tumour = label[self.tumour].any(0) if bool(self.tumour.any()) else torch.zeros_like(organ)
        classes = torch.zeros(label.shape[1:], dtype=torch.uint8)
        classes[organ] = 1
        classes[tumour] = 2
        return classes[None]

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        d = dict(data)
        dataset = str(d.get("dataset", ""))
        if self.zooms(dataset):
            d = dict(self.zoom(d))
        if dataset in self.class_datasets:
            d["crop_classes"] = self.crop_classes(d["label"])
            crops = self.by_class(d)
            for crop in crops:
                crop.pop("crop_classes", None)
            return crops
        return self.pos_neg(d)


def rotate90_axes(roi_size: Sequence[int]) -> tuple[int, int] | None:
    """A plane whose two sides are equal in ``roi_size`` (so a 90° turn keeps the shape), or None."""
    for axes in ((0, 1), (1, 2), (0, 2)):
        if roi_size[axes[0]] == roi_size[axes[1]]:
            return axes
    return None


def deterministic_transforms(data: DataConfig, structures: Sequence[str], pad: bool = True) -> Compose:
    """Step 1 of the pipeline (module docstring): load ... transfer labels, crop foreground, pad."""
    keys = ["image", "label"]
    transforms = [
        LoadImaged(keys=keys, image_only=True),
        EnsureChannelFirstd(keys=keys),
        Orientationd(keys=keys, axcodes="RAS", labels=None),
        Spacingd(keys=keys, pixdim=data.spacing, mode=("bilinear", "nearest")),
        ScaleIntensityRanged(
            keys="image", a_min=data.hu_window[0], a_max=data.hu_window[1], b_min=0.0, b_max=1.0, clip=True
        ),
        TransferLabelsd(structure_channels(structures)),
        CropForegroundd(keys=keys, source_key="image", allow_smaller=True),
    ]
    if pad:
        transforms.append(SpatialPadd(keys=keys, spatial_size=data.roi_size))
    transforms.append(EnsureTyped(keys=keys, track_meta=False))
    return Compose(transforms)


def random_transforms(
    data: DataConfig, queries_per_sample: int, negative_fraction: float, structures: Sequence[str]
) -> Compose:
    """Step 2 of the pipeline (module docstring): crops, augmentation, query sampling."""
    keys = ["image", "label"]
    label_ids = [c + 1 for c in structure_channels(structures)]
    transforms: list[Any] = [DatasetCropd(data, label_ids)]
    axes = rotate90_axes(data.roi_size)
    if axes is not None and data.rotate90_prob > 0:
        transforms.append(RandRotate90d(keys=keys, prob=data.rotate90_prob, max_k=3, spatial_axes=axes))
    elif data.rotate90_prob > 0:
        logger.warning("data.roi_size %s has no square plane: RandRotate90d is left out", list(data.roi_size))
    transforms += [
        RandShiftIntensityd(
            keys="image", offsets=data.shift_intensity_offset, prob=data.shift_intensity_prob
        ),
        SampleQueriesd(queries_per_sample, negative_fraction),
    ]
    return Compose(transforms)


def cached_dataset(
    items: list[dict[str, str]], transform: Compose, data: DataConfig, cache_dir: Path, progress: bool
) -> Dataset:
    """``Dataset``, ``CacheDataset`` or ``PersistentDataset`` (``data.cache``) of the deterministic part."""
    if data.cache == "memory":
        return CacheDataset(
            items,
            transform,
            cache_rate=data.cache_rate,
            num_workers=max(1, data.num_workers),
            progress=progress,
        )
    if data.cache == "disk":
        cache_dir.mkdir(parents=True, exist_ok=True)
        return PersistentDataset(items, transform, cache_dir=cache_dir)
    return Dataset(items, transform)


class AugmentedDataset(torch.utils.data.Dataset):
    """A (cached) deterministic dataset followed by random transforms seeded per item.

    Indexed by ``(case index, item seed)`` (what :class:`ResumableSampler` yields): the random transforms'
    states are set from the item seed before they run, so an item is a pure function of its key.
    """

    def __init__(self, base: Dataset, augment: Compose) -> None:
        self.base = base
        self.augment = augment

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> list[dict[str, Any]]:
        index, item_seed = key
        item = self.base[int(index)]  # a fresh object: CacheDataset copies, the others rebuild or reload
        self.augment.set_random_state(seed=int(item_seed))
        out = self.augment(item)
        return out if isinstance(out, list) else [out]


# ----------------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------------


class ResumableSampler(Sampler):
    """Epoch order and per-item augmentation seeds as a pure function of ``(seed, epoch)``, sharded by rank.

    An epoch has ``len(groups)`` draws (padded, as ``DistributedSampler``, to a multiple of the world size by
    repeating the first draws); rank ``r`` takes draws ``r, r + world_size, ...``. Without ``uniform`` the
    draws are a permutation of the cases. With ``uniform`` (the seed's sampling) draw ``i`` takes the dataset
    ``datasets[perm[i] % K]`` (a shuffled round-robin over the ``K`` dataset keys) and a random case of it.
    Every draw carries its own augmentation seed, so rank ``r`` augments differently from the other ranks.

    ``set_epoch(epoch, start)`` skips the first ``start`` draws of this rank (resume mid-epoch).

    Args:
        groups: the dataset key of each case (only used with ``uniform``).
        seed: the run's seed.
        rank: this process's rank.
        world_size: number of ranks.
        uniform: the seed's uniform-over-datasets sampling.
    """

    def __init__(
        self, groups: Sequence[str], seed: int, rank: int = 0, world_size: int = 1, uniform: bool = False
    ):
        if not groups:
            raise ValueError("ResumableSampler needs at least one case")
        self.groups = list(groups)
        self.seed, self.rank, self.world_size, self.uniform = int(seed), rank, world_size, uniform
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch to iterate, skipping this rank's first ``start`` draws."""
        self.epoch, self.start = int(epoch), int(start)

    @property
    def draws_per_rank(self) -> int:
        """Draws of one rank in a whole epoch."""
        return -(-len(self.groups) // self.world_size)

    def epoch_keys(self, epoch: int) -> list[tuple[int, int]]:
        """This rank's ``(case index, item seed)`` draws of ``epoch``, from the first."""
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.groups)
        if self.uniform:
            keys = sorted(set(self.groups))
            members = {k: [i for i, g in enumerate(self.groups) if g == k] for k in keys}
            order = rng.permutation(n)
            cases = []
            for position in order:
                group = members[keys[int(position) % len(keys)]]
                cases.append(group[int(rng.integers(len(group)))])
            indices = np.asarray(cases, dtype=np.int64)
        else:
            indices = rng.permutation(n)
        seeds = rng.integers(0, 2**31 - 1, size=n)
        total = self.draws_per_rank * self.world_size
        pad = total - n
        indices = np.concatenate([indices, indices[:pad]])
        seeds = np.concatenate([seeds, (seeds[:pad] + 1) % (2**31 - 1)])  # padded draws augment differently
        return [
            (int(i), int(s))
            for i, s in zip(
                indices[self.rank :: self.world_size], seeds[self.rank :: self.world_size], strict=True
            )
        ]

    def __iter__(self):
        return iter(self.epoch_keys(self.epoch)[self.start :])

    def __len__(self) -> int:
        return max(0, self.draws_per_rank - self.start)


# ----------------------------------------------------------------------------------------------------------
# Loaders
# ----------------------------------------------------------------------------------------------------------


@dataclass
class TrainData:
    """The training loader and its sampler (call ``sampler.set_epoch`` before each ``iter(loader)``)."""

    loader: DataLoader
    sampler: ResumableSampler
    cases: list[Case]


def _cache_key(data: DataConfig, structures: Sequence[str], kind: str) -> str:
    return json.dumps(
        {
            "kind": kind,
            "spacing": data.spacing,
            "hu_window": data.hu_window,
            "roi": data.roi_size,
            "structures": list(structures),
            "version": 1,
        },
        sort_keys=True,
    )


def build_train_loader(
    data: DataConfig,
    structures: Sequence[str],
    queries_per_sample: int,
    negative_fraction: float,
    batch_size: int,
    seed: int,
    rank: int,
    world_size: int,
    cache_dir: Path,
    progress: bool = False,
    pin_memory: bool = False,
) -> TrainData:
    """The training DataLoader (module docstring): resumable sampler, per-item augmentation seeds.

    The loader gets its own ``torch.Generator``, so creating iterators never draws from the global RNG.
    """
    cases = read_cases(data.train_lists, data, structures, "training")
    items = case_dicts(cases, _cache_key(data, structures, "train"))
    base = cached_dataset(
        items, deterministic_transforms(data, structures), data, cache_dir / "train", progress
    )
    dataset = AugmentedDataset(
        base, random_transforms(data, queries_per_sample, negative_fraction, structures)
    )
    sampler = ResumableSampler(
        [c.dataset for c in cases], seed, rank, world_size, uniform=data.uniform_sample
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=data.num_workers,
        collate_fn=list_data_collate,
        pin_memory=pin_memory,
        persistent_workers=data.num_workers > 0,
        generator=torch.Generator().manual_seed(seed + rank),
    )
    logger.info(
        "training data: %d case(s) from %s, %d draw(s) per rank and epoch",
        len(cases),
        ", ".join(data.train_lists),
        sampler.draws_per_rank,
    )
    return TrainData(loader=loader, sampler=sampler, cases=cases)


def build_val_loader(
    data: DataConfig,
    structures: Sequence[str],
    rank: int,
    world_size: int,
    cache_dir: Path,
    progress: bool = False,
) -> DataLoader | None:
    """The validation DataLoader of this rank's share of the validation cases (None without ``val_lists``).

    Items: ``image`` ``(1, 1, D, H, W)``, ``label`` ``(1, S, D, H, W)``, ``annotated`` ``(1, S)``.
    """
    if not data.val_lists:
        return None
    cases = read_cases(data.val_lists, data, structures, "validation")
    items = case_dicts(cases, _cache_key(data, structures, "val"))[rank::world_size]
    if not items:
        return None
    base = cached_dataset(
        items, deterministic_transforms(data, structures, pad=False), data, cache_dir / "val", progress
    )
    return DataLoader(
        base,
        batch_size=1,
        shuffle=False,
        num_workers=min(data.num_workers, len(items)),
        collate_fn=list_data_collate,
        generator=torch.Generator().manual_seed(0),
    )
