"""Tests of the bundle registry and cache: sha256-checked streamed downloads, offline import, cache folder."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sys
import threading
from pathlib import Path

import pytest

from TextGuidedSegLib.registry import (
    HOME_ENV,
    BundleStore,
    DownloadCancelled,
    RegistryEntry,
    RegistryError,
    bundle_vocabulary,
    default_cache_dir,
    load_registry,
)

DEMO_NAME = "demo_phantom_film_v1"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def downloadable(path: Path, sha256: str | None = None, **kwargs) -> RegistryEntry:
    """A registry entry for the bundle .zip at ``path``, served through a file:// URL."""
    return RegistryEntry(
        name=kwargs.pop("name", "tiny"),
        version=kwargs.pop("version", "0.1.0"),
        url=path.as_uri(),
        sha256=sha256 or sha256_of(path),
        **kwargs,
    )


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


@pytest.fixture
def tiny_zip(make_bundle) -> Path:
    return make_bundle(zip_file=True)


# -- the shipped registry ---------------------------------------------------------------------------------


def test_shipped_registry_has_the_demo_bundle_as_a_builtin(tmp_path):
    from TextGuidedSegLib.demo import DEFAULT_DEMO_BUNDLE
    from TextGuidedSegLib.taxonomy import get_taxonomy, parse_prompt

    entries = load_registry()
    store = BundleStore(root=tmp_path / "cache", entries=entries)
    demo = store.entry(DEMO_NAME)
    assert demo.is_builtin and demo.url is None
    assert demo.license and demo.description
    parsed = [q.class_name for q in parse_prompt(", ".join(demo.vocabulary), get_taxonomy())]
    assert parsed == ["liver", "spleen", "right_kidney", "left_kidney"]
    assert demo.vocabulary == tuple(get_taxonomy()[c].name for c in parsed)
    if (DEFAULT_DEMO_BUNDLE / "config.json").is_file():
        assert store.path(demo) == DEFAULT_DEMO_BUNDLE
        assert store.fetch(demo) == DEFAULT_DEMO_BUNDLE  # offline: no download, no cache write
        assert bundle_vocabulary(DEFAULT_DEMO_BUNDLE) == list(demo.vocabulary)
    else:
        assert store.path(demo) is None
        with pytest.raises(RegistryError, match="should ship with TextGuidedSegLib"):
            store.fetch(demo)
    assert leftovers(tmp_path / "cache") == []


def test_entry_lookup_takes_the_newest_version_and_names_known_entries(tmp_path):
    entries = [
        RegistryEntry(name="b", version=v, url="file:///x.zip", sha256="0" * 64) for v in ("0.9.1", "0.10.0")
    ]
    store = BundleStore(root=tmp_path, entries=entries)
    assert store.entry("b").version == "0.10.0"
    assert store.entry("b==0.9.1").version == "0.9.1"
    assert store.entry("b", "0.9.1").key == "b==0.9.1"
    with pytest.raises(RegistryError, match=r"known: b==0.9.1, b==0.10.0"):
        store.entry("nope")


@pytest.mark.parametrize(
    "bundles, message",
    [
        ([{"name": "a", "version": "1", "url": "https://x/a.zip"}], "sha256"),
        ([{"name": "a", "version": "1", "url": "https://x/a.zip", "sha256": "XYZ"}], "sha256"),
        ([{"name": "a", "version": "1"}], "exactly one of 'url'"),
        ([{"name": "a", "version": "1", "builtin": "../outside"}], "inside resources"),
        ([{"name": "a", "version": "1", "builtin": "a", "colour": 1}], "unknown key"),
        ([{"name": "a", "version": "1", "builtin": "a"}] * 2, "duplicate"),
    ],
)
def test_malformed_registries_are_rejected_with_the_reason(tmp_path, bundles, message):
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"format_version": 1, "bundles": bundles}))
    with pytest.raises(RegistryError, match=message):
        load_registry(path)


