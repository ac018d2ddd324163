"""The dependency installer shared by the TextGuidedSeg panel and the "Text prompt" Segment Editor effect.

``ensureDependencies`` asks the user before installing the missing Python packages
(``TextGuidedSegLogic.dependencies``) and remembers, for the whole Slicer session, that they are present.
PyTorch is installed only through the PyTorch extension (``PyTorchUtils``, a declared dependency of this
extension); everything else with ``pip install -c constraints.txt``, the constraints pinning every
distribution already in Slicer's Python. When a package that was already imported changed version, the user
is asked to restart Slicer.
"""

import logging
import os
import sys
import tempfile

import slicer
from slicer.i18n import tr as _

__all__ = ["ensureDependencies"]

#: True once every package was found or installed: the rest of the session skips the check.
_dependenciesReady = False


def ensureDependencies(report=None) -> bool:
    """Install missing Python packages after asking the user; True when everything is available.

    Called on the first Apply of the panel and of the effect. ``report(text)`` shows progress (a status line).
    """
    global _dependenciesReady
    if _dependenciesReady:
        return True
    from TextGuidedSegLogic.dependencies import TORCH, installed_versions, missing_requirements

    report = report or (lambda text: logging.info("TextGuidedSeg: %s", text))
    missing = missing_requirements()
    if not missing:
        _dependenciesReady = True
        return True
    listing = "\n".join(f"  \u2022 {m.describe()}" for m in missing)
    question = _(
        "Text-Guided Segmentation needs these Python packages in Slicer's Python:\n\n{listing}\n\n"
        "Install them now? This downloads several hundred MB and can take a few minutes. PyTorch is "
        "installed by the PyTorch extension (it picks the build for your GPU); packages Slicer already "
        "has are kept at their versions."
    ).format(listing=listing)
    if not slicer.util.confirmOkCancelDisplay(question, _("Install Python packages")):
        report(_("The Python packages are needed to segment; nothing was installed."))
        return False
    before, importedBefore = installed_versions(), list(sys.modules)
    failures = []
    with slicer.util.WaitCursor():
        if any(m.requirement.distribution == TORCH.distribution for m in missing):
            report(_("Installing PyTorch..."))
            slicer.app.processEvents()
            failures += _installTorch()
        failures += _pipInstall(missing, report)
    after = installed_versions()
    still = missing_requirements()
    if still:
        packages = "\n".join(m.describe() for m in still)
        slicer.util.errorDisplay(
            _(
                "These packages could not be installed:\n{packages}\n\nInstall the PyTorch extension "
                "from the Extensions Manager if PyTorch is missing, restart Slicer and try again."
            ).format(packages=packages),
            detailedText="\n".join(failures) or _("(pip reported no error)"),
        )
        report(_("Installing the Python packages failed."))
        return False
    if _askRestartIfNeeded(before, after, importedBefore):
        report(_("Restart Slicer to use the updated Python packages."))
        return False
    _dependenciesReady = True
    report(_("Python packages installed."))
    return True


def _pipInstall(missing, report) -> list:
    """Install the non-PyTorch requirements with a constraints file pinning what is installed now."""
    from TextGuidedSegLogic.dependencies import constraints_text, installed_versions, pip_install_arguments

    upgrading = [m.requirement.distribution for m in missing]
    handle, constraintsPath = tempfile.mkstemp(prefix="TextGuidedSeg-constraints-", suffix=".txt")
    try:
        with os.fdopen(handle, "w") as constraints:
            constraints.write(constraints_text(installed_versions(), upgrading))
        arguments = pip_install_arguments(missing, constraintsPath)
        if not arguments:
            return []
        report(_("Installing {packages}...").format(packages=", ".join(arguments[:-2])))
        slicer.app.processEvents()
        slicer.util.pip_install(arguments)
        return []
    except Exception as err:  # noqa: BLE001 - every failure is reported to the user
        return [f"pip install {' '.join(pip_install_arguments(missing, constraintsPath))}: {err}"]
    finally:
        os.remove(constraintsPath)


def _installTorch() -> list:
    """Install PyTorch through the PyTorch extension; return the failures (the extension missing is one)."""
    from TextGuidedSegLogic.dependencies import TORCH

    try:
        import PyTorchUtils
    except ImportError:
        return [
            _(
                "PyTorch: the PyTorch extension (PyTorchUtils) is not installed. Install it from the "
                "Extensions Manager, restart Slicer and press Apply again."
            )
        ]
    try:
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=False, torchVersionRequirement=f">={TORCH.minimum}"
        )
        return [] if torch is not None else [_("PyTorch: the PyTorch extension did not install it")]
    except Exception as err:  # noqa: BLE001 - reported to the user
        return [f"{TORCH.specifier}: {err}"]


def _askRestartIfNeeded(before: dict, after: dict, importedBefore: list) -> bool:
    """Ask to restart when a package imported before installing changed version; True when one did (the
    modules PyTorchUtils imports while installing are new, not stale)."""
    from TextGuidedSegLogic.dependencies import distribution_modules, packages_needing_restart

    changed = packages_needing_restart(before, after, importedBefore, distribution_modules())
    if not changed:
        return False
    question = _(
        "These packages were updated while Slicer was using them:\n\n{packages}\n\nSlicer must restart "
        "to use the new versions. Restart now? (Save your scene first.)"
    ).format(packages="\n".join(changed))
    if slicer.util.confirmYesNoDisplay(question, windowTitle=_("Restart Slicer")):
        slicer.util.restart()
    return True
