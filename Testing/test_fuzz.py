"""Fuzzing the boundaries that read users' files: volume readers, bundle loader, prompt parser.

Real files are written in the test (a small NIfTI with nibabel, a NRRD with SimpleITK, a tiny bundle with
``save_bundle``), then mutated (bytes flipped, truncated, spliced; header fields set to extremes; JSON values
replaced by junk) or replaced by random bytes. The only exceptions allowed out are the library's own:
``VolumeReadError`` from ``load_volume``, ``BundleError`` from ``load_bundle``, ``RegistryError`` from
``describe_bundle`` (``textguidedseg info``), ``PromptError`` from ``parse_prompt``, each naming the file.
A leak found once stays as an ``@example``.

``max_examples`` is modest so the default run stays fast; ``TEXTGUIDEDSEG_FUZZ_EXAMPLES=2000`` runs deeper
(the slow-marked test does a deeper pass over the readers by default).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from TextGuidedSegLib.bundle import BundleError, load_bundle
from TextGuidedSegLib.bundle_header import describe_bundle
from TextGuidedSegLib.files import ZIP_MAX_RATIO, extract_zip
from TextGuidedSegLib.io import load_volume
from TextGuidedSegLib.io.volume import VolumeReadError
from TextGuidedSegLib.registry import RegistryError
from TextGuidedSegLib.taxonomy import PromptError, get_taxonomy, parse_prompt

EXAMPLES = int(os.environ.get("TEXTGUIDEDSEG_FUZZ_EXAMPLES", "30"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # nothing written into the repository
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DEEP = settings(FUZZ, max_examples=max(EXAMPLES, 300))
#: Bundle examples load a model (about a second each): fewer by default.
BUNDLE_FUZZ = settings(FUZZ, max_examples=max(EXAMPLES // 6, 5))


# ----------------------------------------------------------------------------------------------------------
# Mutations
# ----------------------------------------------------------------------------------------------------------


@st.composite
def mutations(draw: st.DrawFn, original: bytes, header_size: int) -> bytes:
    """``original`` with 1-4 byte edits: flips, overwrites, truncation, splices, deletions (often in the
    first ``header_size`` bytes, where the parsers look)."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        limit = draw(st.sampled_from([min(header_size, len(data)), len(data)]))
        at = draw(st.integers(0, max(0, limit - 1)))
        op = draw(st.sampled_from(["flip", "overwrite", "truncate", "splice", "delete", "insert"]))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at : at + len(chunk)] = chunk
        elif op == "truncate":
            del data[at:]
        elif op == "splice":  # a copy of another stretch of the same file
            start = draw(st.integers(0, len(data) - 1))
            data[at:at] = data[start : start + draw(st.integers(1, 64))]
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


def check_volume(path: Path) -> None:
    """``load_volume(path)`` returns a 3D volume or raises VolumeReadError naming ``path``; nothing else."""
    try:
        volume = load_volume(path)
    except VolumeReadError as err:
        assert str(path) in str(err), f"the error does not name {path}: {err}"
        return
    assert volume.array.ndim == 3 and volume.array.dtype == np.float32
    assert volume.affine.shape == (4, 4)


# ----------------------------------------------------------------------------------------------------------
# Volume readers
# ----------------------------------------------------------------------------------------------------------


def _ct_array() -> np.ndarray:
    """A (8, 6, 4) int16 CT-like block: air around a soft-tissue box."""
    array = np.full((8, 6, 4), -1000, dtype=np.int16)
    array[2:6, 1:5, 1:3] = 40
    return array


def _nifti_bytes(compressed: bool) -> bytes:
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    image = nib.Nifti1Image(_ct_array(), affine)
    image.header.set_sform(affine, code=1)
    data = image.to_bytes()
    return gzip.compress(data, mtime=0) if compressed else data


