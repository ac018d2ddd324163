"""The sections of a MONAI bundle's ``inference.json`` and ``metadata.json`` translated into ours, as data.

Each function reads one section through :class:`MonaiConfigReader` (nothing is evaluated) and refuses what our
Segmenter cannot reproduce exactly, naming the entry: ``network_def`` -> network class and arguments,
``preprocessing`` -> spacing, interpolation, intensity steps and crop, ``inferer`` -> sliding-window settings,
``postprocessing`` -> activation and what is inverted, ``metadata.json`` ``channel_def`` -> taxonomy (label
id = softmax channel; for sigmoid models channel ``c`` is structure ``c + 1``), ``LICENSE`` -> licence.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from TextGuidedSegLib.importers.monai_config import MonaiConfigError, MonaiConfigReader
from TextGuidedSegLib.models.monai_network import MONAI_NETWORKS
from TextGuidedSegLib.taxonomy import Taxonomy, resolve_structure_name, vocabulary_taxonomy

logger = logging.getLogger(__name__)

# Transforms our reader and Segmenter do anyway; arguments of each transform: read, or ignored.
_SAME_AS_OURS = {"LoadImaged", "EnsureTyped", "EnsureChannelFirstd"}
_TRANSFORM_KEYS = {"_target_", "keys", "allow_missing_keys"}
_TRANSFORM_ARGS = {
    "Orientationd": {"axcodes": None},
    "Spacingd": {"pixdim": None, "mode": "bilinear", "padding_mode": "border", "align_corners": False},
    "ScaleIntensityRanged": {"a_min": None, "a_max": None, "b_min": None, "b_max": None, "clip": False},
    "NormalizeIntensityd": {"nonzero": False, "channel_wise": False},
    "ScaleIntensityd": {"minv": 0.0, "maxv": 1.0},
    "CropForegroundd": {"source_key": None, "margin": 0, "allow_smaller": True, "k_divisible": 1},
}
_INFERER_ARGS = {
    "roi_size": None,
    "sw_batch_size": 1,
    "overlap": 0.25,
    "mode": "constant",
    "padding_mode": "constant",
}
_INFERER_IGNORED = {"_target_", "device", "sw_device", "progress", "cache_roi_weight_map", "cpu_thresh"}
_POST_IGNORED = {"SaveImaged"}


def _target(reader: MonaiConfigReader, path: str) -> str:
    """The class name of a ``_target_`` entry (``monai.transforms.Spacingd`` -> ``Spacingd``)."""
    target = reader.get(f"{path}#_target_")
    if not isinstance(target, str):
        raise MonaiConfigError(f"{reader.file}: {path}#_target_ must be a class name, got {target!r}")
    return target.rsplit(".", 1)[-1]


def _arguments(reader: MonaiConfigReader, path: str, name: str, allowed: Mapping[str, Any]) -> dict[str, Any]:
    """Resolve the arguments of the transform at ``path``; an argument we cannot honour raises naming it."""
    raw = reader.raw(path)
    unknown = sorted(set(raw) - _TRANSFORM_KEYS - set(allowed))
    if unknown:
        raise MonaiConfigError(
            f"{reader.file}: {path}: argument(s) {unknown} of {name} are not supported "
            f"(supported: {sorted(allowed)})"
        )
    return {key: reader.get(f"{path}#{key}") if key in raw else default for key, default in allowed.items()}


def read_network(reader: MonaiConfigReader) -> tuple[str, dict[str, Any]]:
    path = "network_def" if reader.has("network_def") else "network"
    if not isinstance(reader.raw(path), dict):
        raise MonaiConfigError(f"{reader.file}: {path}: expected a network definition with a _target_")
    name = _target(reader, path)
    if name not in MONAI_NETWORKS:
        raise MonaiConfigError(
            f"{reader.file}: {path}#_target_: network {name!r} is not supported "
            f"(supported: {list(MONAI_NETWORKS)})"
        )
    kwargs = {}
    for key in reader.raw(path):
        if key == "_target_":
            continue
        if key.startswith("_"):
            raise MonaiConfigError(f"{reader.file}: {path}#{key}: {key} is not supported")
        kwargs[key] = reader.get(f"{path}#{key}")
    if name == "SwinUNETR" and "img_size" in kwargs:
        logger.info(
            "%s: dropping SwinUNETR img_size=%s (removed in MONAI 1.5)", reader.file, kwargs.pop("img_size")
        )
    return name, kwargs


def read_preprocessing(reader: MonaiConfigReader) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    result: dict[str, Any] = {"crop_foreground": False}
    seen: set[str] = set()
    for i in range(len(reader.raw("preprocessing#transforms"))):
        path = f"preprocessing#transforms#{i}"
        name = _target(reader, path)
        if name in _SAME_AS_OURS:
            continue
        if name not in _TRANSFORM_ARGS:
            raise MonaiConfigError(
                f"{reader.file}: {path}: transform {name!r} is not supported (supported: "
                f"{sorted(_TRANSFORM_ARGS)}; ignored as ours: {sorted(_SAME_AS_OURS)})"
            )
        if result["crop_foreground"]:
            raise MonaiConfigError(f"{reader.file}: {path}: {name} after CropForegroundd is not supported")
        args = _arguments(reader, path, name, _TRANSFORM_ARGS[name])
        seen.add(name)
        if name == "Orientationd" and args["axcodes"] != "RAS":
            raise MonaiConfigError(
                f"{reader.file}: {path}#axcodes: only 'RAS' is supported, got {args['axcodes']!r}"
            )
        elif name == "Spacingd":
            if args["padding_mode"] != "border" or args["align_corners"] is not False:
                raise MonaiConfigError(
                    f"{reader.file}: {path}: Spacingd needs padding_mode 'border' and align_corners false"
                )
            pixdim = args["pixdim"]
            result["spacing"] = [float(p) for p in (pixdim if isinstance(pixdim, list) else [pixdim] * 3)]
            result["interpolation"] = args["mode"]
        elif name == "ScaleIntensityRanged":
            steps.append({"transform": "ScaleIntensityRange", **args})
        elif name == "NormalizeIntensityd":
            steps.append({"transform": "NormalizeIntensity", "nonzero": bool(args["nonzero"])})
        elif name == "ScaleIntensityd":
            steps.append({"transform": "ScaleIntensity", **args})
        elif name == "CropForegroundd":
            image_key = reader.get("image_key", "image")
            if args["source_key"] != image_key or args["margin"] != 0 or args["k_divisible"] != 1:
                raise MonaiConfigError(
                    f"{reader.file}: {path}: only CropForegroundd(source_key={image_key!r}) with margin 0 "
                    "and k_divisible 1 is supported"
                )
            result["crop_foreground"] = True
    for needed in ("Orientationd", "Spacingd"):
        if needed not in seen:
            raise MonaiConfigError(
                f"{reader.file}: preprocessing: no {needed}; our Segmenter always applies it"
            )
    result["intensity"] = steps
    return result


def read_inference(reader: MonaiConfigReader) -> dict[str, Any]:
    name = _target(reader, "inferer")
    if name != "SlidingWindowInferer":
        raise MonaiConfigError(
            f"{reader.file}: inferer: {name!r} is not supported (only SlidingWindowInferer)"
        )
    raw = reader.raw("inferer")
    unknown = sorted(set(raw) - _INFERER_IGNORED - set(_INFERER_ARGS))
    if unknown:
        raise MonaiConfigError(f"{reader.file}: inferer: argument(s) {unknown} are not supported")
    args = {k: reader.get(f"inferer#{k}") if k in raw else d for k, d in _INFERER_ARGS.items()}
    return {
        "roi_size": args["roi_size"],
        "sw_batch_size": int(args["sw_batch_size"]),
        "overlap": float(args["overlap"]),
        "blend_mode": args["mode"],
        "padding_mode": args["padding_mode"],
    }


def read_postprocessing(reader: MonaiConfigReader) -> tuple[str, str, float | None]:
    """(activation, invert, sigmoid threshold) from the post-processing transforms."""
    activation = None
    argmax_at = invert_at = None
    nearest = True
    threshold = None
    for i in range(len(reader.raw("postprocessing#transforms"))):
        path = f"postprocessing#transforms#{i}"
        name = _target(reader, path)
        raw = reader.raw(path)
        if name in _POST_IGNORED:
            continue
        if name == "Activationsd":
            args = _arguments(reader, path, name, {"softmax": False, "sigmoid": False})
            if args["softmax"] == args["sigmoid"]:
                raise MonaiConfigError(
                    f"{reader.file}: {path}: exactly one of softmax / sigmoid must be true"
                )
            activation = "softmax" if args["softmax"] else "sigmoid"
        elif name == "AsDiscreted":
            args = _arguments(reader, path, name, {"argmax": False, "threshold": None})
            if args["argmax"]:
                argmax_at = i
            threshold = args["threshold"]
        elif name == "Invertd":
            allowed = {
                "transform": None,
                "orig_keys": None,
                "nearest_interp": True,
                "to_tensor": True,
                "device": None,
            }
            unknown = sorted(set(raw) - _TRANSFORM_KEYS - set(allowed))
            if unknown:
                raise MonaiConfigError(
                    f"{reader.file}: {path}: argument(s) {unknown} of Invertd are not supported"
                )
            nearest = bool(reader.get(f"{path}#nearest_interp")) if "nearest_interp" in raw else True
            invert_at = i
        else:
            raise MonaiConfigError(
                f"{reader.file}: {path}: post-processing transform {name!r} is not supported"
            )
    if activation is None:
        raise MonaiConfigError(f"{reader.file}: postprocessing: no Activationsd (softmax or sigmoid)")
    if activation == "softmax" and argmax_at is None:
        raise MonaiConfigError(
            f"{reader.file}: postprocessing: a softmax model needs AsDiscreted(argmax=true)"
        )
    if invert_at is None:
        logger.info("%s: no Invertd; labels are returned on the input grid all the same", reader.file)
    labels_first = invert_at is None or (argmax_at is not None and argmax_at < invert_at)
    if labels_first and invert_at is not None and not nearest:
        raise MonaiConfigError(
            f"{reader.file}: postprocessing: Invertd of a label map needs nearest_interp true"
        )
    invert = "labels" if labels_first or nearest else "probabilities"
    return activation, invert, None if threshold is None else float(threshold)


def read_licence(folder: Path) -> str:
    path = folder / "LICENSE"
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace").strip()
    if text.startswith("Apache License") and "Version 2.0" in text[:200]:
        return "Apache-2.0"
    first = text.splitlines()[0].strip() if text else ""
    return f"{first} (see the MONAI bundle's LICENSE)" if first else ""


def channel_names(metadata: Mapping[str, Any], channels: int, background: bool) -> list[str]:
    """The structure names of the output channels (softmax: background removed), checked vs ``channels``."""
    try:
        outputs = metadata["network_data_format"]["outputs"]
        channel_def = next(iter(outputs.values()))["channel_def"]
    except (KeyError, TypeError, StopIteration) as err:
        raise MonaiConfigError("metadata.json: no network_data_format.outputs.<pred>.channel_def") from err
    try:
        names = [str(channel_def[str(c)]) for c in range(len(channel_def))]
    except KeyError as err:
        raise MonaiConfigError(
            f"metadata.json: channel_def is not numbered 0..{len(channel_def) - 1}"
        ) from err
    if len(names) != channels:
        raise MonaiConfigError(
            f"metadata.json: channel_def names {len(names)} channels but the network has "
            f"out_channels {channels}"
        )
    if background:
        if names[0].strip().lower() != "background":
            raise MonaiConfigError(
                f"metadata.json: channel 0 of a softmax model must be 'background', got {names[0]!r}"
            )
        names = names[1:]
    return names


def channel_taxonomy(metadata: Mapping[str, Any], channels: int, background: bool, name: str) -> Taxonomy:
    """Our taxonomy of a MONAI bundle's output channels (label id = softmax channel).

    Raises:
        MonaiConfigError: the channel_def is malformed, or a name is not in the anatomy vocabulary (named).
    """
    names = channel_names(metadata, channels, background)
    description = f"output channels of {metadata.get('name', name)}"
    class_names = []
    for channel, label in enumerate(names, start=1 if background else 0):
        try:
            class_names.append(resolve_structure_name(label))
        except KeyError as err:
            raise MonaiConfigError(
                f"metadata.json: channel {channel} {label!r} is not in the anatomy vocabulary ({err})"
            ) from err
    repeated = sorted({c for c in class_names if class_names.count(c) > 1})
    if repeated:
        raise MonaiConfigError(f"metadata.json: several channels name the same structure: {repeated}")
    return vocabulary_taxonomy(name, class_names, description=description)
