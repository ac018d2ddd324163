"""Registry entries of kind "monai" and "universal": md5/sha256-checked weights downloads converted into our
bundles, licence acceptance, trust on first use, cleanup on failure, name resolution and the default bundle.

Downloads are served through file:// URLs; converters are the real importers where a test says so, else
recording fakes installed in ``sys.modules`` (the registry imports them lazily).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import threading
import types
from pathlib import Path

import pytest

from TextGuidedSegLib.registry import (
    SOURCE_FILE,
    BundleStore,
    DownloadCancelled,
    LicenseNotAccepted,
    RegistryEntry,
    RegistryError,
    load_registry,
)

MIB = 1 << 20


def digest(path: Path, algorithm: str) -> str:
    return hashlib.new(algorithm, path.read_bytes()).hexdigest()


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


@pytest.fixture
def fake_pt(tmp_path) -> Path:
    """A small torch state dict saved as MONAI publishes weights (``torch.save`` of a dict of tensors)."""
    import torch

    path = tmp_path / "published" / "model.pt"
    path.parent.mkdir()
    torch.manual_seed(0)
    torch.save({"model.0.conv.weight": torch.randn(4, 1, 3, 3, 3)}, path)
    return path


@pytest.fixture
def converters(monkeypatch, make_bundle):
    """Recording fakes of build_bundle_from_weights and import_universal_checkpoint: they copy a tiny bundle
    to ``output``; ``calls`` records (kind, config, weights bytes); ``fail`` makes the next call raise."""
    source = make_bundle(name="converted")
    state = types.SimpleNamespace(calls=[], fail=None)

    def convert(kind, config, weights, output):
        state.calls.append((kind, config, Path(weights).read_bytes()))
        if state.fail is not None:
            raise state.fail
        shutil.copytree(source, output)
        return Path(output)

    monai = types.ModuleType("TextGuidedSegLib.importers.monai_bundle")
    monai.build_bundle_from_weights = lambda config, weights, output: convert(
        "monai", config, weights, output
    )
    universal = types.ModuleType("TextGuidedSegLib.importers.universal")
    universal.import_universal_checkpoint = lambda checkpoint, output: convert(
        "universal", None, checkpoint, output
    )
    monkeypatch.setitem(sys.modules, monai.__name__, monai)
    monkeypatch.setitem(sys.modules, universal.__name__, universal)
    return state


def monai_entry(weights: Path, **kwargs) -> RegistryEntry:
    return RegistryEntry(
        name=kwargs.pop("name", "tiny_monai"),
        version="1.0",
        kind="monai",
        url=weights.as_uri(),
        import_config=kwargs.pop("import_config", "monai/tiny_monai.json"),
        vocabulary=("Spleen",),
        **kwargs,
    )


def gated_entry(weights: Path, **kwargs) -> RegistryEntry:
    return RegistryEntry(
        name="nc_model",
        version="1",
        kind="universal",
        url=weights.as_uri(),
        license="CC-BY-NC-ND-4.0",
        license_acceptance=True,
        **kwargs,
    )


@pytest.fixture
def resources(tmp_path) -> Path:
    """A resources folder holding the translated config of ``tiny_monai``."""
    folder = tmp_path / "resources"
    (folder / "monai").mkdir(parents=True)
    (folder / "monai" / "tiny_monai.json").write_text(json.dumps({"name": "other", "version": "0", "x": 1}))
    return folder


# -- monai entries --------------------------------------------------------------------------------------


def test_monai_weights_with_the_published_md5_are_converted_into_the_cache(
    tmp_path, fake_pt, resources, converters
):
    root = tmp_path / "home" / "bundles"
    entry = monai_entry(fake_pt, md5=digest(fake_pt, "md5"))
    store = BundleStore(root=root, entries=[entry], resources=resources)
    seen = []
    path = store.fetch(entry, progress=lambda done, total: seen.append((done, total)))
    assert path == root / "tiny_monai-1.0" and path.is_dir()
    assert leftovers(root) == ["tiny_monai-1.0"]  # no partial download, no staging folder
    (kind, config, weights), *_ = converters.calls
    # the translated config, renamed as the entry, and the published bytes went to the converter
    assert kind == "monai" and config == {"name": "tiny_monai", "version": "1.0", "x": 1}
    assert weights == fake_pt.read_bytes()
    size = fake_pt.stat().st_size
    assert seen[0] == (0, size) and seen[-1] == (size, size)
    source = json.loads((path / SOURCE_FILE).read_text())
    assert source["md5"] == entry.md5 and source["sha256"] == digest(fake_pt, "sha256")
    assert source["url"] == entry.url and source["downloaded"]
    cached = store.cached()
    assert [(c.key, c.path, c.source["sha256"]) for c in cached] == [
        ("tiny_monai==1.0", path, source["sha256"])
    ]
    assert store.fetch(entry, opener=lambda url: pytest.fail("downloaded twice")) == path


@pytest.mark.parametrize(
    "md5, sha256, wrong",
    [
        ("0" * 32, None, "md5"),
        (None, "0" * 64, "sha256"),
        ("right", "0" * 64, "sha256"),
        ("0" * 32, "right", "md5"),
    ],
    ids=["md5", "sha256", "right-md5-wrong-sha256", "wrong-md5-right-sha256"],
)
def test_a_checksum_mismatch_is_rejected_leaving_nothing(
    tmp_path, fake_pt, resources, converters, md5, sha256, wrong
):
    actual = {"md5": digest(fake_pt, "md5"), "sha256": digest(fake_pt, "sha256")}
    md5, sha256 = (actual[k] if v == "right" else v for k, v in (("md5", md5), ("sha256", sha256)))
    root = tmp_path / "cache"
    entry = monai_entry(fake_pt, md5=md5, sha256=sha256)
    store = BundleStore(root=root, entries=[entry], resources=resources)
    with pytest.raises(RegistryError, match=f"{wrong} {actual[wrong]} differs from the registry's"):
        store.fetch(entry)
    assert leftovers(root) == [] and converters.calls == []
    assert store.path(entry) is None


def test_sha256_alone_is_accepted(tmp_path, fake_pt, resources, converters):
    entry = monai_entry(fake_pt, sha256=digest(fake_pt, "sha256"))
    path = BundleStore(root=tmp_path / "cache", entries=[entry], resources=resources).fetch(entry)
    assert json.loads((path / SOURCE_FILE).read_text())["sha256"] == entry.sha256


def test_a_copy_downloaded_elsewhere_is_checked_and_converted_as_a_download(
    tmp_path, fake_pt, resources, converters
):
    entry = monai_entry(tmp_path / "unreachable.pt", md5=digest(fake_pt, "md5"))
    store = BundleStore(root=tmp_path / "cache", entries=[entry], resources=resources)
    with pytest.raises(RegistryError, match="bundles pull NAME --file PATH"):
        store.fetch(entry)
    path = store.fetch(entry, local_file=fake_pt)
    assert converters.calls[0][2] == fake_pt.read_bytes()
    assert json.loads((path / SOURCE_FILE).read_text())["md5"] == entry.md5


def test_cancel_mid_download_leaves_nothing(tmp_path, resources, converters):
    weights = tmp_path / "big.pt"
    weights.write_bytes(bytes(range(256)) * (3 * MIB // 256))  # three chunks
    entry = monai_entry(weights, md5=digest(weights, "md5"))
    root = tmp_path / "cache"
    cancel = threading.Event()
    seen = []

    def progress(done, total):
        seen.append(done)
        if done >= MIB:
            cancel.set()

    with pytest.raises(DownloadCancelled):
        BundleStore(root=root, entries=[entry], resources=resources).fetch(entry, progress, cancel)
    assert seen == [0, MIB]  # stopped after the first chunk
    assert leftovers(root) == [] and converters.calls == []


def test_a_failing_conversion_leaves_nothing(tmp_path, fake_pt, resources, converters):
    converters.fail = ValueError("weights: missing key 'model.1.conv.weight'")
    entry = monai_entry(fake_pt, md5=digest(fake_pt, "md5"))
    root = tmp_path / "cache"
    with pytest.raises(ValueError, match="missing key"):
        BundleStore(root=root, entries=[entry], resources=resources).fetch(entry)
    assert leftovers(root) == []


def test_a_missing_translated_config_is_named(tmp_path, fake_pt, resources, converters):
    entry = monai_entry(fake_pt, md5=digest(fake_pt, "md5"), import_config="monai/absent.json")
    with pytest.raises(RegistryError, match=r"translated config .*absent.json"):
        BundleStore(root=tmp_path / "cache", entries=[entry], resources=resources).fetch(entry)
    assert leftovers(tmp_path / "cache") == []


# -- licences and trust on first use -----------------------------------------------------------------------


def test_a_licence_gated_entry_refuses_until_accepted_and_remembers(tmp_path, fake_pt, converters):
    root = tmp_path / "home" / "bundles"
    entry = gated_entry(fake_pt, sha256=digest(fake_pt, "sha256"))
    store = BundleStore(root=root, entries=[entry])
    for attempt in (store.fetch, store.resolve):
        with pytest.raises(LicenseNotAccepted) as caught:
            attempt(entry) if attempt == store.fetch else attempt("nc_model")
        message = str(caught.value)
        assert "--accept-license" in message and "CC-BY-NC-ND-4.0" in message
        assert "textguidedseg bundles pull nc_model --accept-license" in message
    assert leftovers(root) == [] and converters.calls == []
    assert not store.is_license_accepted(entry)

    path = store.fetch(entry, accept_license=True)
    assert converters.calls[0][0] == "universal" and (path / "config.json").is_file()
    record = json.loads((tmp_path / "home" / "accepted_licenses.json").read_text())
    assert record["nc_model==1"]["license"] == "CC-BY-NC-ND-4.0"
    # remembered per user: a new store over the same folder uses it without asking again
    again = BundleStore(root=root, entries=[entry])
    assert again.is_license_accepted(entry) and again.resolve("nc_model") == path
    # a licence the user did not accept (the entry's licence changed) must be accepted anew
    changed = RegistryEntry.from_dict({**entry.to_dict(), "license": "CC-BY-NC-4.0"})
    with pytest.raises(LicenseNotAccepted):
        BundleStore(root=root, entries=[changed]).resolve("nc_model")


def test_without_a_published_checksum_the_first_download_is_trusted_and_pinned(tmp_path, fake_pt, converters):
    root = tmp_path / "home" / "bundles"
    entry = gated_entry(fake_pt)
    store = BundleStore(root=root, entries=[entry])
    path = store.fetch(entry, accept_license=True)
    known = json.loads((tmp_path / "home" / "known_downloads.json").read_text())
    assert known[entry.url]["sha256"] == digest(fake_pt, "sha256")
    assert json.loads((path / SOURCE_FILE).read_text())["sha256"] == digest(fake_pt, "sha256")

    store.remove("nc_model")
    fake_pt.write_bytes(fake_pt.read_bytes() + b"changed")
    with pytest.raises(RegistryError, match="differs from .*first download"):
        store.fetch(entry)
    assert leftovers(root) == []


# -- entry validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"kind": "monai", "url": "https://x/m.pt", "import_config": "monai/m.json"}, "'md5' or 'sha256'"),
        ({"kind": "monai", "url": "https://x/m.pt", "md5": "0" * 32}, "import_config"),
        (
            {"kind": "monai", "url": "https://x/m.pt", "md5": "XYZ", "import_config": "m.json"},
            "32 lower-case",
        ),
        ({"kind": "monai", "builtin": "m", "md5": "0" * 32, "import_config": "m.json"}, "only a 'bundle'"),
        ({"kind": "monai", "url": "u", "md5": "0" * 32, "import_config": "../m.json"}, "inside resources"),
        (
            {"kind": "bundle", "url": "https://x/a.zip", "sha256": "0" * 64, "import_config": "m.json"},
            "'monai'",
        ),
        ({"kind": "onnx", "url": "https://x/a.onnx"}, "kind must be one of"),
        ({"kind": "universal", "url": "https://x/u.pth", "size": -3}, "size"),
    ],
)
def test_malformed_entries_of_the_new_kinds_are_rejected(fields, message):
    with pytest.raises(RegistryError, match=message):
        RegistryEntry(name="a", version="1", **fields)


def test_older_entries_default_to_the_bundle_kind(tmp_path):
    path = tmp_path / "registry.json"
    item = {"name": "a", "version": "1", "url": "https://x/a.zip", "sha256": "0" * 64}
    path.write_text(json.dumps({"format_version": 1, "bundles": [item]}))
    (entry,) = load_registry(path)
    assert entry.kind == "bundle" and not entry.license_acceptance
    assert RegistryEntry.from_dict(entry.to_dict()) == entry


# -- resolution, default bundle, removal ------------------------------------------------------------------


def test_names_resolve_to_cached_paths_and_uncached_entries_name_the_pull_command(
    tmp_path, fake_pt, make_bundle, resources, converters
):
    resources_demo = resources / "demo"
    shutil.copytree(make_bundle(name="demo"), resources_demo)
    demo = RegistryEntry(name="demo_phantom_film_v1", version="0.1.0", builtin="demo")
    real = monai_entry(fake_pt, name="wholebody_ct_highres", md5=digest(fake_pt, "md5"), size=75 * 10**6)
    store = BundleStore(root=tmp_path / "cache", entries=[demo, real], resources=resources)
    assert store.resolve("demo_phantom_film_v1") == resources_demo  # built in: offline
    assert store.resolve(str(fake_pt)) == fake_pt  # a path stays a path
    with pytest.raises(RegistryError, match=r"`textguidedseg bundles pull wholebody_ct_highres` .*75 MB"):
        store.resolve("wholebody_ct_highres")
    assert store.default_bundle().name == "demo_phantom_film_v1"
    installed = store.fetch(real)
    assert store.resolve("wholebody_ct_highres") == installed
    assert store.resolve("wholebody_ct_highres==1.0") == installed
    assert store.default_bundle().name == "wholebody_ct_highres"
    imported = store.import_bundle(make_bundle(name="mine"))
    assert store.resolve("mine") == store.resolve("mine==0.1.0") == imported.path
    with pytest.raises(RegistryError, match="'nothing'.*bundles list"):
        store.resolve("nothing")


def test_licence_gated_entries_are_never_the_default(tmp_path, fake_pt, make_bundle, converters):
    resources = tmp_path / "resources"
    shutil.copytree(make_bundle(name="demo"), resources / "demo")
    demo = RegistryEntry(name="demo_phantom_film_v1", version="0.1.0", builtin="demo")
    gated = gated_entry(fake_pt)
    store = BundleStore(root=tmp_path / "cache", entries=[demo, gated], resources=resources)
    store.fetch(gated, accept_license=True)
    assert store.default_bundle(preference=("nc_model",)).name == "nc_model"  # installed and accepted
    store.state.folder = tmp_path / "another_user"
    assert store.default_bundle(preference=("nc_model",)).name == "demo_phantom_film_v1"


def with_version(folder: Path, version: str) -> Path:
    """``folder`` (a bundle) with another version in its config.json."""
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "version": version}))
    return folder


def test_remove_deletes_every_cached_version_and_refuses_built_ins(tmp_path, make_bundle):
    resources = tmp_path / "resources"
    shutil.copytree(make_bundle(name="demo"), resources / "demo")
    demo = RegistryEntry(name="demo", version="0.1.0", builtin="demo")
    store = BundleStore(root=tmp_path / "cache", entries=[demo], resources=resources)
    store.import_bundle(make_bundle(name="mine"), verify=lambda p: None)
    store.import_bundle(with_version(make_bundle(name="mine"), "0.2.0"), verify=lambda p: None)
    store.import_bundle(make_bundle(name="other"), verify=lambda p: None)
    assert [p.name for p in store.remove("mine==0.2.0")] == ["mine-0.2.0"]
    store.import_bundle(with_version(make_bundle(name="mine"), "0.2.0"), verify=lambda p: None)
    assert [p.name for p in store.remove("mine")] == ["mine-0.1.0", "mine-0.2.0"]
    assert leftovers(store.root) == ["other-0.1.0"]
    with pytest.raises(RegistryError, match="built in"):
        store.remove("demo")
    with pytest.raises(RegistryError, match="not installed"):
        store.remove("mine")


@pytest.mark.slow
def test_pulling_a_universal_checkpoint_converts_it_after_acceptance(tmp_path):
    """The real importer on a small (feature size 12) checkpoint in the published layout: DDP ``module.``
    prefixes, ``GAP.`` for our ``image_pool.``, the backbone at the top level, ``organ_embedding``."""
    import torch

    from TextGuidedSegLib.bundle import load_bundle
    from TextGuidedSegLib.models import ModelConfig, build_model

    pytest.importorskip("TextGuidedSegLib.importers.universal")
    torch.manual_seed(0)
    model = build_model(ModelConfig(architecture="universal", feature_size=12)).eval()
    state = {}
    for key, value in model.state_dict().items():
        name = "GAP." + key.removeprefix("image_pool.") if key.startswith("image_pool.") else key
        state[f"module.{name.removeprefix('backbone.')}"] = value
    state["module.organ_embedding"] = torch.randn(32, 512)
    checkpoint = tmp_path / "swinunetr.pth"
    torch.save({"net": state}, checkpoint)
    entry = gated_entry(checkpoint, sha256=digest(checkpoint, "sha256"), vocabulary=("Spleen",))
    store = BundleStore(root=tmp_path / "home" / "bundles", entries=[entry])
    with pytest.raises(LicenseNotAccepted):
        store.fetch(entry)
    path = store.fetch(entry, accept_license=True)
    bundle = load_bundle(path)
    assert bundle.config.model.architecture == "universal" and len(bundle.vocabulary) == 32
    ours = bundle.model.state_dict()
    key = next(k for k in model.state_dict() if k.endswith("weight") and k.startswith("backbone."))
    assert torch.equal(ours[key], model.state_dict()[key])
    assert [c.key for c in store.cached()] == ["nc_model==1"]  # the registry's identity, from source.json