def _nrrd_bytes(tmp: Path, compressed: bool) -> bytes:
    image = sitk.GetImageFromArray(np.ascontiguousarray(_ct_array().transpose(2, 1, 0)))
    image.SetSpacing((0.8, 0.8, 2.5))
    path = tmp / "source.nrrd"
    sitk.WriteImage(image, str(path), useCompression=compressed)
    return path.read_bytes()


READER_CASES = ["case.nii", "case.nii.gz", "case.nrrd", "case-gzip.nrrd"]


@pytest.fixture(scope="module")
def reader_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Valid files, one per reader path (NIfTI raw/gzip, NRRD raw/gzip), that load as 8x6x4 volumes."""
    tmp = tmp_path_factory.mktemp("fuzz-sources")
    sources = {
        "case.nii": _nifti_bytes(False),
        "case.nii.gz": _nifti_bytes(True),
        "case.nrrd": _nrrd_bytes(tmp, False),
        "case-gzip.nrrd": _nrrd_bytes(tmp, True),
    }
    # the sources are valid: the mutations start from real files
    for name, data in sources.items():
        (tmp / name).write_bytes(data)
        assert load_volume(tmp / name).array.shape == (8, 6, 4), name
    return sources


def _header_size(name: str, data: bytes) -> int:
    return 352 if name == "case.nii" else (data.find(b"\n\n") + 2 if "nrrd" in name else 64)


@FUZZ
@given(data=st.data(), name=st.sampled_from(READER_CASES))
@example(data=None, name="case.nii")  # stands for the regression examples below (no mutation)
def test_readers_on_mutated_files(tmp_path: Path, reader_sources, data, name: str) -> None:
    source = reader_sources[name]
    mutated = source if data is None else data.draw(mutations(source, _header_size(name, source)))
    path = tmp_path / name
    path.write_bytes(mutated)
    check_volume(path)


@FUZZ
@given(content=st.binary(max_size=2048), name=st.sampled_from([*READER_CASES, "case.dcm", "case.nhdr"]))
@example(content=b"", name="case.nii")
@example(content=b"NRRD0004\n", name="case.nrrd")
@example(content=b"NRRD0004\ntype: short\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n\n", name="case.nrrd")
@example(content=b"\x1f\x8b\x08\x00" + b"\x00" * 12, name="case.nii.gz")
def test_readers_on_random_bytes(tmp_path: Path, content: bytes, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    check_volume(path)


#: NIfTI-1 header fields (offset, struct format) and extreme values to put there.
NIFTI_FIELDS: dict[str, tuple[int, str]] = {
    "sizeof_hdr": (0, "<i"),
    "dim0": (40, "<h"),
    "dim1": (42, "<h"),
    "dim2": (44, "<h"),
    "dim3": (46, "<h"),
    "dim4": (48, "<h"),
    "datatype": (70, "<h"),
    "bitpix": (72, "<h"),
    "pixdim1": (80, "<f"),
    "pixdim3": (88, "<f"),
    "vox_offset": (108, "<f"),
    "scl_slope": (112, "<f"),
    "scl_inter": (116, "<f"),
    "qform_code": (252, "<h"),
    "sform_code": (254, "<h"),
    "quatern_b": (256, "<f"),
    "srow_x0": (280, "<f"),
    "srow_z3": (340, "<f"),
}
_EXTREME_INTS = [0, 1, -1, 2, 7, 8, 255, 1024, 32767, -32768, 2**31 - 1, -(2**31)]
_EXTREME_FLOATS = [0.0, -0.0, 1e-38, -1.0, 1e38, float("nan"), float("inf"), float("-inf")]


@st.composite
def nifti_header_edits(draw: st.DrawFn) -> list[tuple[str, Any]]:
    edits = []
    for field in draw(st.lists(st.sampled_from(sorted(NIFTI_FIELDS)), min_size=1, max_size=3, unique=True)):
        fmt = NIFTI_FIELDS[field][1]
        if fmt == "<f":
            value = draw(st.sampled_from(_EXTREME_FLOATS) | st.floats(width=32))
        elif fmt == "<h":
            value = draw(st.sampled_from([v for v in _EXTREME_INTS if -(2**15) <= v < 2**15]))
        else:
            value = draw(st.sampled_from(_EXTREME_INTS))
        edits.append((field, value))
    return edits


@FUZZ
@given(edits=nifti_header_edits(), compressed=st.booleans())
@example(edits=[("dim1", 32767), ("dim2", 32767), ("dim3", 32767)], compressed=False)
@example(edits=[("dim0", 7), ("dim4", 3)], compressed=False)
@example(edits=[("datatype", 255)], compressed=True)
@example(edits=[("vox_offset", float("inf"))], compressed=False)
@example(edits=[("scl_slope", float("nan"))], compressed=False)
@example(edits=[("pixdim1", float("nan")), ("srow_x0", float("inf"))], compressed=False)
def test_nifti_header_fields_at_extremes(
    tmp_path: Path, edits: list[tuple[str, Any]], compressed: bool
) -> None:
    header = bytearray(_nifti_bytes(False))
    for field, value in edits:
        offset, fmt = NIFTI_FIELDS[field]
        struct.pack_into(fmt, header, offset, value)
    path = tmp_path / ("case.nii.gz" if compressed else "case.nii")
    path.write_bytes(gzip.compress(bytes(header), mtime=0) if compressed else bytes(header))
    check_volume(path)


@pytest.mark.slow
@DEEP
@given(data=st.data(), name=st.sampled_from(READER_CASES))
def test_readers_on_mutated_files_deep(tmp_path: Path, reader_sources, data, name: str) -> None:
    source = reader_sources[name]
    path = tmp_path / name
    path.write_bytes(data.draw(mutations(source, _header_size(name, source))))
    check_volume(path)


# ----------------------------------------------------------------------------------------------------------
# Bundles: config.json, safetensors header, zip
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small film_v1 bundle folder (feature size 12, 16-d text, four structures) that loads."""
    import torch

    from TextGuidedSegLib.bundle import BundleConfig, InferenceConfig, PreprocessConfig, save_bundle
    from TextGuidedSegLib.models import ModelConfig, build_model
    from TextGuidedSegLib.text import EmbeddingCache

    taxonomy = get_taxonomy().subset(["liver", "spleen", "right_kidney", "left_kidney"])
    model_config = ModelConfig(architecture="film_v1", feature_size=12, text_dim=16)
    torch.manual_seed(0)
    cache = EmbeddingCache("random-test-vectors", 16)
    cache.add(taxonomy.prompts, torch.randn(len(taxonomy.prompts), 16))
    config = BundleConfig(
        name="fuzz",
        model=model_config,
        taxonomy=taxonomy,
        preprocessing=PreprocessConfig(spacing=(3.0, 3.0, 3.0)),
        inference=InferenceConfig(roi_size=(64, 64, 64)),
    )
    path = save_bundle(
        tmp_path_factory.mktemp("fuzz-bundle") / "fuzz", build_model(model_config), config, cache
    )
    load_bundle(path)  # valid before any mutation
    return path