def test_registry_format_version_is_checked(tmp_path):
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"format_version": 99, "bundles": []}))
    with pytest.raises(RegistryError, match="format_version 1"):
        load_registry(path)


# -- the cache folder -------------------------------------------------------------------------------------


def test_cache_folder_follows_the_environment_override(tmp_path, monkeypatch):
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "tgs"))
    assert default_cache_dir() == tmp_path / "tgs" / "bundles"
    assert BundleStore(entries=[]).root == tmp_path / "tgs" / "bundles"
    monkeypatch.delenv(HOME_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert default_cache_dir() == tmp_path / "xdg" / "textguidedseg" / "bundles"


# -- downloads --------------------------------------------------------------------------------------------


def test_download_streams_checks_and_moves_into_place(tmp_path, tiny_zip):
    from TextGuidedSegLib.bundle import load_bundle

    root = tmp_path / "cache"
    entry = downloadable(tiny_zip)
    store = BundleStore(root=root, entries=[entry])
    assert not store.is_available(entry)
    calls: list[tuple[int, int | None]] = []
    path = store.fetch(entry, progress=lambda done, total: calls.append((done, total)))
    assert path == root / "tiny-0.1.0.zip"
    assert path.read_bytes() == tiny_zip.read_bytes()
    size = tiny_zip.stat().st_size
    assert calls[0] == (0, size) and calls[-1] == (size, size)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert leftovers(root) == ["tiny-0.1.0.zip"]  # no partial file left
    assert load_bundle(path).config.name == "tiny"

    def no_network(url):
        raise AssertionError("a cached bundle must not be downloaded again")

    assert store.fetch(entry, opener=no_network) == path
    assert [b.key for b in store.cached()] == ["tiny==0.1.0"]
    assert store.cached()[0].vocabulary == ["Liver", "Spleen", "Right Kidney", "Left Kidney"]


def test_checksum_mismatch_leaves_nothing_behind(tmp_path, tiny_zip):
    root = tmp_path / "cache"
    entry = downloadable(tiny_zip, sha256="0" * 64)
    store = BundleStore(root=root, entries=[entry])
    with pytest.raises(RegistryError, match="differs from the registry's"):
        store.fetch(entry)
    assert leftovers(root) == []
    assert store.path(entry) is None


def test_download_through_an_injected_opener_and_a_failing_one(tmp_path, tiny_zip):
    payload = tiny_zip.read_bytes()

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(payload))}

    root = tmp_path / "cache"
    entry = RegistryEntry(
        name="remote", version="2", url="https://example.invalid/remote.zip", sha256=sha256_of(tiny_zip)
    )
    store = BundleStore(root=root, entries=[entry])
    seen = []
    path = store.fetch(entry, opener=lambda url: seen.append(url) or Response(payload))
    assert seen == ["https://example.invalid/remote.zip"]
    assert path.read_bytes() == payload

    def refused(url):
        raise OSError("proxy refused the connection")

    other = RegistryEntry(name="other", version="1", url="https://example.invalid/o.zip", sha256="1" * 64)
    with pytest.raises(RegistryError, match="proxy refused.*`textguidedseg bundles pull NAME --file PATH`"):
        BundleStore(root=root, entries=[other]).fetch(other, opener=refused)
    assert leftovers(root) == ["remote-2.zip"]


def test_cancelled_download_leaves_nothing_behind(tmp_path, tiny_zip):
    root = tmp_path / "cache"
    entry = downloadable(tiny_zip)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(DownloadCancelled):
        BundleStore(root=root, entries=[entry]).fetch(entry, cancel=cancel)
    assert leftovers(root) == []


# -- offline import ---------------------------------------------------------------------------------------


