"""``TrainConfig``: every setting of a training run, from a YAML file plus ``--key=value`` overrides.

The defaults follow the seed's data pipeline (feature size 48, ROI 96³, 1.5 mm, HU window [-175, 250], 2 crops
per image with positive:negative 2:1, RandZoom on the MSD datasets, class-balanced crops on the tumour
datasets) and the Universal Model's optimizer (AdamW lr 1e-4, weight decay 1e-5; the seed's FiLM runs used lr
4e-4, 50 warm-up epochs of 1000); a YAML file names the data and the model, and command-line overrides change
single keys::

    config = load_config("Training/configs/demo_phantom.yaml", ["--optim.lr=3e-4", "--max_steps=100"])

Keys are the dataclass fields; nested sections (``model``, ``data``, ``text``, ``optim``) use dotted keys on
the command line (``--data.roi_size=[64,64,32]``). Values are parsed with ``yaml.safe_load`` and checked
against the field's type: an unknown key raises naming it and listing the valid keys, a value of the wrong
type raises naming the key, the expected type and where the value came from.

``model`` is a :class:`~TextGuidedSegLib.models.ModelConfig`; the trainer sets three of its fields itself:
``num_classes`` (the number of ``structures`` for channel-output models), ``text_dim`` (the embedding size of
the text cache) and ``img_size`` (``data.roi_size``, used by UNETR). The resolved values are in every
checkpoint's ``model_config``.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from TextGuidedSegLib.bundle import GLOBAL_PROMPT
from TextGuidedSegLib.configs import to_jsonable, unknown_keys_error
from TextGuidedSegLib.models import ModelConfig
from TextGuidedSegLib.models.config import UNETR_PATCH_SIZE
from TextGuidedSegLib.models.factory import SWIN_ARCHITECTURES
from TextGuidedSegLib.taxonomy import get_taxonomy

__all__ = [
    "AMP_MODES",
    "CACHE_MODES",
    "TEXT_SOURCES",
    "BatchPlan",
    "ConfigError",
    "GLOBAL_CONDITIONINGS",
    "DataConfig",
    "DistributedConfigError",
    "OptimConfig",
    "TextConfig",
    "TrainConfig",
    "apply_dataclass_overrides",
    "batch_plan",
    "load_config",
    "load_dataclass_config",
    "parse_overrides",
    "split_over_ranks",
]

#: ``data.cache``: ``none`` (read and preprocess every time), ``memory`` (MONAI ``CacheDataset``),
#: ``disk`` (MONAI ``PersistentDataset``).
CACHE_MODES: tuple[str, ...] = ("none", "memory", "disk")
#: ``text.source``: an ``EmbeddingCache`` folder, or deterministic synthetic vectors (demo, no CLIP).
TEXT_SOURCES: tuple[str, ...] = ("cache", "synthetic")
#: ``text.global_conditioning``: what conditions a global-mode model: the seed's dataset prompts (the sentence
#: of the sample's dataset key, or the mean of its organs' sentence embeddings), or one fixed prompt for all.
GLOBAL_CONDITIONINGS: tuple[str, ...] = ("dataset_sentence", "dataset_mean", "fixed")
#: ``amp``: ``auto`` = bf16 on a GPU that has it, else fp16 with a GradScaler; always off on CPU.
AMP_MODES: tuple[str, ...] = ("auto", "bf16", "fp16", "off")
#: ``nonfinite_loss``: a NaN/inf loss ends the run (``stop``) or leaves that step's weights alone (``skip``).
NONFINITE_LOSS_MODES: tuple[str, ...] = ("stop", "skip")
#: The taxonomy the label transfer writes (channel ``c - 1`` is its label id ``c``).
TRAINING_TAXONOMY = "universal32"
_C = TypeVar("_C")
#: A float literal YAML 1.1 leaves as a string (``1e-3``: no dot before the exponent).
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key and says what is expected."""


class DistributedConfigError(ConfigError, RuntimeError):
    """The run's settings do not fit its processes (one line: the setting, the world size and the fix)."""