def _bundle_copy(source: Path, target: Path) -> Path:
    """``source``'s files hard-linked into a fresh ``target`` (config.json copied, so it can be rewritten)."""
    shutil.rmtree(target, ignore_errors=True)
    for file in source.rglob("*"):
        if file.is_file():
            destination = target / file.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            if file.name == "config.json":
                shutil.copyfile(file, destination)
            else:
                os.link(file, destination)
    return target


def check_bundle(path: Path, verify: bool = True) -> None:
    """Loading and describing ``path`` work, or raise BundleError / RegistryError naming it; nothing else."""
    for load, error in ((load_bundle, BundleError), (describe_bundle, RegistryError)):
        try:
            load(path, verify=verify)
        except error as err:
            assert str(path) in str(err), f"{load.__name__}: the error does not name {path}: {err}"


_JUNK = st.recursive(
    st.none()
    | st.booleans()
    | st.sampled_from([0, -1, 2**31, 2**63, 10**30, 1e308, -1e308, 0.5])
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into a nested JSON value."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _paths(item, (*prefix, index))
    return out


@st.composite
def config_mutations(draw: st.DrawFn, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with 1-3 values replaced by junk, deleted, or junk keys added."""
    config = json.loads(json.dumps(config))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(config) if p[0] != "checksums"] or [("name",)]
        path = draw(st.sampled_from(paths))
        parent = config
        for part in path[:-1]:
            parent = parent[part]
        op = draw(st.sampled_from(["replace", "delete", "add"]))
        if op == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(_JUNK)
        else:
            parent[path[-1]] = draw(_JUNK)
    return config


@BUNDLE_FUZZ
@given(data=st.data())
@example(data=None)
def test_bundle_with_mutated_config_json(tmp_path: Path, tiny_bundle: Path, data) -> None:
    config = json.loads((tiny_bundle / "config.json").read_text())
    folder = _bundle_copy(tiny_bundle, tmp_path / "bundle")
    if data is not None:
        (folder / "config.json").write_text(json.dumps(data.draw(config_mutations(config))))
    check_bundle(folder)


@pytest.mark.parametrize(
    "edit",
    [
        {"model": {"architecture": "film_v1", "feature_size": 10**12, "text_dim": 16}},
        {"model": {"architecture": "film_v1", "feature_size": -12, "text_dim": 16}},
        {"model": {"architecture": "film_v1", "feature_size": 12, "text_dim": 10**15}},
        {"model": []},
        {"taxonomy": 12},
        {"taxonomy": {"name": "x"}},
        {"preprocessing": {"spacing": "wide"}},
        {"preprocessing": {"spacing": [1e308, 1e308, float("inf")]}},
        {"inference": {"roi_size": [10**12, 64, 64]}},
        {"inference": {"roi_size": [0, 64, 64]}},
        {"checksums": ["model.safetensors"]},
        {"checksums": {"../../etc/passwd": "0" * 64}},
        {"text_encoder": {"kind": 3}},
        {"format_version": 2**70},
        {"format_version": "2"},
        {"name": {"nested": [1, 2, {"deep": None}]}},
    ],
    ids=lambda edit: "-".join(edit),
)
def test_bundle_config_extremes(tmp_path: Path, tiny_bundle: Path, edit: dict[str, Any]) -> None:
    config = json.loads((tiny_bundle / "config.json").read_text())
    folder = _bundle_copy(tiny_bundle, tmp_path / "bundle")
    text = json.dumps({**config, **edit}).replace("Infinity", "1e999")
    (folder / "config.json").write_text(text)
    check_bundle(folder)


def _safetensors_parts(data: bytes) -> tuple[dict[str, Any], bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def _safetensors(header: Any, body: bytes, length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + body


@st.composite
def safetensors_mutations(draw: st.DrawFn, original: bytes) -> bytes:
    """A weight file with a hostile header: bad JSON, offsets out of range, junk dtypes or shapes, huge
    lengths, or plain byte edits."""
    header, body = _safetensors_parts(original)
    kind = draw(st.sampled_from(["bytes", "json", "offsets", "dtype", "shape", "length", "junk"]))
    if kind == "bytes":
        return draw(mutations(original, 8 + len(json.dumps(header))))
    if kind == "json":
        raw = json.dumps(header).encode()
        return _safetensors(raw[: draw(st.integers(0, len(raw) - 1))] + draw(st.binary(max_size=8)), body)
    names = sorted(k for k in header if k != "__metadata__")
    name = draw(st.sampled_from(names))
    if kind == "offsets":
        start = draw(st.sampled_from([0, -1, len(body), 2**40, 2**64 - 1]) | st.integers(0, 2**63))
        end = draw(st.sampled_from([0, len(body) + 1, 2**40, 2**64 - 1]) | st.integers(0, 2**63))
        header[name]["data_offsets"] = [start, end]
    elif kind == "dtype":
        header[name]["dtype"] = draw(st.sampled_from(["F128", "", "U8x", "BOOL", "F8_E4M3"]) | _JUNK)
    elif kind == "shape":
        header[name]["shape"] = draw(st.lists(st.sampled_from([0, -1, 2**32, 2**62, 3]), max_size=5) | _JUNK)
    elif kind == "length":
        return _safetensors(header, body, draw(st.sampled_from([0, 1, 2**31, 2**63, 2**64 - 1])))
    else:
        header[name] = draw(_JUNK)
    return _safetensors(header, body)


@pytest.fixture(scope="module")
def tiny_model(tiny_bundle: Path):
    """The tiny bundle's model, built once: the weight reader's target."""
    return load_bundle(tiny_bundle).model


@BUNDLE_FUZZ
@given(data=st.data())
@example(data=None)
def test_weight_reader_with_mutated_safetensors(tmp_path: Path, tiny_bundle: Path, tiny_model, data) -> None:
    """``load_bundle``'s weight reader and ``describe_bundle``'s header reader (verify off: the checksum
    would stop every edit first) on hostile safetensors files."""
    from TextGuidedSegLib.bundle import _load_weights

    folder = _bundle_copy(tiny_bundle, tmp_path / "bundle")
    weights = folder / "model.safetensors"
    original = weights.read_bytes()
    if data is not None:
        weights.unlink()  # a hard link: never write through it into the shared bundle
        weights.write_bytes(data.draw(safetensors_mutations(original)))
    try:
        _load_weights(tiny_model, weights, folder)
    except BundleError as err:
        assert str(folder) in str(err)
    try:
        describe_bundle(folder, verify=False)
    except RegistryError as err:
        assert str(folder) in str(err)


@pytest.mark.slow
@BUNDLE_FUZZ
@given(data=st.data())
def test_bundle_with_mutated_safetensors(tmp_path: Path, tiny_bundle: Path, data) -> None:
    folder = _bundle_copy(tiny_bundle, tmp_path / "bundle")
    weights = folder / "model.safetensors"
    original = weights.read_bytes()
    weights.unlink()
    weights.write_bytes(data.draw(safetensors_mutations(original)))
    check_bundle(folder, verify=False)


def test_mutated_weights_fail_the_checksum_naming_the_file(tmp_path: Path, tiny_bundle: Path) -> None:
    folder = _bundle_copy(tiny_bundle, tmp_path / "bundle")
    weights = folder / "model.safetensors"
    original = weights.read_bytes()
    weights.unlink()
    weights.write_bytes(_safetensors(b"{not json", original[8:]))
    with pytest.raises(BundleError, match=r"checksum mismatch for model\.safetensors"):
        load_bundle(folder)


def _zip_folder(folder: Path, target: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                archive.write(file, file.relative_to(folder).as_posix())
        for name, content in (extra or {}).items():
            archive.writestr(name, content)
    return target


@pytest.fixture(scope="module")
def tiny_zip(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _zip_folder(tiny_bundle, tmp_path_factory.mktemp("fuzz-zip") / "fuzz.zip")


@BUNDLE_FUZZ
@given(data=st.data())
@example(data=None)
def test_bundle_zip_with_mutated_bytes(tmp_path: Path, tiny_zip: Path, data) -> None:
    path = tmp_path / "bundle.zip"
    # the central directory sits at the end: mutate there as often as in the local headers
    original = tiny_zip.read_bytes()
    content = original if data is None else data.draw(mutations(original, len(original)))
    path.write_bytes(content)
    check_bundle(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.zip"], "something was extracted beside it"


HOSTILE_NAMES = [
    "../outside.txt",
    "../../outside.txt",
    "/tmp/absolute.txt",
    "\\windows\\absolute.txt",
    "C:/drive.txt",
    "a/../../outside.txt",
    "text_cache/../../outside.txt",
    "config.json\x00.txt",
]


@st.composite
def hostile_members(draw: st.DrawFn) -> list[tuple[zipfile.ZipInfo, bytes]]:
    """1-3 extra members: hostile paths, symbolic links, duplicates of the bundle's own files, bombs."""
    out = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["path", "symlink", "duplicate", "bomb", "device"]))
        content = draw(st.binary(max_size=32))
        if kind == "path":
            info = zipfile.ZipInfo(draw(st.sampled_from(HOSTILE_NAMES)))
        elif kind == "symlink":
            info = zipfile.ZipInfo(draw(st.sampled_from(["link", "config.json", "text_cache"])))
            info.external_attr = (0o120777 << 16) | 0x20
            content = draw(st.sampled_from([b"/etc/passwd", b"../..", b"/"]))
        elif kind == "device":
            info = zipfile.ZipInfo("device")
            info.external_attr = 0o020666 << 16  # a character device
        elif kind == "duplicate":
            info = zipfile.ZipInfo(draw(st.sampled_from(["config.json", "model.safetensors"])))
        else:
            info = zipfile.ZipInfo("padding.bin")
            info.compress_type = zipfile.ZIP_DEFLATED
            content = b"\0" * (4 << 20)  # 4 MiB of zeros: about 1000:1
        out.append((info, content))
    return out