def test_import_from_zip_and_from_folder(tmp_path, make_bundle):
    from TextGuidedSegLib.bundle import load_bundle

    root = tmp_path / "cache"
    store = BundleStore(root=root, entries=[])
    from_zip = store.import_bundle(make_bundle(name="zipped", zip_file=True))
    assert from_zip.path == root / "zipped-0.1.0.zip" and from_zip.key == "zipped==0.1.0"
    from_folder = store.import_bundle(make_bundle(name="folder", structures=("liver",)))
    assert from_folder.path == root / "folder-0.1.0" and from_folder.path.is_dir()
    assert from_folder.vocabulary == ["Liver"]
    assert load_bundle(from_folder.path).config.name == "folder"
    assert sorted(b.key for b in store.cached()) == ["folder==0.1.0", "zipped==0.1.0"]
    # importing the same name and version again replaces it (a folder replaces a zip)
    again = store.import_bundle(make_bundle(name="zipped", seed=1))
    assert again.path == root / "zipped-0.1.0" and not (root / "zipped-0.1.0.zip").exists()
    assert leftovers(root) == ["folder-0.1.0", "zipped-0.1.0"]


def test_import_of_a_broken_bundle_changes_nothing(tmp_path, make_bundle):
    from TextGuidedSegLib.bundle import BundleError

    source = make_bundle(name="broken")
    weights = source / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    root = tmp_path / "cache"
    store = BundleStore(root=root, entries=[])
    with pytest.raises(BundleError, match="checksum mismatch for model.safetensors"):
        store.import_bundle(source)
    assert leftovers(root) == []
    with pytest.raises(RegistryError, match="does not exist"):
        store.import_bundle(tmp_path / "missing")


def test_failed_final_move_keeps_the_cached_copy(tmp_path, make_bundle, monkeypatch):
    """If moving the new copy into place fails, the one it was replacing is put back."""
    import os

    root = tmp_path / "cache"
    store = BundleStore(root=root, entries=[])
    first = store.import_bundle(make_bundle(name="kept", zip_file=True))
    before = first.path.read_bytes()
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst) == root / "kept-0.1.0":
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        store.import_bundle(make_bundle(name="kept", seed=3))  # a folder would replace the zip
    assert leftovers(root) == ["kept-0.1.0.zip"]
    assert (root / "kept-0.1.0.zip").read_bytes() == before


def test_clear_removes_cached_bundles_only(tmp_path, make_bundle):
    resources = tmp_path / "resources"
    builtin_source = make_bundle(name="shipped")
    shutil.copytree(builtin_source, resources / "shipped")
    shipped = RegistryEntry(name="shipped", version="0.1.0", builtin="shipped")
    store = BundleStore(root=tmp_path / "cache", entries=[shipped], resources=resources)
    store.import_bundle(make_bundle(name="mine"), verify=lambda path: None)
    assert store.path(shipped) == resources / "shipped"
    assert store.clear() == 1
    assert store.cached() == [] and leftovers(store.root) == []
    assert store.path(shipped) == resources / "shipped"
    assert BundleStore(root=tmp_path / "never-made", entries=[]).clear() == 0


# -- the shipped MONAI and Universal Model entries --------------------------------------------------------

#: registry entry -> (MONAI model-zoo folder in shared/, weights path in its large_files.yml)
MONAI_ENTRIES = {
    "wholebody_ct_highres": ("wholeBody_ct_segmentation", "models/model.pt"),
    "wholebody_ct_lowres": ("wholeBody_ct_segmentation", "models/model_lowres.pt"),
    "swin_unetr_btcv": ("swin_unetr_btcv_segmentation", "models/model.pt"),
    "spleen_ct": ("spleen_ct_segmentation", "models/model.pt"),
}


def channel_names(metadata: dict) -> list[str]:
    """The foreground channel names of a MONAI metadata.json, in channel order."""
    channels = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
    return [channels[k] for k in sorted(channels, key=int) if int(k) != 0]