def _or_list(values: list[int]) -> str:
    text = [str(v) for v in values]
    return text[0] if len(text) == 1 else ", ".join(text[:-1]) + " or " + text[-1]


def split_over_ranks(name: str, value: int, world_size: int, counts: str) -> int:
    """``value // world_size`` for a setting that counts ``counts`` over all processes.

    Raises:
        DistributedConfigError: ``value`` is not a multiple of ``world_size``; the message names the setting,
            the nearest workable value and the process counts that divide it, e.g. ``grad_accum=4 cannot be
            split over 8 processes (...): set grad_accum to a multiple of 8 (e.g. --grad_accum=8) or run with
            1, 2 or 4 processes``.
    """
    if world_size < 1:
        raise DistributedConfigError(f"WORLD_SIZE={world_size}: the number of processes must be >= 1")
    if value % world_size == 0:
        return value // world_size
    fewer = [n for n in range(1, world_size) if value % n == 0]
    multiple = -(-value // world_size) * world_size
    processes = "process" if fewer == [1] else "processes"
    raise DistributedConfigError(
        f"{name}={value} cannot be split over {world_size} processes ({name} counts {counts} over all "
        f"processes): set {name} to a multiple of {world_size} (e.g. --{name}={multiple}) or run with "
        f"{_or_list(fewer)} {processes}"
    )


def _all_structures() -> list[str]:
    return get_taxonomy(TRAINING_TAXONOMY).class_names


@dataclass
class DataConfig:
    """Cases, pre-processing and augmentation.

    Args:
        train_lists: list files of training cases (``image<TAB>label`` a line, see
            ``TextGuidedSegLib.data.datasets.read_list_file``).
        val_lists: list files of validation cases (empty: no validation).
        data_root: the folder list-file paths are relative to; ``""`` = each list file's own folder.
        default_dataset: dataset key for paths under no known dataset folder; ``""`` = report them.
        spacing: target voxel size in mm along (x, y, z) after reorientation to RAS.
        hu_window: Hounsfield window mapped to [0, 1], clipped.
        roi_size: training crop and sliding-window size (D, H, W); multiples of 32 for the Swin models.
        num_samples: crops drawn from each image per step (``RandCropByPosNegLabeld``).
        pos: weight of crops centred on a labelled voxel.
        neg: weight of crops centred on a background voxel.
        rotate90_prob: probability of a random 90° rotation (in a plane whose two sides are equal).
        shift_intensity_offset: maximum intensity shift (``RandShiftIntensityd``).
        shift_intensity_prob: probability of the intensity shift.
        cache: ``none``, ``memory`` (``CacheDataset``) or ``disk`` (``PersistentDataset``); the
            deterministic part of the pipeline (load ... label transfer, crop foreground, pad) is cached.
        cache_rate: fraction of the training cases held in memory with ``cache=memory``.
        cache_dir: folder of the disk cache; ``""`` = ``<run_dir>/cache``.
        num_workers: DataLoader worker processes per rank (0 = load in the training process).
        uniform_sample: the seed's sampling: each draw picks the next dataset round-robin, then a random case
            of it, so small datasets are seen as often as large ones.
        zoom_datasets: ``fnmatch`` patterns of dataset keys that get ``RandZoomd`` before the crop (the seed:
            the MSD datasets); ``[]`` = no zoom.
        zoom_prob: probability of the zoom.
        zoom_range: ``(min_zoom, max_zoom)`` (the seed: 1.3-1.5, size kept: a magnified centre).
        class_crop_datasets: dataset keys whose crops are drawn by ``RandCropByLabelClassesd`` (background,
            organ, tumour) instead of pos:neg (the seed: LiTS and MSD Task03, 07, 08).
        class_crop_ratios: the class ratios (background, organ, tumour) of those crops (the seed: 1, 1, 5).
    """

    train_lists: list[str] = field(default_factory=list)
    val_lists: list[str] = field(default_factory=list)
    data_root: str = ""
    default_dataset: str = ""
    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)
    hu_window: tuple[float, float] = (-175.0, 250.0)
    roi_size: tuple[int, int, int] = (96, 96, 96)
    num_samples: int = 2
    pos: float = 2.0
    neg: float = 1.0
    rotate90_prob: float = 0.1
    shift_intensity_offset: float = 0.1
    shift_intensity_prob: float = 0.2
    cache: str = "none"
    cache_rate: float = 1.0
    cache_dir: str = ""
    num_workers: int = 4
    uniform_sample: bool = False
    zoom_datasets: list[str] = field(default_factory=lambda: ["msd_*"])
    zoom_prob: float = 0.3
    zoom_range: tuple[float, float] = (1.3, 1.5)
    class_crop_datasets: list[str] = field(
        default_factory=lambda: ["lits", "msd_task03", "msd_task07", "msd_task08"]
    )
    class_crop_ratios: tuple[float, float, float] = (1.0, 1.0, 5.0)


