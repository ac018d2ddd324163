"""Training datasets: which dataset a case comes from, how its labels map into the taxonomy, and list files.

The mappings are data, in ``TextGuidedSegLib/resources/datasets.json``; this module reads them into
:class:`DatasetSpec` objects and parses the list files that name the training cases.

Label mapping rules (one :class:`DatasetSpec` per dataset key):

- ``labels`` maps a raw label value ``v`` (an integer in the dataset's label files) to targets in the
  ``universal32`` taxonomy (label ids 1..32, one output channel each). As a list, position ``i`` holds the
  target of raw value ``i + 1``; as an object, keys are raw values. A target is a label id, ``0`` (dropped
  on purpose, no warning), the name of a *pair* (``"kidney"``, ``"lung"``, ``"adrenal_gland"``: the dataset
  labels both sides as one class, and :func:`TextGuidedSegLib.data.label_transfer.transfer_labels` splits it
  into the right and left label ids by world position), or a list of these.
- ``hosts``: a tumour or cyst channel also counts as its host structure (liver tumour -> liver, kidney
  tumour/cyst -> the kidney of its side, ...), but only where the dataset annotates the host. A channel the
  dataset does not annotate stays empty, so a target is always all-zero outside the dataset's template.
  With a paired host the side is found by position: labelled as one class, tumour and organ are split
  together; labelled by side, each tumour voxel joins the side it lies on; an entry that names its side
  (TotalSegmentator's ``kidney_cyst_left``) keeps it.
- ``optional`` raw values (BTCV's duodenum) are annotated only in cases that contain them.
- ``later_cases``: ``{"from_case": N, "annotated": [label ids]}``: cases whose name ends in a number ``>= N``
  annotate only these label ids (BTCV's second template, the Universal Model's ``01_2``: cases 60 and above
  annotate 8 of the 14 organs); the other channels are unknown there, not absent
  (:meth:`DatasetSpec.annotated_in`).
- A dataset's *template* (:attr:`DatasetSpec.annotated`) is every label id its labels reach, pairs counted
  as both sides.
- Raw values above ``num_classes`` (default: the length of ``labels``) that have no mapping are unknown:
  they are dropped with a warning, once per dataset and value. Raw values up to ``num_classes`` without a
  target (TotalSegmentator's bones and muscles, CT-ORG's bone and brain) are outside the taxonomy and
  dropped quietly.

List files (:func:`read_list_file`) hold one case a line, ``image<TAB>label`` (a line with the image alone is
a test case without labels). Fields are separated by one or more tabs and never by spaces: a path may not
contain whitespace, so a space-separated pair is reported instead of being read as one strange path. Blank
lines, trailing spaces/tabs, CRLF line ends and ``#`` comments (a whole line, or from a ``#`` that follows
whitespace) are ignored. Paths are relative to ``data_root`` (default: the list file's folder), and the
dataset is recognised from the leading folders of the image path (``datasets.json`` ``folders``, matched
with :func:`fnmatch.fnmatchcase`, e.g. ``10_Decathlon/Task03_*``). Every problem (a malformed line, an
unknown dataset folder, a missing image or label file) is collected and reported in one
:class:`DatasetListError`, each as ``list_file:line: ...``, so a broken list fails before training starts.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import lru_cache
from pathlib import Path, PurePath, PurePosixPath

logger = logging.getLogger(__name__)

#: Number of taxonomy channels (label ids 1..NUM_CHANNELS) a transferred target has.
NUM_CHANNELS = 32
#: The mapping file shipped with the package.
RESOURCE = Path(__file__).resolve().parent.parent / "resources" / "datasets.json"
#: How many problems a :class:`DatasetListError` message lists before it gives only a count.
MAX_LISTED_PROBLEMS = 20

#: A label target: a taxonomy label id (1..32), the name of a pair split by side (``"kidney"``), or a pair
#: name behind :data:`SIDED_HOST` (``"+kidney"``: voxels added to the side they lie on, in a dataset that
#: labels the sides apart; used for tumours hosted by a paired structure).
Target = int | str
#: Prefix of a pair target whose voxels join the side they lie on (see :data:`Target`).
SIDED_HOST = "+"


class DatasetListError(ValueError):
    """A list file has malformed lines, unknown dataset folders or missing files.

    Attributes:
        problems: every problem, each as ``"list_file:line: message"``, in file order.
    """

    def __init__(self, list_file: Path, problems: Sequence[str]) -> None:
        self.list_file = Path(list_file)
        self.problems = list(problems)
        shown = self.problems[:MAX_LISTED_PROBLEMS]
        lines = [f"{len(self.problems)} problem(s) in list file {self.list_file}:"] + [
            f"  {p}" for p in shown
        ]
        if len(self.problems) > len(shown):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more")
        super().__init__("\n".join(lines))


class UnknownDatasetError(ValueError):
    """A dataset key or a dataset folder that ``datasets.json`` does not know."""


@dataclass(frozen=True)
class DatasetSpec:
    """How one dataset's raw label values map into the taxonomy channels.

    Attributes:
        key: the dataset key (``"btcv"``, ``"msd_task03"``, ...).
        title: a human-readable name, for messages.
        folders: ``fnmatch`` patterns, ``/``-separated, matched against the leading parts of a case path
            (``"10_Decathlon/Task03_*"``; ``"images/phantom_*"`` reaches the file name).
        table: raw label value -> targets, hosts already added (label ids, and pair names to split by side).
            A value mapped to ``()`` is dropped on purpose.
        pairs: pair name -> ``(right label id, left label id)``, for the pairs this table uses.
        num_classes: raw values ``1..num_classes`` are known to the dataset; unmapped ones are dropped
            quietly, larger unmapped values with a warning.
        optional: raw values whose channels are annotated only in cases that contain them.
        notes: where the mapping comes from and what was decided.
        later_cases: ``(N, label ids)``: a case whose name ends in a number ``>= N`` annotates only these
            label ids (BTCV's ``01_2`` template); None = every case annotates the whole template.
    """

    key: str
    title: str
    folders: tuple[str, ...]
    table: Mapping[int, tuple[Target, ...]]
    pairs: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    num_classes: int = 0
    optional: frozenset[int] = frozenset()
    notes: str = ""
    later_cases: tuple[int, frozenset[int]] | None = None

    def annotated_in(self, case: str | None) -> frozenset[int] | None:
        """The label ids case ``case`` can annotate at most, or None when it is the whole template.

        Only for ``later_cases`` datasets: the case number is the trailing number of the case name
        (``label0061`` -> 61, the seed's ``int(name[-2:])`` for BTCV's names).
        """
        if self.later_cases is None or not case:
            return None
        match = _TRAILING_NUMBER.search(case)
        if match is None or int(match.group(1)) < self.later_cases[0]:
            return None
        return self.later_cases[1]

    def channels_of(self, raw_values: Sequence[int]) -> tuple[int, ...]:
        """Sorted taxonomy label ids reached by ``raw_values`` (pairs counted as both sides)."""
        ids: set[int] = set()
        for value in raw_values:
            for target in self.table.get(int(value), ()):
                ids.update(self.pairs[pair_of(target)] if isinstance(target, str) else (target,))
        return tuple(sorted(ids))

    @property
    def annotated(self) -> tuple[int, ...]:
        """The dataset's template: label ids annotated in every case (optional raw values left out)."""
        return self.channels_of([v for v in self.table if v not in self.optional])

    @property
    def max_raw_value(self) -> int:
        """The largest raw value with a mapping (0 when none)."""
        return max(self.table, default=0)


@dataclass(frozen=True)
class Case:
    """One line of a list file.

    Attributes:
        image: path of the CT volume.
        label: path of its label map, ``None`` for a test case (image-only line).
        dataset: the dataset key (``"btcv"``, ``"msd_task03"``, ...) the labels are transferred with.
        line: 1-based line number in the list file.
        name: case id, the image file name without its extension (``img0001`` for ``img0001.nii.gz``).
    """

    image: Path
    label: Path | None
    dataset: str
    line: int
    name: str


@dataclass(frozen=True)
class _Registry:
    structures: tuple[str, ...]
    datasets: Mapping[str, DatasetSpec]


def _resource_path() -> Path:
    return RESOURCE


def _parse_target(value: object, pairs: Mapping[str, tuple[int, int]], where: str) -> tuple[Target, ...]:
    """One ``labels`` entry -> a tuple of targets (``()`` for 0)."""
    items = value if isinstance(value, list) else [value]
    targets: list[Target] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise ValueError(f"{where}: target {item!r} is neither a label id nor a pair name")
        if isinstance(item, str):
            if item not in pairs:
                raise ValueError(f"{where}: unknown pair {item!r} (known: {', '.join(pairs)})")
        elif not 0 <= item <= NUM_CHANNELS:
            raise ValueError(f"{where}: label id {item} outside 0..{NUM_CHANNELS}")
        if item != 0 and item not in targets:
            targets.append(item)
    return tuple(targets)


def pair_of(target: str) -> str:
    """The pair name of a pair target (``"kidney"`` for ``"kidney"`` and for ``"+kidney"``)."""
    return target.removeprefix(SIDED_HOST)


def _side_ids(targets: tuple[Target, ...], pairs: Mapping[str, tuple[int, int]]) -> set[int]:
    ids: set[int] = set()
    for target in targets:
        ids.update(pairs[pair_of(target)] if isinstance(target, str) else (target,))
    return ids


def _add_hosts(
    table: dict[int, tuple[Target, ...]],
    hosts: Mapping[int, Target],
    pairs: Mapping[str, tuple[int, int]],
    key: str,
) -> dict[int, tuple[Target, ...]]:
    """Add each tumour channel's host where the dataset annotates it (see the module docstring)."""
    mapped_items = {t for targets in table.values() for t in targets}
    mapped_ids = _side_ids(tuple(mapped_items), pairs)
    expanded: dict[int, tuple[Target, ...]] = {}
    for value, targets in table.items():
        out = list(targets)
        for target in targets:
            host = hosts.get(target) if isinstance(target, int) else None
            if host is None:
                continue
            if isinstance(host, int):
                if host in mapped_ids and host not in out:
                    out.append(host)
                continue
            right, left = pairs[host]
            if host in mapped_items:  # the dataset labels both sides as one class: split together
                if host not in out:
                    out.append(host)
            elif right in out or left in out:  # the entry names its side already (TotalSegmentator cysts)
                continue
            elif right in mapped_ids and left in mapped_ids:  # sides labelled apart: join the nearer side
                if SIDED_HOST + host not in out:
                    out.append(SIDED_HOST + host)
        expanded[value] = tuple(out)
    return expanded


def _build_spec(
    key: str, entry: Mapping[str, object], pairs: Mapping[str, tuple[int, int]], hosts: Mapping[int, Target]
) -> DatasetSpec:
    where = f"datasets.json, dataset {key!r}"
    labels = entry.get("labels")
    table: dict[int, tuple[Target, ...]] = {}
    if "classes" in entry:  # name -> target plus name -> raw id (TotalSegmentator)
        classes = dict(entry["classes"])  # type: ignore[call-overload]
        class_ids = dict(entry.get("class_ids", {}))  # type: ignore[call-overload]
        missing = sorted(set(classes) - set(class_ids))
        if missing:
            raise ValueError(f"{where}: classes without a class_ids entry: {', '.join(missing)}")
        for name, target in classes.items():
            table[int(class_ids[name])] = _parse_target(target, pairs, f"{where}, class {name!r}")
        num_classes = int(entry.get("num_classes", max(table, default=0)))  # type: ignore[arg-type]
    elif isinstance(labels, list):
        for position, target in enumerate(labels):
            table[position + 1] = _parse_target(target, pairs, f"{where}, raw value {position + 1}")
        num_classes = int(entry.get("num_classes", len(labels)))  # type: ignore[arg-type]
    elif isinstance(labels, dict):
        for raw, target in labels.items():
            table[int(raw)] = _parse_target(target, pairs, f"{where}, raw value {raw}")
        num_classes = int(entry.get("num_classes", max(table, default=0)))  # type: ignore[arg-type]
    else:
        raise ValueError(f"{where}: needs 'labels' (a list or an object) or 'classes' with 'class_ids'")
    if any(v <= 0 for v in table):
        raise ValueError(f"{where}: raw label values must be >= 1 (0 is background)")
    table = _add_hosts(table, hosts, pairs, key)
    used_pairs = {pair_of(t) for targets in table.values() for t in targets if isinstance(t, str)}
    optional = frozenset(int(v) for v in entry.get("optional", []))  # type: ignore[union-attr]
    if not optional <= set(table):
        raise ValueError(f"{where}: optional raw values {sorted(optional - set(table))} have no mapping")
    folders = tuple(entry.get("folders", []))  # type: ignore[arg-type]
    later = entry.get("later_cases")
    later_cases = None
    if later is not None:
        if not isinstance(later, dict) or set(later) != {"from_case", "annotated"}:
            raise ValueError(f"{where}: later_cases must be {{'from_case': N, 'annotated': [label ids]}}")
        later_cases = (int(later["from_case"]), frozenset(int(v) for v in later["annotated"]))
    return DatasetSpec(
        key=key,
        title=str(entry.get("title", key)),
        folders=folders,
        table=table,
        pairs={name: pairs[name] for name in sorted(used_pairs)},
        num_classes=num_classes,
        optional=optional,
        notes=str(entry.get("notes", "")),
        later_cases=later_cases,
    )


def _load_registry(path: Path) -> _Registry:
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format_version") != 1:
        raise ValueError(f"{path}: unsupported format_version {data.get('format_version')!r} (expected 1)")
    structures = tuple(data["structures"])
    if len(structures) != NUM_CHANNELS:
        raise ValueError(f"{path}: 'structures' must name {NUM_CHANNELS} label ids, got {len(structures)}")
    pairs = {name: (int(r), int(left)) for name, (r, left) in data["pairs"].items()}
    hosts: dict[int, Target] = {int(k): v for k, v in data["hosts"].items()}
    datasets = {key: _build_spec(key, entry, pairs, hosts) for key, entry in data["datasets"].items()}
    return _Registry(structures=structures, datasets=datasets)


@lru_cache(maxsize=1)
def _registry() -> _Registry:
    return _load_registry(_resource_path())


def load_datasets(path: str | Path | None = None) -> dict[str, DatasetSpec]:
    """Read the dataset specs of a mapping file in the ``datasets.json`` format.

    Args:
        path: the file; ``None`` reads the one shipped with the package (cached, as the other functions
            of this module use it).

    Returns:
        dataset key -> :class:`DatasetSpec`, in file order.

    Raises:
        ValueError: the file breaks a rule of the format (the message names the dataset and raw value).
    """
    registry = _registry() if path is None else _load_registry(Path(path))
    return dict(registry.datasets)


def known_datasets() -> tuple[str, ...]:
    """The dataset keys ``datasets.json`` defines, in file order."""
    return tuple(_registry().datasets)


def get_dataset(key: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of dataset ``key``.

    Raises:
        UnknownDatasetError: ``key`` is not a known dataset (the message lists the known ones).
    """
    datasets = _registry().datasets
    if key not in datasets:
        raise UnknownDatasetError(f"unknown dataset {key!r}; known datasets: {', '.join(datasets)}")
    return datasets[key]


def structure_name(label_id: int) -> str:
    """The ``class_name`` of a universal32 label id, for messages (``6`` -> ``"liver"``)."""
    structures = _registry().structures
    return structures[label_id - 1] if 1 <= label_id <= len(structures) else f"label_id_{label_id}"


def dataset_from_class_map(
    class_map: Mapping[int | str, str], key: str = "totalseg", base: str = "totalseg"
) -> DatasetSpec:
    """Build a dataset from a TotalSegmentator-style class map (raw label id -> class name).

    The class-name targets come from dataset ``base`` in ``datasets.json`` (its ``classes``); the raw ids
    come from ``class_map``, so outputs of other TotalSegmentator versions or tasks map correctly.

    Args:
        class_map: raw label id -> class name, e.g. the content of TotalSegmentator's
            ``class_map_total_v2.json`` (keys may be strings).
        key: the key of the new dataset (used in messages and warnings).
        base: the dataset whose ``classes`` (name -> target) are used.

    Returns:
        A :class:`DatasetSpec` whose raw values ``1..max(class_map)`` are all known: classes outside the
        taxonomy are dropped quietly.
    """
    data = json.loads(_resource_path().read_text(encoding="utf-8"))
    entry = dict(data["datasets"][base])
    ids_by_name = {str(name): int(raw) for raw, name in class_map.items()}
    entry["class_ids"] = {name: ids_by_name[name] for name in entry["classes"] if name in ids_by_name}
    entry["classes"] = {name: t for name, t in entry["classes"].items() if name in ids_by_name}
    entry["num_classes"] = max((int(raw) for raw in class_map), default=0)
    pairs = {name: (int(r), int(left)) for name, (r, left) in data["pairs"].items()}
    hosts: dict[int, Target] = {int(k): v for k, v in data["hosts"].items()}
    return _build_spec(key, entry, pairs, hosts)


def dataset_for_path(path: str | PurePath, default: str | None = None) -> str:
    """The dataset key of a case path, from its leading folders (see :attr:`DatasetSpec.folders`).

    Args:
        path: the image path as written in a list file, relative to the data root
            (``"10_Decathlon/Task03_Liver/imagesTr/liver_0.nii.gz"``).
        default: the key to return when no dataset's folders match; ``None`` raises instead.

    Raises:
        UnknownDatasetError: no dataset matches and no default is given (the message names the folder and
            lists the known folders).
    """
    parts = PurePosixPath(PurePath(path).as_posix()).parts
    for spec in _registry().datasets.values():
        for pattern in spec.folders:
            pattern_parts = pattern.split("/")
            if len(parts) >= len(pattern_parts) and all(
                fnmatchcase(part, p) for part, p in zip(parts, pattern_parts, strict=False)
            ):
                return spec.key
    if default is not None:
        get_dataset(default)
        return default
    known = ", ".join(p for spec in _registry().datasets.values() for p in spec.folders)
    folder = parts[0] if len(parts) > 1 else "(none)"
    raise UnknownDatasetError(
        f"unknown dataset folder {folder!r} in {PurePath(path).as_posix()!r}; known folders: {known} "
        "(or pass a default dataset)"
    )


def case_name(path: str | PurePath) -> str:
    """A case id from a file name: the name without ``.nii.gz``, ``.seg.nrrd`` or its last suffix."""
    name = PurePath(path).name
    for ending in (".nii.gz", ".seg.nrrd", ".tar.gz"):
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return PurePath(name).stem


_TRAILING_NUMBER = re.compile(r"(\d+)$")
_COMMENT = re.compile(r"(^|\s)#.*$")
_TABS = re.compile(r"\t+")
_WHITESPACE = re.compile(r"\s")


def read_list_file(
    path: str | Path,
    data_root: str | Path | None = None,
    check_files: bool = True,
    default_dataset: str | None = None,
) -> list[Case]:
    """Read a list file of training or test cases (format in the module docstring).

    Args:
        path: the list file.
        data_root: the folder the paths in the file are relative to; default the list file's folder.
        check_files: check that every image and label file exists (all missing files are reported together).
        default_dataset: the dataset key for paths under no known dataset folder; ``None`` reports them.

    Returns:
        The cases, in file order.

    Raises:
        DatasetListError: malformed lines, unknown dataset folders or missing files (every one of them,
            each with its line number), or a list without any case.
        FileNotFoundError: the list file itself does not exist.
    """
    list_file = Path(path)
    root = Path(data_root) if data_root is not None else list_file.parent
    text = list_file.read_text(encoding="utf-8-sig")
    cases: list[Case] = []
    problems: list[str] = []
    for number, raw_line in enumerate(text.split("\n"), start=1):
        line = _COMMENT.sub("", raw_line).strip()
        if not line:
            continue
        where = f"{list_file}:{number}"
        fields = _TABS.split(line)
        if len(fields) > 2:
            problems.append(
                f"{where}: {len(fields)} tab-separated fields, expected 'image<TAB>label' or 'image': "
                f"{line!r}"
            )
            continue
        if any(_WHITESPACE.search(f) for f in fields):
            problems.append(
                f"{where}: whitespace inside a path: {line!r}; separate image and label with a tab, not "
                "spaces (paths with spaces are not supported)"
            )
            continue
        image = root / fields[0]
        label = root / fields[1] if len(fields) == 2 else None
        relative: str | PurePath = fields[0]
        if PurePath(fields[0]).is_absolute():
            try:
                relative = image.relative_to(root)
            except ValueError:
                pass  # outside the data root: only default_dataset can name its dataset
        try:
            dataset = dataset_for_path(relative, default=default_dataset)
        except UnknownDatasetError as error:
            problems.append(f"{where}: {error}")
            continue
        if check_files:
            if not image.is_file():
                problems.append(f"{where}: missing image {image}")
            if label is not None and not label.is_file():
                problems.append(f"{where}: missing label {label}")
        cases.append(Case(image=image, label=label, dataset=dataset, line=number, name=case_name(image)))
    if problems:
        raise DatasetListError(list_file, problems)
    if not cases:
        raise DatasetListError(list_file, [f"{list_file}: no cases (only blank lines and comments)"])
    logger.info(
        "read %d case(s) from %s (%d with labels)",
        len(cases),
        list_file,
        sum(c.label is not None for c in cases),
    )
    return cases
