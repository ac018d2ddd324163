"""The extension's sample data (a phantom CT and its reference segmentation) for Slicer's SampleData module.

The files live in the module's ``Resources/SampleData`` (so they load offline) and are described by
``SampleData.json`` there: file names, node names, load types and SHA256 checksums, written by
``Testing/tools/make_sample_data.py``. :func:`sample_data_sources` turns it into the keyword arguments of
``SampleData.SampleDataLogic.registerCustomSampleDataSource`` (Slicer's Modules/Scripted/SampleData).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

#: The SampleData category of this extension's data sets.
CATEGORY = "TextGuidedSeg"
MANIFEST = "SampleData.json"


def sha256_file(path: str | Path) -> str:
    """Hex SHA256 digest of a file (read in 1 MB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: str | Path) -> list[dict[str, Any]]:
    """The data sets described by ``folder/SampleData.json``.

    Raises:
        ValueError: the manifest is missing, not JSON, or a data set lacks a key (the message names it).
    """
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ValueError(f"sample data manifest {path} is missing") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"sample data manifest {path} is not valid JSON: {err}") from err
    sources = data.get("sources") if isinstance(data, dict) else None
    if not isinstance(sources, list) or not sources:
        raise ValueError(f"{path}: expected an object with a non-empty 'sources' list")
    for index, source in enumerate(sources):
        for key in ("sampleName", "thumbnail", "files"):
            if key not in source:
                raise ValueError(f"{path}: sources[{index}] has no {key!r}")
        for number, entry in enumerate(source["files"]):
            for key in ("fileName", "nodeName", "loadFileType", "sha256"):
                if key not in entry:
                    raise ValueError(f"{path}: sources[{index}].files[{number}] has no {key!r}")
    return sources


def sample_data_sources(folder: str | Path) -> list[dict[str, Any]]:
    """Keyword arguments of ``registerCustomSampleDataSource`` for each data set, with ``file://`` URIs.

    Raises:
        ValueError: the manifest is invalid, or a file it names is missing (the message names it).
    """
    folder = Path(folder).resolve()
    registrations = []
    for source in read_manifest(folder):
        files = source["files"]
        for entry in files:
            if not (folder / entry["fileName"]).is_file():
                raise ValueError(f"sample data file {folder / entry['fileName']} is missing")
        registrations.append(
            {
                "category": CATEGORY,
                "sampleName": source["sampleName"],
                "uris": [(folder / e["fileName"]).as_uri() for e in files],
                "fileNames": [e["fileName"] for e in files],
                "nodeNames": [e["nodeName"] for e in files],
                "loadFileTypes": [e["loadFileType"] for e in files],
                "checksums": [f"SHA256:{e['sha256']}" for e in files],
                "thumbnailFileName": str(folder / source["thumbnail"]),
            }
        )
    return registrations
