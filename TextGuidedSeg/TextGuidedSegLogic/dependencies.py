"""Which Python packages the library needs in Slicer's Python, and which are missing or too old.

Nothing is imported or installed at module start-up. On the first Apply the widget calls
:func:`missing_requirements`; PyTorch goes only through the PyTorch extension's ``PyTorchUtils`` (it picks
the build for the machine's CUDA), the rest through ``pip install -c constraints.txt`` with the ``>=`` floors
below (the same floors as the library's ``pyproject.toml``). The constraints file
(:func:`constraints_text`) pins every distribution already installed in Slicer's Python (numpy, SimpleITK,
torch, ...) to its installed version, so pip can add packages but never replace what Slicer ships.
:func:`packages_needing_restart` says when an upgraded package had already been imported (restart Slicer).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Requirement:
    """One package the library needs.

    Attributes:
        distribution: the name pip installs (``pyyaml``).
        minimum: the lowest version that works (a ``>=`` floor).
        purpose: what it is for, shown to the user before installing.
    """

    distribution: str
    minimum: str
    purpose: str

    @property
    def specifier(self) -> str:
        """``name>=minimum``, as pip takes it."""
        return f"{self.distribution}>={self.minimum}"


#: PyTorch: installed through the PyTorch extension (``PyTorchUtils``) when present.
TORCH = Requirement("torch", "2.4", "the neural network runtime")

#: Everything else the library imports, with the floors of its pyproject.toml.
REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("monai", "1.5", "SwinUNETR networks and sliding-window inference"),
    Requirement("einops", "0.7", "tensor reshaping inside MONAI's Swin transformer"),
    Requirement("scipy", "1.10", "connected components and morphology"),
    Requirement("nibabel", "5.0", "NIfTI reading and affine helpers"),
    Requirement("safetensors", "0.4", "reading bundle weights without pickle"),
    Requirement("transformers", "4.45", "the CLIP text encoder for free-text prompts"),
    Requirement("tqdm", "4.60", "progress reporting"),
    Requirement("pyyaml", "6.0", "configuration files"),
    Requirement("slicerio", "1.4", "writing .seg.nrrd segmentation files"),
)

#: Shipped with Slicer and never reinstalled by this module (reason per package).
PROVIDED_BY_SLICER: dict[str, str] = {
    "numpy": "Slicer's own build; replacing it breaks Slicer's VTK and ITK wrappers",
    "SimpleITK": "Slicer ships it (sitkUtils); a pip copy would shadow Slicer's",
}


@dataclass(frozen=True)
class MissingRequirement:
    """A requirement that is absent (``installed`` None) or older than its floor."""

    requirement: Requirement
    installed: str | None

    def describe(self) -> str:
        """One line for the user: ``monai>=1.5 (installed: 1.3.0)`` or ``monai>=1.5 (not installed)``."""
        state = f"installed: {self.installed}" if self.installed else "not installed"
        return f"{self.requirement.specifier} ({state}) - {self.requirement.purpose}"


def version_tuple(version: str) -> tuple[int, ...]:
    """The leading numeric release of a version string: ``"2.13.0+cpu"`` -> ``(2, 13, 0)``."""
    numbers = []
    for part in re.split(r"[.+-]", version):
        digits = re.match(r"\d+", part)
        if not digits:
            break
        numbers.append(int(digits.group()))
        if digits.group() != part:
            break
    return tuple(numbers)


def satisfies(installed: str, minimum: str) -> bool:
    """True when ``installed`` is at least ``minimum`` (release numbers compared, padded with zeros)."""
    have, need = version_tuple(installed), version_tuple(minimum)
    width = max(len(have), len(need))
    return have + (0,) * (width - len(have)) >= need + (0,) * (width - len(need))


def missing_requirements(
    requirements: Sequence[Requirement] = (TORCH, *REQUIREMENTS),
    version_of: Callable[[str], str] = importlib.metadata.version,
) -> list[MissingRequirement]:
    """The requirements that are not installed or too old (``version_of`` is injectable for tests)."""
    missing = []
    for requirement in requirements:
        try:
            installed = version_of(requirement.distribution)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed is None or not satisfies(installed, requirement.minimum):
            missing.append(MissingRequirement(requirement, installed))
    return missing


def pip_arguments(missing: Sequence[MissingRequirement]) -> list[str]:
    """``pip install`` arguments for the missing requirements, PyTorch excluded (see :data:`TORCH`)."""
    return [m.requirement.specifier for m in missing if m.requirement.distribution != TORCH.distribution]


def canonical_name(distribution: str) -> str:
    """PEP 503 normalised distribution name: ``"PyYAML"`` and ``"pyyaml"``, ``"Foo_Bar"`` -> ``"foo-bar"``."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def installed_versions() -> dict[str, str]:
    """``{canonical name: version}`` of every distribution installed in this Python (Slicer's)."""
    importlib.invalidate_caches()  # see what a pip subprocess just installed
    versions = {}
    for distribution in importlib.metadata.distributions():
        name, version = distribution.metadata["Name"], distribution.version
        if name and version:
            versions[canonical_name(name)] = version
    return versions


