"""The dependency installer shared by the TextGuidedSeg panel and the "Text prompt" Segment Editor effect.

``ensureDependencies`` asks the user before installing the missing Python packages
(``TextGuidedSegLogic.dependencies``) and remembers, for the whole Slicer session, that they are present.
"""

import logging

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
    from TextGuidedSegLogic.dependencies import TORCH, missing_requirements, pip_arguments

    report = report or (lambda text: logging.info("TextGuidedSeg: %s", text))
    missing = missing_requirements()
    if not missing:
        _dependenciesReady = True
        return True
    listing = "\n".join(f"  \u2022 {m.describe()}" for m in missing)
    question = _(
        "Text-Guided Segmentation needs these Python packages in Slicer's Python:\n\n{listing}\n\n"
        "Install them now? This downloads several hundred MB and can take a few minutes. PyTorch is "
        "installed through the PyTorch extension when it is present (it picks the build for your GPU)."
    ).format(listing=listing)
    if not slicer.util.confirmOkCancelDisplay(question, _("Install Python packages")):
        report(_("The Python packages are needed to segment; nothing was installed."))
        return False
    failures = []
    with slicer.util.WaitCursor():
        if any(m.requirement.distribution == TORCH.distribution for m in missing):
            report(_("Installing PyTorch..."))
            slicer.app.processEvents()
            failures += _installTorch()
        for argument in pip_arguments(missing):
            report(_("Installing {package}...").format(package=argument))
            slicer.app.processEvents()
            try:
                slicer.util.pip_install(argument)
            except Exception as err:  # noqa: BLE001 - every failure is reported below
                failures.append(f"{argument}: {err}")
    still = missing_requirements()
    if still:
        packages = "\n".join(m.describe() for m in still)
        slicer.util.errorDisplay(
            _(
                "These packages could not be installed:\n{packages}\n\nRestart Slicer and try again, or "
                "install them from the Python console with slicer.util.pip_install()."
            ).format(packages=packages),
            detailedText="\n".join(failures) or _("(pip reported no error)"),
        )
        report(_("Installing the Python packages failed."))
        return False
    _dependenciesReady = True
    report(_("Python packages installed."))
    return True


def _installTorch() -> list:
    """Install PyTorch through the PyTorch extension when present, else with pip; return the failures."""
    from TextGuidedSegLogic.dependencies import TORCH

    try:
        import PyTorchUtils
    except ImportError:
        PyTorchUtils = None  # noqa: N806 - the module's own name
    try:
        if PyTorchUtils is not None:
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=False, torchVersionRequirement=f">={TORCH.minimum}"
            )
            return [] if torch is not None else [_("PyTorch: the PyTorch extension did not install it")]
        logging.info("TextGuidedSeg: the PyTorch extension is not installed; installing torch with pip")
        slicer.util.pip_install(TORCH.specifier)
        return []
    except Exception as err:  # noqa: BLE001 - reported to the user
        return [f"{TORCH.specifier}: {err}"]
