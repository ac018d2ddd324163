"""``textguidedseg bundles list|pull|import|import-monai|remove|info`` and ``--bundle NAME`` resolution.

Each test gets its own ``$TEXTGUIDEDSEG_HOME`` and a registry (``$TEXTGUIDEDSEG_REGISTRY``) whose downloadable
entries are served through file:// URLs; the built-in demo bundle is the shipped one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import shared_path

from TextGuidedSegLib.cli import build_parser, main
from TextGuidedSegLib.cli.bundles import parse_overrides
from TextGuidedSegLib.demo import DEFAULT_DEMO_BUNDLE
from TextGuidedSegLib.registry import HOME_ENV, REGISTRY_ENV


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def home(tmp_path, monkeypatch, make_bundle) -> Path:
    """A user home with a test registry: the shipped demo, ``tiny`` (a .zip, file://), ``gated`` (the same
    .zip behind a non-commercial licence) and ``wholebody_ct_lowres`` (a stand-in for the default)."""
    archive = make_bundle(name="tiny", zip_file=True)
    common = {"url": archive.as_uri(), "sha256": sha256_of(archive), "size": archive.stat().st_size}
    bundles = [
        {
            "name": "demo_phantom_film_v1",
            "version": "0.1.0",
            "builtin": "demo_bundle",
            "license": "Apache-2.0",
        },
        {
            "name": "tiny",
            "version": "0.1.0",
            "license": "Apache-2.0",
            "vocabulary": ["Liver", "Spleen"],
            **common,
        },
        {"name": "gated", "version": "2", "license": "CC-BY-NC-ND-4.0", "license_acceptance": True, **common},
        {"name": "wholebody_ct_lowres", "version": "0.2.5", "license": "Apache-2.0", **common},
        {**common, "name": "offline", "version": "1", "url": (tmp_path / "unreachable.zip").as_uri()},
    ]
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"format_version": 1, "bundles": bundles}))
    monkeypatch.setenv(REGISTRY_ENV, str(registry))
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    return tmp_path / "home"


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rows(capsys) -> dict[str, dict]:
    code, out, _ = run(capsys, "bundles", "list", "--json")
    assert code == 0
    return {row["name"]: row for row in json.loads(out)}


def test_list_pull_info_remove(home, capsys, make_bundle):
    code, out, _ = run(capsys, "bundles", "list")
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split() == ["NAME", "VERSION", "KIND", "STRUCTURES", "SIZE", "LICENSE", "STATE"]
    assert lines[0].split()[:6] == ["demo_phantom_film_v1", "0.1.0", "bundle", "0", "built-in", "Apache-2.0"]
    size = json.loads((home.parent / "registry.json").read_text())["bundles"][1]["size"]
    expected = ["tiny", "0.1.0", "bundle", "2", f"{size / 1e6:.1f}", "MB", "Apache-2.0", "not", "installed"]
    assert lines[1].split() == expected
    assert "licence not accepted" in lines[2]

    code, out, err = run(capsys, "bundles", "pull", "tiny")  # with a progress bar (tqdm, on stderr)
    assert code == 0 and out == f"installed tiny==0.1.0 at {home / 'bundles' / 'tiny-0.1.0.zip'}\n"
    assert "100%" in err
    assert rows(capsys)["tiny"]["state"] == "installed"
    code, out, _ = run(capsys, "bundles", "pull", "tiny")
    assert code == 0 and "is installed at" in out

    code, out, _ = run(capsys, "bundles", "info", "tiny")
    assert code == 0
    assert "bundle        tiny 0.1.0" in out and f"installed at  {home / 'bundles' / 'tiny-0.1.0.zip'}" in out
    assert "structures    2: Liver, Spleen" in out
    code, out, _ = run(capsys, "bundles", "info", "gated", "--json")
    info = json.loads(out)
    assert info["installed"] is False and info["license_accepted"] is False and info["kind"] == "bundle"

    code, out, _ = run(capsys, "bundles", "remove", "tiny")
    assert code == 0 and out == f"removed {home / 'bundles' / 'tiny-0.1.0.zip'}\n"
    code, _, err = run(capsys, "bundles", "remove", "tiny")
    assert code == 2 and "textguidedseg bundles remove: error: bundle 'tiny' is not installed" in err
    code, _, err = run(capsys, "bundles", "remove", "demo_phantom_film_v1")
    assert code == 2 and "built in" in err


def test_pull_of_a_licence_gated_bundle_needs_the_flag_once(home, capsys):
    code, out, err = run(capsys, "bundles", "pull", "gated", "--no-progress")
    assert code == 2 and out == ""
    assert "CC-BY-NC-ND-4.0" in err and "textguidedseg bundles pull gated --accept-license" in err
    assert not (home / "bundles").exists()
    code, out, err = run(capsys, "bundles", "pull", "gated", "--accept-license", "--no-progress")
    assert code == 0 and "installed gated==2" in out and err == ""
    assert (
        json.loads((home / "accepted_licenses.json").read_text())["gated==2"]["license"] == "CC-BY-NC-ND-4.0"
    )
    info = json.loads(run(capsys, "bundles", "info", "gated", "--json")[1])
    assert info["installed"] and info["license_accepted"]
    assert run(capsys, "info", "gated")[0] == 0  # remembered: usable by name without the flag


def test_pull_from_a_file_downloaded_elsewhere(home, capsys):
    code, _, err = run(capsys, "bundles", "pull", "offline", "--no-progress")
    assert code == 2 and "`textguidedseg bundles pull NAME --file PATH`" in err
    assert list((home / "bundles").iterdir()) == []
    registry = json.loads((home.parent / "registry.json").read_text())
    archive = Path(registry["bundles"][1]["url"].removeprefix("file://"))
    code, _, err = run(capsys, "bundles", "pull", "offline", "--file", str(home.parent / "absent.zip"))
    assert code == 2 and "--file" in err and "absent.zip" in err
    code, out, _ = run(capsys, "bundles", "pull", "offline", "--file", str(archive), "--no-progress")
    assert code == 0 and out == f"installed offline==1 at {home / 'bundles' / 'offline-1.zip'}\n"
    corrupt = home.parent / "corrupt.zip"
    corrupt.write_bytes(archive.read_bytes()[:-1])
    assert run(capsys, "bundles", "remove", "offline")[0] == 0
    code, _, err = run(capsys, "bundles", "pull", "offline", "--file", str(corrupt), "--no-progress")
    assert code == 2 and "differs from the registry's" in err
    assert list((home / "bundles").iterdir()) == []


def test_import_then_use_by_name(home, capsys, make_bundle, caplog):
    source = make_bundle(name="mine", structures=("liver",))
    code, out, _ = run(capsys, "bundles", "import", str(source))
    assert code == 0 and out == f"imported mine==0.1.0 into {home / 'bundles' / 'mine-0.1.0'}\n"
    assert rows(capsys)["mine"] | {"state": "installed"} == {
        "name": "mine",
        "version": "0.1.0",
        "kind": "imported",
        "structures": 1,
        "size": "-",
        "license": "not stated",
        "state": "installed",
    }
    code, out, _ = run(capsys, "info", "mine", "--json")
    assert code == 0 and json.loads(out)["name"] == "mine"


@pytest.fixture
def loaded(monkeypatch) -> list[Path]:
    """The bundle paths ``segment`` loads; loading then stops the command (exit 2) before any computation."""
    paths: list[Path] = []

    def load_bundle(path, verify=True):
        paths.append(Path(path))
        raise ValueError("stopped after choosing the bundle")

    monkeypatch.setattr("TextGuidedSegLib.bundle.load_bundle", load_bundle)
    return paths


def segment_args(tmp_path: Path) -> list[str]:
    ct = shared_path("totalseg", "example_ct_sm.nii.gz")
    return ["segment", str(ct), "-p", "liver", "-o", str(tmp_path / "seg.nii.gz"), "--no-progress"]


def test_bundle_names_resolve_for_segment_and_uncached_entries_name_the_pull_command(
    home, capsys, tmp_path, loaded
):
    args = segment_args(tmp_path)
    code, _, err = run(capsys, *args, "-b", "tiny")
    assert code == 2 and "bundle tiny is not installed: run `textguidedseg bundles pull tiny`" in err
    assert loaded == []
    assert run(capsys, "bundles", "pull", "tiny", "--no-progress")[0] == 0
    for name in ("tiny", "tiny==0.1.0"):
        code, _, err = run(capsys, *args, "-b", name)
        assert code == 2 and "stopped after choosing the bundle" in err
    assert loaded == [home / "bundles" / "tiny-0.1.0.zip"] * 2
    code, _, err = run(capsys, *args, "-b", "gated")
    assert code == 2 and "--accept-license" in err and len(loaded) == 2
    run(capsys, *args, "-b", "demo_phantom_film_v1")  # built in: offline
    assert loaded[-1] == DEFAULT_DEMO_BUNDLE


def test_segment_without_bundle_uses_the_first_installed_default_else_the_demo(
    home, capsys, tmp_path, caplog, loaded
):
    def warning() -> str:
        (record,) = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "textguidedseg"]
        caplog.clear()
        return record.getMessage()

    with caplog.at_level(logging.WARNING, logger="textguidedseg"):
        run(capsys, *segment_args(tmp_path))
        message = warning()
        assert "demo_phantom_film_v1" in message and "phantoms" in message
        assert "bundles pull wholebody_ct_highres" in message
        assert loaded == [DEFAULT_DEMO_BUNDLE]

        assert run(capsys, "bundles", "pull", "wholebody_ct_lowres", "--no-progress")[0] == 0
        run(capsys, *segment_args(tmp_path))
        assert "using wholebody_ct_lowres==0.2.5" in warning()
        assert loaded[-1] == home / "bundles" / "wholebody_ct_lowres-0.2.5.zip"


def test_bundles_list_imports_neither_torch_nor_numpy(home):
    code = (
        "import sys; from TextGuidedSegLib.cli import main; assert main(['bundles', 'list']) == 0; "
        "heavy = [m for m in ('torch', 'numpy', 'monai') if m in sys.modules]; assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "wholebody_ct_lowres" in result.stdout


def test_help_of_the_bundles_verbs():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    bundles = commands.choices["bundles"]
    verbs = next(a for a in bundles._actions if a.dest == "verb")
    assert list(verbs.choices) == ["list", "pull", "import", "import-monai", "remove", "info"]
    assert "--accept-license" in verbs.choices["pull"].format_help()
    monai = verbs.choices["import-monai"].format_help()
    assert all(flag in monai for flag in ("--weights", "--output", "--set KEY=VALUE", "--name"))
    assert "registry name" in commands.choices["segment"].format_help()


@pytest.mark.parametrize(
    "items, expected",
    [
        (["inferer#overlap=0.5"], {"inferer#overlap": 0.5}),
        (
            ["displayable_configs#highres=false", "a=[1, 2]"],
            {"displayable_configs#highres": False, "a": [1, 2]},
        ),
        (["name=spleen v2"], {"name": "spleen v2"}),
        (["k=a=b"], {"k": "a=b"}),
    ],
)
def test_set_overrides_parse_json_values_else_text(items, expected):
    assert parse_overrides(items) == expected


def test_import_monai_errors_name_the_argument(home, capsys, tmp_path):
    code, _, err = run(capsys, "bundles", "import-monai", str(tmp_path / "absent"))
    assert code == 2 and "absent" in err
    code, _, err = run(capsys, "bundles", "import-monai", str(DEFAULT_DEMO_BUNDLE), "--set", "overlap")
    assert code == 2 and "--set 'overlap': expected KEY=VALUE" in err


def test_import_monai_into_the_cache_and_into_a_folder(home, capsys, tmp_path, spleen_weights):
    """The shared spleen_ct_segmentation configs with random weights in MONAI's layout."""
    from TextGuidedSegLib.bundle import load_bundle

    zoo = shared_path("monai_model_zoo", "spleen_ct_segmentation")
    weights = spleen_weights
    args = ["bundles", "import-monai", str(zoo), "--weights", str(weights), "--set", "inferer#overlap=0.25"]
    code, out, err = run(capsys, *args, "--name", "my_spleen")
    assert code == 0, err
    assert out == f"imported my_spleen==0.5.9 into {home / 'bundles' / 'my_spleen-0.5.9'}\n"
    assert rows(capsys)["my_spleen"]["kind"] == "imported"
    bundle = load_bundle(home / "bundles" / "my_spleen-0.5.9")
    assert bundle.vocabulary == ["Spleen"] and bundle.config.inference.overlap == 0.25

    target = tmp_path / "out" / "spleen"
    code, out, err = run(capsys, *args[:-2], "-o", str(target))
    assert code == 0 and out == f"wrote {target}\n", err
    assert load_bundle(target).config.inference.overlap == 0.5
    assert run(capsys, *args[:-2], "-o", str(target))[0] == 2  # exists: needs --overwrite
    assert run(capsys, *args[:-2], "-o", str(target), "--overwrite")[0] == 0
