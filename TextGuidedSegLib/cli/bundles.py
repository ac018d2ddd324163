"""``textguidedseg bundles``: list, pull, import, import-monai, remove and describe bundles; ``--bundle``.

Each verb's parser sits beside its handler; the other verbs' ``--bundle`` resolves here. Listing and
describing read JSON only (no torch); pulling a MONAI or Universal Model entry and importing load the
model stack to convert and verify.

Examples::

    textguidedseg bundles list
    textguidedseg bundles pull wholebody_ct_highres
    textguidedseg bundles pull universal_swinunetr --accept-license
    textguidedseg bundles import-monai spleen_ct_segmentation/ --set overlap=0.5
    textguidedseg segment ct.nii.gz -p "liver and both kidneys" -b wholebody_ct_highres -o seg.nii.gz
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from TextGuidedSegLib.cli.arguments import add_progress_argument
from TextGuidedSegLib.registry import (
    DEFAULT_PREFERENCE,
    DEMO_BUNDLE,
    BundleStore,
    CachedBundle,
    RegistryEntry,
    RegistryError,
)

logger = logging.getLogger("textguidedseg")

BUNDLE_HELP = (
    "a registry name (see `textguidedseg bundles list`), an installed bundle's name, or a bundle folder/.zip"
)
DEFAULT_BUNDLE_HELP = (
    f"{BUNDLE_HELP} (default: the first installed of {', '.join(DEFAULT_PREFERENCE)}, else the built-in "
    f"demo {DEMO_BUNDLE}, which knows only phantoms)"
)


def resolve_bundle(bundle: str | Path, store: BundleStore | None = None) -> Path:
    """The local path of a ``--bundle`` value (registry name, installed name or path); never downloads."""
    return (store or BundleStore()).resolve(bundle)


def default_bundle(store: BundleStore | None = None) -> Path:
    """The bundle ``segment`` uses without ``--bundle``, with a WARNING naming it (and the demo's limits)."""
    store = store or BundleStore()
    entry = store.default_bundle()
    path = store.resolve(entry.name)
    if entry.name == DEMO_BUNDLE:
        logger.warning(
            "no --bundle given and no real-CT bundle installed: using the built-in demo bundle %s, which "
            "knows only liver, spleen and kidneys on synthetic phantoms, not real CT; install "
            "one with `textguidedseg bundles pull %s`",
            entry.key,
            DEFAULT_PREFERENCE[0],
        )
    else:
        logger.warning(
            "no --bundle given: using %s (%s), the first installed of %s",
            entry.key,
            path,
            ", ".join(DEFAULT_PREFERENCE),
        )
    return path


def _size(entry: RegistryEntry) -> str:
    """A download size for people ("74.9 MB"; "built-in"; "unknown" where the publisher gives none)."""
    if entry.is_builtin:
        return "built-in"
    return f"{entry.size / 1e6:.1f} MB" if entry.size else "unknown"


def _state(store: BundleStore, entry: RegistryEntry) -> str:
    """Installed, built-in or not; and whether a licence still needs accepting."""
    state = (
        ("built-in" if entry.is_builtin else "installed") if store.is_available(entry) else "not installed"
    )
    if not store.is_license_accepted(entry):
        state += ", licence not accepted"
    return state


def _rows(store: BundleStore) -> list[dict[str, Any]]:
    """One row per registry entry, then per installed bundle the registry does not list."""
    rows = [
        {
            "name": entry.name,
            "version": entry.version,
            "kind": entry.kind,
            "structures": len(entry.vocabulary),
            "size": _size(entry),
            "license": entry.license or "not stated",
            "state": _state(store, entry),
        }
        for entry in store.entries
    ]
    registered = {entry.key for entry in store.entries}
    for cached in store.cached():
        if cached.key not in registered:
            rows.append(
                {
                    "name": cached.name,
                    "version": cached.version,
                    "kind": "imported",
                    "structures": len(cached.vocabulary),
                    "size": "-",
                    "license": _cached_license(cached),
                    "state": "installed",
                }
            )
    return rows


def _cached_license(cached: CachedBundle) -> str:
    """The licence in a cached bundle's config, without loading it."""
    from TextGuidedSegLib.registry import read_bundle_config

    try:
        return str(read_bundle_config(cached.path).get("license") or "not stated")
    except RegistryError:
        return "unknown"


def _cmd_list(args: argparse.Namespace) -> int:
    """Print the registry's bundles and the installed ones: name, kind, structures, size, licence, state."""
    rows = _rows(BundleStore())
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return 0
    columns = ("name", "version", "kind", "structures", "size", "license", "state")
    table = [[c.upper() for c in columns]] + [[str(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        sys.stdout.write(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )
        sys.stdout.write("\n")
    return 0


class _ProgressBar:
    """A tqdm bytes bar fed by ``progress(done, total)`` callbacks; created on the first call."""

    def __init__(self, description: str, enabled: bool) -> None:
        self.description, self.enabled, self.bar = description, enabled, None

    def __call__(self, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=self.description)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _cmd_pull(args: argparse.Namespace) -> int:
    """Download (and convert) a registry entry into the cache; print where it is."""
    store = BundleStore()
    entry = store.entry(args.name)
    if args.accept_license:
        store.accept_license(entry)
    store.check_license(entry)
    if args.file is not None and not Path(args.file).is_file():
        raise FileNotFoundError(f"--file {args.file} does not exist")
    local = store.path(entry)
    if local is not None:
        sys.stdout.write(f"{entry.key} is {'built in' if entry.is_builtin else 'installed'} at {local}\n")
        return 0
    bar = _ProgressBar(entry.name, enabled=not args.no_progress)
    try:
        path = store.fetch(entry, progress=bar, local_file=args.file)
    finally:
        bar.close()
    sys.stdout.write(f"installed {entry.key} at {path}\n")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    """Copy one of our bundle folders or .zip files into the cache after verifying it."""
    cached = BundleStore().import_bundle(args.path)
    sys.stdout.write(f"imported {cached.key} into {cached.path}\n")
    return 0


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` arguments -> {KEY: VALUE}; a VALUE that parses as JSON is used as such, else as text."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. --set overlap=0.5")
        try:
            overrides[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            overrides[key.strip()] = text
    return overrides


def _cmd_import_monai(args: argparse.Namespace) -> int:
    """Convert a MONAI bundle folder or .zip into one of our bundles (the cache, or -o OUT_DIR)."""
    overrides = parse_overrides(args.set)
    source = Path(args.source)
    if not source.exists():
        raise FileNotFoundError(f"MONAI bundle {source} does not exist")
    if args.weights is not None and not Path(args.weights).is_file():
        raise FileNotFoundError(f"--weights {args.weights} does not exist")
    if args.output is None:
        cached = BundleStore().import_monai(source, args.weights, overrides=overrides, name=args.name)
        sys.stdout.write(f"imported {cached.key} into {cached.path}\n")
        return 0
    from TextGuidedSegLib.importers.monai_bundle import import_monai_bundle

    path = import_monai_bundle(
        source, args.weights, args.output, overrides=overrides, name=args.name, overwrite=args.overwrite
    )
    sys.stdout.write(f"wrote {path}\n")
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    """Delete an installed bundle from the cache."""
    for path in BundleStore().remove(args.name):
        sys.stdout.write(f"removed {path}\n")
    return 0


def _info(store: BundleStore, name: str) -> dict[str, Any]:
    """The registry entry ``name`` with its cached state, or an installed bundle's description."""
    entry = store.find(name)
    if entry is not None:
        path = store.path(entry)
        source = next((c.source for c in store.cached() if path is not None and c.path == path), None)
        return {
            **entry.to_dict(),
            "installed": path is not None,
            "path": str(path) if path is not None else None,
            "license_accepted": store.is_license_accepted(entry),
            "source": source,
        }
    for cached in store.cached():
        if name in (cached.key, cached.name):
            return {
                "name": cached.name,
                "version": cached.version,
                "kind": "imported",
                "vocabulary": cached.vocabulary,
                "installed": True,
                "path": str(cached.path),
                "source": cached.source,
            }
    raise RegistryError(f"no bundle {name!r} in the registry or the cache; see `textguidedseg bundles list`")


def _cmd_info(args: argparse.Namespace) -> int:
    """Print a bundle's registry entry and cached state (no download, no model loading)."""
    info = _info(BundleStore(), args.name)
    if args.json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return 0
    labels = {
        "kind": "kind",
        "description": "description",
        "license": "licence",
        "license_url": "licence text",
        "url": "url",
        "md5": "md5",
        "sha256": "sha256",
        "size": "size (bytes)",
        "path": "installed at",
    }
    lines = [f"{'bundle':<14}{info['name']} {info['version']}"]
    lines += [f"{label:<14}{info[key]}" for key, label in labels.items() if info.get(key) not in (None, "")]
    if info.get("license_acceptance"):
        lines.append(f"{'licence state':<14}{'accepted' if info['license_accepted'] else 'not accepted'}")
    if not info["installed"]:
        lines.append(f"{'installed':<14}no: `textguidedseg bundles pull {info['name']}`")
    if info.get("source"):
        source = info["source"]
        lines.append(f"{'downloaded':<14}{source.get('downloaded')}, sha256 {source.get('sha256')}")
    lines.append(f"{'structures':<14}{len(info['vocabulary'])}: {', '.join(info['vocabulary'])}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``bundles`` and its verbs to the ``textguidedseg`` sub-commands."""
    bundles = commands.add_parser(
        "bundles",
        help="list, download, import and remove model bundles",
        description="The bundle registry and the per-user bundle cache ($TEXTGUIDEDSEG_HOME/bundles when "
        "set).",
    )
    verbs = bundles.add_subparsers(dest="verb", required=True)

    listing = verbs.add_parser("list", help="registry and installed bundles: kind, structures, size, licence")
    listing.add_argument("--json", action="store_true", help="print the rows as JSON")
    listing.set_defaults(func=_cmd_list)

    pull = verbs.add_parser("pull", help="download a registry bundle (and convert MONAI / Universal weights)")
    pull.add_argument("name", help="registry name or name==version")
    pull.add_argument(
        "--accept-license",
        action="store_true",
        help="accept the bundle's licence (required once for non-commercial bundles; remembered per user)",
    )
    pull.add_argument(
        "--file",
        metavar="PATH",
        help="the entry's file downloaded elsewhere (blocked networks): checked and converted as a download",
    )
    add_progress_argument(pull)
    pull.set_defaults(func=_cmd_pull)

    imported = verbs.add_parser("import", help="copy one of our bundle folders or .zip files into the cache")
    imported.add_argument("path", help="bundle folder or .zip (checked before it is copied)")
    imported.set_defaults(func=_cmd_import)

    monai = verbs.add_parser(
        "import-monai",
        help="convert a MONAI model-zoo bundle (folder or .zip) into one of our bundles",
        description="Reads configs/metadata.json and configs/inference.json as data (never evaluated) and "
        "writes one of our bundles: config.json + model.safetensors, checksummed.",
    )
    monai.add_argument("source", help="MONAI bundle folder or .zip")
    monai.add_argument(
        "--weights", help="the .pt weights (default: the bundle's models/<modelname>, else models/model.pt)"
    )
    monai.add_argument(
        "--output", "-o", help="bundle folder to write (default: into the user's bundle cache)"
    )
    monai.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set an inference.json entry by its '#' path before translation, e.g. inferer#overlap=0.5 "
        "(VALUE as JSON when it parses, else text); repeatable",
    )
    monai.add_argument(
        "--name", help="our bundle's name (default: the MONAI folder's name plus the weights' suffix)"
    )
    monai.add_argument("--overwrite", action="store_true", help="replace an existing -o/--output")
    monai.set_defaults(func=_cmd_import_monai)

    remove = verbs.add_parser("remove", help="delete an installed bundle from the cache")
    remove.add_argument("name", help="bundle name (every installed version) or name==version")
    remove.set_defaults(func=_cmd_remove)

    info = verbs.add_parser("info", help="a bundle's registry entry and installed state (no download)")
    info.add_argument("name", help="registry or installed bundle name")
    info.add_argument("--json", action="store_true", help="print as JSON")
    info.set_defaults(func=_cmd_info)