@dataclass
class TextConfig:
    """Where the prompt embeddings come from.

    Args:
        source: ``cache``: an ``EmbeddingCache`` folder (``textguidedseg encode-prompts``); ``synthetic``:
            one deterministic random unit vector per prompt (``synthetic_text_cache``), for demos without CLIP
            weights. A model trained on synthetic vectors understands only its vocabulary.
        cache_dir: the embedding cache folder (``source: cache``).
        dim: embedding size of synthetic vectors (``source: synthetic``).
        encoder: the text encoder (Hugging Face id or folder) that built the cache, recorded in exported
            bundles so that they can encode free text; ``""`` = none (the bundle knows its vocabulary only).
        encoder_output: ``pooler`` or ``projected`` (see ``TextEncoderSpec``).
        global_conditioning: what conditions a global-mode model (see ``data.dataset_prompts``):
            ``dataset_sentence`` (the seed's default: each sample gets its dataset's sentence, "a computerized
            tomography of " + the dataset's organ names, and validation uses each case's own dataset),
            ``dataset_mean`` (the mean of the organs' sentence embeddings) or ``fixed`` (``global_prompt``
            for every sample: FiLM then learns a constant; kept for comparison).
        global_prompt: the prompt of ``global_conditioning: fixed``.
    """

    source: str = "cache"
    cache_dir: str = ""
    dim: int = 512
    encoder: str = ""
    encoder_output: str = "pooler"
    global_conditioning: str = "dataset_sentence"
    global_prompt: str = GLOBAL_PROMPT


@dataclass
class OptimConfig:
    """AdamW with a linear warm-up and a cosine decay (see ``get_lr``).

    Args:
        lr: peak learning rate, reached at the end of the warm-up.
        min_lr: learning rate at ``max_steps`` (the seed: 0).
        weight_decay: AdamW weight decay, on every parameter (as the seed).
        betas: AdamW betas.
        warmup_steps: optimizer steps of linear warm-up from ``lr / warmup_steps``.
        grad_clip: maximum gradient norm; 0 turns clipping off.
    """

    lr: float = 1e-4
    min_lr: float = 0.0
    weight_decay: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 1000
    grad_clip: float = 1.0


