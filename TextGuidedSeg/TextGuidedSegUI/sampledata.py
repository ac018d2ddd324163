"""Register and load the extension's sample data with Slicer's Sample Data module.

The files ship in the module's ``Resources/SampleData`` and are registered with ``file://`` URIs and their
SHA256 checksums (``TextGuidedSegLogic.sampledata``), so the "Try it" link and the Sample Data module work
offline. Slicer's API used: ``SampleData.SampleDataLogic.registerCustomSampleDataSource`` and
``SampleDataLogic().downloadSamples`` (Modules/Scripted/SampleData/SampleData.py).
"""

import os

__all__ = ["SAMPLE_DATA_FOLDER", "loadSampleData", "registerSampleData"]

#: ``<module>/Resources/SampleData`` in the source tree and in an installed extension alike.
SAMPLE_DATA_FOLDER = os.path.join(os.path.dirname(os.path.dirname(__file__)), "Resources", "SampleData")


def registerSampleData() -> list:
    """Register every data set of the manifest (idempotent: Slicer skips a registered one); return names."""
    import SampleData
    from TextGuidedSegLogic.sampledata import sample_data_sources

    names = []
    for arguments in sample_data_sources(SAMPLE_DATA_FOLDER):
        SampleData.SampleDataLogic.registerCustomSampleDataSource(**arguments)
        names.append(arguments["sampleName"])
    return names


def loadSampleData():
    """Load the sample phantom CT and its reference segmentation; return the CT's volume node.

    Raises:
        RuntimeError: the Sample Data module loaded no volume (the message names the data set).
    """
    import SampleData

    name = registerSampleData()[0]
    nodes = SampleData.SampleDataLogic().downloadSamples(name)
    volumes = [node for node in nodes if node is not None and node.IsA("vtkMRMLScalarVolumeNode")]
    if not volumes:
        raise RuntimeError(f"the Sample Data module loaded no volume for {name} from {SAMPLE_DATA_FOLDER}")
    return volumes[0]