def constraints_text(installed: Mapping[str, str], upgrading: Iterable[str] = ()) -> str:
    """A pip constraints file pinning every installed distribution except those being installed or upgraded.

    Args:
        installed: ``{name: version}`` (:func:`installed_versions`).
        upgrading: distributions pip may install or change (the missing requirements).

    Returns:
        One ``name==version`` line per pinned distribution, sorted, ending with a newline.
    """
    free = {canonical_name(name) for name in upgrading}
    pinned = sorted((canonical_name(n), v) for n, v in installed.items() if canonical_name(n) not in free)
    return "".join(f"{name}=={version}\n" for name, version in pinned)


def pip_install_arguments(missing: Sequence[MissingRequirement], constraints_path: str) -> list[str]:
    """The argument list for ``slicer.util.pip_install``: the missing requirements (PyTorch excluded), then
    ``-c constraints_path``; empty when nothing but PyTorch is missing."""
    requirements = pip_arguments(missing)
    return [*requirements, "-c", str(constraints_path)] if requirements else []


def packages_needing_restart(
    before: Mapping[str, str],
    after: Mapping[str, str],
    imported_modules: Iterable[str],
    modules_of: Mapping[str, Iterable[str]],
) -> list[str]:
    """The distributions whose version changed (or that appeared) while one of their modules was imported:
    the running Slicer still uses the old code, so it must restart.

    Args:
        before, after: ``{name: version}`` before and after installing (:func:`installed_versions`).
        imported_modules: names of the imported modules (``sys.modules``).
        modules_of: canonical distribution name -> its top-level module names (:func:`distribution_modules`).

    Returns:
        ``"name old -> new"`` for each such distribution, sorted by name.
    """
    top_level = {name.split(".")[0] for name in imported_modules}
    before = {canonical_name(n): v for n, v in before.items()}
    changed = []
    for name, version in sorted((canonical_name(n), v) for n, v in after.items()):
        old = before.get(name)
        if old == version:
            continue
        if top_level & set(modules_of.get(name, ())):
            changed.append(f"{name} {old or '(none)'} -> {version}")
    return changed


def distribution_modules() -> dict[str, set[str]]:
    """Canonical distribution name -> its top-level module names (``pyyaml`` -> ``{"yaml"}``)."""
    modules: dict[str, set[str]] = {}
    for module, distributions in importlib.metadata.packages_distributions().items():
        for distribution in distributions:
            modules.setdefault(canonical_name(distribution), set()).add(module)
    return modules


def describe_devices() -> str:
    """What inference could run on, e.g. ``"CUDA: NVIDIA H100 (80 GB); CPU: 16 threads"``.

    Does not import PyTorch (slow, and maybe not installed yet): until it is loaded, says so.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return "PyTorch not loaded yet: devices are detected on the first Apply"
    cpu = f"CPU: {torch.get_num_threads()} threads"
    if not torch.cuda.is_available():
        return f"CUDA: not available; {cpu}"
    gpus = []
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        gpus.append(f"{properties.name} ({properties.total_memory / 2**30:.0f} GB)")
    return f"CUDA: {', '.join(gpus)}; {cpu}"