@dataclass
class TrainConfig:
    """One training run.

    Args:
        run_dir: output folder: ``config.yaml``, ``train.log``, ``metrics.jsonl``, ``tensorboard/``,
            checkpoints ``ckpt_<step>.pt`` and ``best.pt``.
        structures: the taxonomy subset trained on, in channel order (default: all 32 of universal32).
        queries_per_sample: queries per crop for query-mode models (see ``sample_queries``).
        negative_fraction: share of the queries given to annotated structures absent from the crop.
        batch_size: images per micro-step and rank; each gives ``data.num_samples`` crops.
        grad_accum: micro-steps per optimizer step summed over ALL processes, so the config fixes the global
            batch, ``batch_size * data.num_samples * grad_accum`` crops per optimizer step, at any world size
            (nanoGPT-style): each of ``N`` processes runs ``grad_accum / N`` micro-steps, derived at start-up
            (:func:`batch_plan`). It must be a multiple of ``N``; e.g. ``grad_accum: 8`` runs on 1, 2, 4 or 8
            processes (8, 4, 2 or 1 micro-steps each), ``grad_accum: 4`` on 1, 2 or 4.
        max_steps: optimizer steps of the run.
        seed: seed of the model initialisation, the data order and the augmentation.
        deterministic: ``torch.use_deterministic_algorithms`` and deterministic cuDNN (slower on a GPU).
        device: ``auto`` (the rank's GPU, else CPU), ``cpu`` or ``cuda``.
        amp: mixed precision on a GPU: ``auto``, ``bf16``, ``fp16`` or ``off``; always off on CPU.
        compile: ``torch.compile`` the model (the checkpoint holds the unwrapped module).
        threads: ``torch.set_num_threads`` per rank; 0 leaves PyTorch's default.
        pretrained: a MONAI SwinUNETR checkpoint loaded into the backbone at the start of a new run.
        val_every: validate every this many steps (and at the last one); 0 = only at the last step.
        val_overlap: sliding-window overlap of the validation (and of exported bundles).
        val_sw_batch_size: windows per forward pass in validation (and exported bundles).
        ckpt_every: write a checkpoint every this many steps (and at the last one).
        keep_last: checkpoints kept besides ``best.pt``.
        nonfinite_loss: what a step whose loss is NaN or infinite does: ``"stop"`` (the run ends with an
            error naming the step; the checkpoints written so far are intact) or ``"skip"`` (no weight update
            for that step, a warning and a ``"skipped"`` record in ``metrics.jsonl``; the step still counts).
        log_every: log (and write to TensorBoard) every this many steps; ``metrics.jsonl`` gets every step.
        tensorboard: write TensorBoard event files.
        progress: show a tqdm progress bar (rank 0).
        model: the architecture (``ModelConfig``).
        data: cases, pre-processing, augmentation.
        text: prompt embeddings.
        optim: optimizer and learning-rate schedule.
    """

    run_dir: str = "runs/train"
    structures: list[str] = field(default_factory=_all_structures)
    queries_per_sample: int = 4
    negative_fraction: float = 0.25
    batch_size: int = 1
    grad_accum: int = 1
    max_steps: int = 100_000
    seed: int = 1337
    deterministic: bool = False
    device: str = "auto"
    amp: str = "auto"
    compile: bool = False
    threads: int = 0
    pretrained: str = ""
    val_every: int = 2000
    val_overlap: float = 0.5
    val_sw_batch_size: int = 1
    ckpt_every: int = 1000
    keep_last: int = 3
    nonfinite_loss: str = "stop"
    log_every: int = 10
    tensorboard: bool = True
    progress: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig = field(default_factory=TextConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError("invalid training config:\n  " + "\n  ".join(problems))

    def problems(self) -> list[str]:
        """Every rule the config breaks, one message each (empty when valid)."""
        out: list[str] = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                out.append(message)

        taxonomy = get_taxonomy(TRAINING_TAXONOMY)
        unknown = [name for name in self.structures if name not in taxonomy]
        need(not unknown, f"structures: unknown class names {unknown}; valid: {taxonomy.class_names}")
        need(len(self.structures) > 0, "structures: name at least one structure")
        need(len(set(self.structures)) == len(self.structures), "structures: a class name is repeated")
        for name in ("queries_per_sample", "batch_size", "grad_accum", "max_steps", "keep_last", "log_every"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("val_every", "ckpt_every", "threads"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        need(self.val_sw_batch_size >= 1, f"val_sw_batch_size must be >= 1, got {self.val_sw_batch_size}")
        need(0.0 <= self.negative_fraction <= 1.0, "negative_fraction must be in [0, 1]")
        need(0.0 <= self.val_overlap < 1.0, "val_overlap must be in [0, 1)")
        need(self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device!r}")
        need(self.amp in AMP_MODES, f"amp must be one of {list(AMP_MODES)}, got {self.amp!r}")
        need(
            self.nonfinite_loss in NONFINITE_LOSS_MODES,
            f"nonfinite_loss must be one of {list(NONFINITE_LOSS_MODES)}, got {self.nonfinite_loss!r}",
        )
        data, optim, text = self.data, self.optim, self.text
        need(data.cache in CACHE_MODES, f"data.cache must be one of {list(CACHE_MODES)}, got {data.cache!r}")
        need(0.0 < data.cache_rate <= 1.0, "data.cache_rate must be in (0, 1]")
        need(data.num_samples >= 1, "data.num_samples must be >= 1")
        need(data.num_workers >= 0, "data.num_workers must be >= 0")
        need(
            data.pos >= 0 and data.neg >= 0 and data.pos + data.neg > 0,
            "data.pos/neg: non-negative, not both 0",
        )
        need(all(s > 0 for s in data.spacing), f"data.spacing must be positive, got {data.spacing}")
        need(
            data.hu_window[0] < data.hu_window[1], f"data.hu_window must be (low, high), got {data.hu_window}"
        )
        need(
            all(0.0 <= p <= 1.0 for p in (data.rotate90_prob, data.shift_intensity_prob, data.zoom_prob)),
            "data: probabilities in [0, 1]",
        )
        need(
            0 < data.zoom_range[0] <= data.zoom_range[1],
            f"data.zoom_range must be (min, max) with 0 < min <= max, got {list(data.zoom_range)}",
        )
        need(
            all(r >= 0 for r in data.class_crop_ratios) and sum(data.class_crop_ratios) > 0,
            "data.class_crop_ratios: non-negative, not all 0",
        )
        roi = data.roi_size
        if self.model.architecture in SWIN_ARCHITECTURES:
            need(
                all(s % 32 == 0 for s in roi) and max(roi) >= 64,
                f"data.roi_size {list(roi)} must be multiples of 32 with one side >= 64 for "
                f"{self.model.architecture} (e.g. [96, 96, 96] or [64, 64, 32])",
            )
        else:
            need(
                all(s % UNETR_PATCH_SIZE == 0 for s in roi),
                f"data.roi_size {list(roi)} must be multiples of {UNETR_PATCH_SIZE} for UNETR",
            )
        need(
            text.source in TEXT_SOURCES,
            f"text.source must be one of {list(TEXT_SOURCES)}, got {text.source!r}",
        )
        need(text.dim >= 1, "text.dim must be >= 1")
        need(
            text.global_conditioning in GLOBAL_CONDITIONINGS,
            f"text.global_conditioning must be one of {list(GLOBAL_CONDITIONINGS)}, "
            f"got {text.global_conditioning!r}",
        )
        need(
            text.encoder_output in ("pooler", "projected"), "text.encoder_output must be pooler or projected"
        )
        need(
            not (text.source == "synthetic" and text.encoder),
            "text.encoder must be empty with text.source=synthetic: synthetic vectors come from no encoder",
        )
        need(optim.lr > 0 and optim.min_lr >= 0, "optim.lr must be > 0 and optim.min_lr >= 0")
        need(
            optim.warmup_steps >= 0 and optim.grad_clip >= 0, "optim.warmup_steps and grad_clip must be >= 0"
        )
        return out

    # -- dict / YAML round trip ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """YAML/JSON-safe nested dict (tuples become lists); ``from_dict`` turns it back into this config."""
        return to_jsonable(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "dict") -> TrainConfig:
        """Build a config from a (partial) nested dict; missing keys take their defaults.

        Raises:
            ConfigError: an unknown key (the message lists the valid ones), a value of the wrong type, or a
                value out of range.
        """
        return _build(cls, data, prefix="", source=source)

    def to_yaml(self) -> str:
        """The resolved config as YAML (what ``config.yaml`` in the run folder holds)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


@dataclass(frozen=True)
class BatchPlan:
    """How a config's global batch is spread over ``world_size`` processes (see ``TrainConfig.grad_accum``).

    Attributes:
        world_size: processes.
        micro_steps: micro-steps of each process per optimizer step (``grad_accum / world_size``).
        images: images per micro-step and process (``batch_size``).
        crops: crops per micro-step and process (``batch_size * data.num_samples``).
        global_crops: crops per optimizer step over all processes (the same at every world size).
    """

    world_size: int
    micro_steps: int
    images: int
    crops: int
    global_crops: int

    def describe(self) -> str:
        """``16 crops per step = 8 process(es) x 1 micro-step(s) x 1 image(s) x 2 crop(s)``."""
        return (
            f"{self.global_crops} crops per step = {self.world_size} process(es) x {self.micro_steps} "
            f"micro-step(s) x {self.images} image(s) x {self.crops // self.images} crop(s)"
        )


def batch_plan(config: TrainConfig, world_size: int) -> BatchPlan:
    """The per-process share of ``config``'s global batch on ``world_size`` processes (pure arithmetic).

    Raises:
        DistributedConfigError: ``grad_accum`` is not a multiple of ``world_size`` (one line with the fix).
    """
    micro_steps = split_over_ranks("grad_accum", config.grad_accum, world_size, "micro-steps")
    crops = config.batch_size * config.data.num_samples
    return BatchPlan(world_size, micro_steps, config.batch_size, crops, crops * config.grad_accum)


# ----------------------------------------------------------------------------------------------------------
# Loading: defaults <- YAML file <- --key=value overrides, each value checked against the field's type
# ----------------------------------------------------------------------------------------------------------


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML config file (optional) and apply ``--key=value`` overrides on top.

    Args:
        path: a YAML file holding a (partial) nested mapping of ``TrainConfig`` keys, or None for defaults.
        overrides: ``["--optim.lr=3e-4", "--data.roi_size=[64,64,32]", ...]`` (the leading ``--`` optional);
            values are parsed with ``yaml.safe_load``.

    Raises:
        ConfigError: unknown keys, wrong types or invalid values, naming the key and its source.
        FileNotFoundError: ``path`` does not exist.
    """
    return load_dataclass_config(TrainConfig, path, overrides)


def apply_overrides(config: TrainConfig, overrides: list[str] | tuple[str, ...]) -> TrainConfig:
    """Return a new config with ``--key=value`` overrides applied (see ``load_config``)."""
    return apply_dataclass_overrides(config, overrides)


def load_dataclass_config(cls: type[_C], path: str | Path | None = None, overrides: Sequence[str] = ()) -> _C:
    """:func:`load_config` for any config dataclass (nested dataclass fields are sections): defaults <- YAML
    file <- ``--key=value`` overrides, with the same type checks and messages (e.g. the CLIPSeg trainer's)."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"{path}: a config file must hold a mapping of keys, got {type(loaded).__name__}"
            )
        data = loaded or {}
        source = str(path)
    config = _build(cls, data, prefix="", source=source)
    return apply_dataclass_overrides(config, overrides)


def apply_dataclass_overrides(config: _C, overrides: Sequence[str]) -> _C:
    """A new config dataclass with ``--key=value`` overrides applied (see :func:`load_dataclass_config`)."""
    cls = type(config)
    data = to_jsonable(config)
    for key, value in parse_overrides(list(overrides)):
        section = data
        parts = key.split(".")
        _check_path(cls, parts, source=f"--{key}")
        for part in parts[:-1]:
            section = section[part]
        section[parts[-1]] = value
        # check each override's type right away, so the message names the override
        _build(cls, data, prefix="", source=f"--{key}={_short(value)}", check_only=parts)
    return _build(cls, data, prefix="", source="overrides")


def parse_overrides(arguments: list[str] | tuple[str, ...]) -> list[tuple[str, Any]]:
    """``["--a.b=1", "c=x"]`` -> ``[("a.b", 1), ("c", "x")]``; values parsed with ``yaml.safe_load``."""
    out = []
    for argument in arguments:
        text = argument[2:] if argument.startswith("--") else argument
        if "=" not in text:
            raise ConfigError(f"override {argument!r} must be --key=value (e.g. --optim.lr=3e-4)")
        key, raw = text.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {argument!r}: cannot parse the value ({err})") from None
        out.append((key.strip(), value))
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."


def _fields(cls: type) -> dict[str, Any]:
    """Field name -> resolved type annotation of a config dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _valid_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for name, kind in _fields(cls).items():
        if dataclasses.is_dataclass(kind):
            keys += _valid_keys(kind, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _unknown(root: type, keys: list[str], source: str) -> Exception:
    """The shared unknown-key error (``configs.unknown_keys_error``), listing ``root``'s dotted keys."""
    return unknown_keys_error(keys, _valid_keys(root), where=source, what="config", error=ConfigError)


def _check_path(cls: type, parts: list[str], source: str) -> None:
    kind: Any = cls
    for depth, part in enumerate(parts):
        fields = _fields(kind) if dataclasses.is_dataclass(kind) else {}
        if part not in fields:
            raise _unknown(cls, [".".join(parts[: depth + 1])], source)
        kind = fields[part]
    if dataclasses.is_dataclass(kind):
        raise ConfigError(
            f"{source}: {'.'.join(parts)!r} is a section; set its keys, e.g. --{parts[0]}.<key>=..."
        )


def _type_name(kind: Any) -> str:
    origin = typing.get_origin(kind)
    if origin is tuple:
        args = typing.get_args(kind)
        return f"a list of {len(args)} {_type_name(args[0])}s"
    if origin is list:
        return f"a list of {_type_name(typing.get_args(kind)[0])}s"
    return getattr(kind, "__name__", str(kind))


def _coerce(value: Any, kind: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``kind``; return it converted (list -> tuple, int -> float)."""

    def fail() -> ConfigError:
        return ConfigError(
            f"{source}: config key {key!r} expects {_type_name(kind)}, "
            f"got {type(value).__name__} {_short(value)}"
        )

    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(kind):
            if option is type(None) and value is None:
                return None
            try:
                return _coerce(value, option, key, source)
            except ConfigError:
                continue
        raise fail()
    if origin is tuple:
        args = typing.get_args(kind)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise fail()
        return tuple(
            _coerce(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin is list:
        (arg,) = typing.get_args(kind)
        if not isinstance(value, (list, tuple)):
            raise fail()
        return [_coerce(v, arg, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if kind is bool:
        if not isinstance(value, bool):
            raise fail()
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail()
        return value
    if kind is float:
        if isinstance(value, str) and _FLOAT.match(value.strip()):  # YAML 1.1 reads 1e-3 as a string
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail()
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise fail()
        return value
    raise fail()


def _build(
    cls: type,
    data: Any,
    prefix: str,
    source: str,
    check_only: list[str] | None = None,
    root: type | None = None,
) -> Any:
    """Build the dataclass ``cls`` from a nested dict, checking every key and type (see ``load_config``).

    ``root`` is the top-level config class (``cls`` itself at the top): unknown keys list its keys.
    """
    root = root or cls
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: section {prefix.rstrip('.') or '(top)'!r} must be a mapping, got {_short(data)}"
        )
    fields = _fields(cls)
    unknown = [f"{prefix}{key}" for key in data if key not in fields]
    if unknown:
        raise _unknown(root, unknown, source)
    kwargs = {}
    for key, value in data.items():
        kind = fields[key]
        if check_only is not None and (not check_only or check_only[0] != key):
            continue
        if dataclasses.is_dataclass(kind):
            rest = None if check_only is None else check_only[1:]
            kwargs[key] = _build(kind, value, f"{prefix}{key}.", source, check_only=rest, root=root)
        else:
            kwargs[key] = _coerce(value, kind, f"{prefix}{key}", source)
    if check_only is not None:
        return None
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'}: {err}") from None