@pytest.mark.parametrize("name", sorted(MONAI_ENTRIES))
def test_shipped_monai_entries_match_the_published_bundles(name):
    import yaml
    from conftest import shared_path

    from TextGuidedSegLib.registry import DEFAULT_PREFERENCE, RESOURCES_DIR
    from TextGuidedSegLib.registry.cache import config_vocabulary
    from TextGuidedSegLib.taxonomy import resolve_structure_name
    from TextGuidedSegLib.taxonomy.anatomy import get_vocabulary

    folder, weights = MONAI_ENTRIES[name]
    zoo = shared_path("monai_model_zoo", folder)
    entry = BundleStore(entries=load_registry()).entry(name)
    published = {f["path"]: f for f in yaml.safe_load((zoo / "large_files.yml").read_text())["large_files"]}
    assert published[weights]["hash_type"] == "md5"
    assert (entry.kind, entry.url, entry.md5) == (
        "monai",
        published[weights]["url"],
        published[weights]["hash_val"],
    )
    metadata = json.loads((zoo / "configs" / "metadata.json").read_text())
    assert entry.version == metadata["version"]
    vocabulary = get_vocabulary()
    assert list(entry.vocabulary) == [
        vocabulary[resolve_structure_name(n)].name for n in channel_names(metadata)
    ]
    assert entry.license == "Apache-2.0" and not entry.license_acceptance
    assert entry.import_config == f"monai/{name}.json"
    translated = RESOURCES_DIR / entry.import_config
    if translated.is_file():  # written by the MONAI importer's maintainers
        config = json.loads(translated.read_text())
        assert config_vocabulary(config, translated) == list(entry.vocabulary)
        assert str(config.get("version")) == entry.version
    assert name in DEFAULT_PREFERENCE or name == "spleen_ct"


def test_the_universal_entry_is_licence_gated_and_never_a_default():
    from TextGuidedSegLib.registry import DEFAULT_PREFERENCE
    from TextGuidedSegLib.taxonomy import get_taxonomy

    entry = BundleStore(entries=load_registry()).entry("universal_swinunetr")
    assert entry.kind == "universal" and entry.license_acceptance
    assert (
        entry.license == "CC-BY-NC-ND-4.0"
        and "creativecommons.org/licenses/by-nc-nd/4.0" in entry.license_url
    )
    assert entry.md5 is None and entry.sha256 is None and "no checksum" in entry.description
    assert entry.url.startswith("https://www.dropbox.com/") and entry.url.endswith("swinunetr.pth?dl=1")
    assert list(entry.vocabulary) == get_taxonomy("universal32").names
    assert entry.name not in DEFAULT_PREFERENCE


def test_pulling_spleen_ct_converts_published_layout_weights_end_to_end(tmp_path, spleen_weights):
    """The shipped spleen_ct entry pulled from a file:// copy of random weights saved as MONAI saves them."""
    import torch

    from TextGuidedSegLib.bundle import load_bundle
    from TextGuidedSegLib.registry import RESOURCES_DIR

    weights = spleen_weights
    shipped = BundleStore(entries=load_registry()).entry("spleen_ct")
    md5 = hashlib.md5(weights.read_bytes()).hexdigest()
    entry = RegistryEntry.from_dict({**shipped.to_dict(), "url": weights.as_uri(), "md5": md5})
    store = BundleStore(root=tmp_path / "home" / "bundles", entries=[entry], resources=RESOURCES_DIR)
    path = store.fetch(entry)
    assert leftovers(store.root) == ["spleen_ct-0.5.9"]
    bundle = load_bundle(path)
    assert (bundle.config.name, bundle.config.version) == ("spleen_ct", "0.5.9")
    assert bundle.vocabulary == ["Spleen"]
    ours = bundle.model.state_dict()
    for key, value in torch.load(weights, weights_only=True).items():
        (match,) = [k for k in ours if k == key or k.endswith(f".{key}")]
        assert torch.equal(ours[match], value), key
    assert json.loads((path / "source.json").read_text())["md5"] == md5