@BUNDLE_FUZZ
@given(members=hostile_members())
def test_bundle_zip_with_hostile_members_is_refused(tmp_path: Path, tiny_zip: Path, members) -> None:
    path = tmp_path / "bundle.zip"
    shutil.copyfile(tiny_zip, path)
    with zipfile.ZipFile(path, "a") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns of the duplicates it is asked to write
        for info, content in members:
            archive.writestr(info, content)
    for load, error in ((load_bundle, BundleError), (describe_bundle, RegistryError)):
        with pytest.raises(error, match=rf"^{path}: refusing"):
            load(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.zip"]
    assert not (tmp_path.parent / "outside.txt").exists()


def test_extract_zip_refuses_a_bomb_before_writing(tmp_path: Path) -> None:
    archive_path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("zeros.bin", b"\0" * (8 << 20))
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(
        BundleError, match=rf"^{archive_path}: refusing member 'zeros.bin': it inflates \d+ bytes"
    ):
        extract_zip(archive_path, target, BundleError)
    assert list(target.iterdir()) == []  # checked before anything was written
    assert ZIP_MAX_RATIO < (8 << 20) // 1024


def test_extract_zip_refuses_a_symlink_and_extracts_plain_members(tmp_path: Path) -> None:
    archive_path = tmp_path / "link.zip"
    link = zipfile.ZipInfo("escape")
    link.external_attr = 0o120777 << 16
    with zipfile.ZipFile(archive_path, "w") as archive:
        archive.writestr("a/b.txt", "plain")
        archive.writestr(link, "/etc")
    with pytest.raises(BundleError, match="refusing member 'escape': a symbolic link"):
        extract_zip(archive_path, tmp_path / "out", BundleError)
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as archive:
        archive.writestr("a/b.txt", "plain")
        archive.writestr("a/c/", "")
    extract_zip(plain, tmp_path / "ok", BundleError)
    assert (tmp_path / "ok" / "a" / "b.txt").read_text() == "plain" and (tmp_path / "ok" / "a" / "c").is_dir()


# ----------------------------------------------------------------------------------------------------------
# Prompt parser (H3 owns its property tests; here only the exception type at the boundary)
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_taxonomy():
    return get_taxonomy().subset(["liver", "spleen", "right_kidney", "left_kidney"])


@FUZZ
@given(text=st.text(max_size=200), free=st.booleans())
@example(text="", free=False)
@example(text="\x00\ud7ff\U0010ffff", free=True)
@example(text="liver " * 2000, free=False)
@example(text="but not " * 50, free=True)
def test_prompt_parser_raises_only_prompt_error(demo_taxonomy, text: str, free: bool) -> None:
    try:
        queries = parse_prompt(text, demo_taxonomy, allow_free_text=free)
    except PromptError:
        return
    assert queries, f"{text!r}: no queries and no PromptError"
