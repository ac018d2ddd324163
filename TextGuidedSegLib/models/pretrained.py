"""Load MONAI SwinUNETR checkpoints into a model's ``backbone``, with a report of what went where.

Checkpoint formats recognised (after an optional ``module.`` prefix, left by ``DataParallel``):

- ``"full"``: a whole-network SwinUNETR state dict, keys ``swinViT.*``, ``encoder1.*`` ... ``decoder1.*``,
  ``out.*`` (e.g. ``swin_unetr.base_5000ep_f48_lr2e-4_pretrained.pt``, the BTCV fine-tuned model).
- ``"swinvit"``: the self-supervised Swin encoder of Tang et al. 2022 (``model_swinvit.pt``), keys
  ``module.patch_embed.*``, ``module.layers1.0.*`` ...: mapped to ``swinViT.*``.
- ``"dae"``: the Disruptive Autoencoders encoder (Valanarasu et al. 2023, ``ssl_pretrained_weights.pth``),
  keys ``encoder.*``: mapped by MONAI's ``filter_swinunetr``.

Values are copied with MONAI's ``copy_model_state``; only keys present in the backbone with the same shape are
copied. The output head ``out.*`` is skipped (and listed in ``skipped_head``) when its shape differs, e.g. a
14-class BTCV head into a 1-channel query-mode model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import SwinUNETR
from monai.networks.nets.swin_unetr import filter_swinunetr
from monai.networks.utils import copy_model_state
from torch import nn

__all__ = ["PretrainedLoadReport", "load_pretrained_swinunetr"]

logger = logging.getLogger(__name__)

#: Keys of a checkpoint dict that may hold the state dict, tried in this order.
_STATE_DICT_KEYS = ("state_dict", "model", "net")
_HEAD_PREFIX = "out."


@dataclass
class PretrainedLoadReport:
    """What ``load_pretrained_swinunetr`` did.

    Attributes:
        source: the file path, or ``"<dict>"``.
        format: ``"full"``, ``"swinvit"`` or ``"dae"`` (see the module docstring).
        loaded: backbone keys filled from the checkpoint.
        missing: backbone keys the format should provide but the checkpoint did not fill (for the
            encoder-only formats ``"swinvit"``/``"dae"`` only ``swinViT.*`` keys are expected).
        unexpected: checkpoint keys (as written in the checkpoint) with no target in the backbone.
        shape_mismatch: backbone keys the checkpoint holds with another shape (not loaded); head excluded.
        skipped_head: output-head keys (``out.*``) not loaded: the shapes differ or the model has no head.
    """

    source: str
    format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    skipped_head: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when nothing is missing, unexpected or mismatched (a skipped head does not count)."""
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def summary(self) -> str:
        """One line: counts per list."""
        return (
            f"pretrained SwinUNETR ({self.format}) from {self.source}: loaded {len(self.loaded)}, "
            f"missing {len(self.missing)}, unexpected {len(self.unexpected)}, "
            f"shape mismatch {len(self.shape_mismatch)}, skipped head {len(self.skipped_head)}"
        )


def _find_backbone(model: nn.Module) -> SwinUNETR:
    if isinstance(model, SwinUNETR):
        return model
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, SwinUNETR):
        return backbone
    raise TypeError(
        f"load_pretrained_swinunetr needs a MONAI SwinUNETR or a model with a SwinUNETR `backbone` "
        f"(film_v1, film_v2, universal, swinunetr); got {type(model).__name__}."
    )


def _read_state_dict(source: str | Path | Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """Return the flat ``{key: tensor}`` state dict of ``source`` and a printable name for it."""
    if isinstance(source, Mapping):
        name, data = "<dict>", source
    else:
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained checkpoint {path} does not exist.")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(path), device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, Mapping):
        raise ValueError(f"checkpoint {name} holds a {type(data).__name__}, expected a dict of tensors.")
    for key in _STATE_DICT_KEYS:
        if key in data and isinstance(data[key], Mapping):
            data = data[key]
            break
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(
            f"checkpoint {name} has no tensors (top-level keys {list(data)[:10]}); expected a state dict "
            f"or a dict with one of {list(_STATE_DICT_KEYS)}."
        )
    dropped = [k for k in data if k not in tensors]
    if dropped:
        logger.warning("checkpoint %s: ignoring %d non-tensor entries %s", name, len(dropped), dropped[:5])
    return tensors, name


def _strip_module(key: str) -> str:
    return key[len("module.") :] if key.startswith("module.") else key


def _map_keys(state: dict[str, torch.Tensor], backbone: SwinUNETR) -> tuple[str, dict[str, str], list[str]]:
    """Detect the format and map checkpoint keys to backbone keys.

    Returns:
        format name, ``{target_key: checkpoint_key}`` and the checkpoint keys the format maps to nothing.
    """
    swin_children = {name for name, _ in backbone.swinViT.named_children()}
    if any(_strip_module(k).startswith("encoder.") for k in state):
        fmt = "dae"
        mapping, dropped = {}, []
        for key, value in state.items():
            pair = filter_swinunetr(_strip_module(key), value)
            if pair is None:
                dropped.append(key)
            else:
                mapping[pair[0]] = key
        return fmt, mapping, dropped
    stripped = {_strip_module(k): k for k in state}
    n_swin = sum(k.split(".", 1)[0] in swin_children for k in stripped)
    if n_swin > len(stripped) // 2:
        return "swinvit", {f"swinViT.{k}": orig for k, orig in stripped.items()}, []
    return "full", dict(stripped), []


def load_pretrained_swinunetr(
    model: nn.Module,
    source: str | Path | Mapping[str, Any],
    strict: bool = False,
) -> PretrainedLoadReport:
    """Load a MONAI SwinUNETR checkpoint into ``model``'s SwinUNETR backbone (in place).

    Args:
        model: a ``TextSegModel`` with a SwinUNETR ``backbone`` (film_v1, film_v2, universal, swinunetr) or a
            MONAI ``SwinUNETR``.
        source: a ``.pt``/``.pth`` file (read with ``torch.load(weights_only=True)``), a ``.safetensors``
            file, or an in-memory dict; either a state dict or a dict holding one under ``"state_dict"``
            (``"model"``/``"net"`` also accepted).
        strict: raise a ValueError (before copying anything) when any key is missing, unexpected or
            mismatched in shape; a skipped output head is allowed.

    Returns:
        the report; its summary is logged (INFO), and each non-empty problem list as a WARNING.

    Raises:
        TypeError: ``model`` has no SwinUNETR backbone (e.g. UNETR).
        FileNotFoundError: ``source`` is a path that does not exist.
        ValueError: unreadable checkpoint, or ``strict=True`` and the report is not complete.
    """
    backbone = _find_backbone(model)
    state, name = _read_state_dict(source)
    fmt, mapping, dropped = _map_keys(state, backbone)
    target = backbone.state_dict()
    report = PretrainedLoadReport(source=name, format=fmt, unexpected=list(dropped))

    loadable: dict[str, torch.Tensor] = {}
    for dst_key, src_key in mapping.items():
        value = state[src_key]
        is_head = dst_key.startswith(_HEAD_PREFIX)
        if dst_key not in target:
            if is_head and not _has_head(
                target
            ):  # e.g. the Universal Model, whose dynamic head replaces `out`
                report.skipped_head.append(dst_key)
            else:
                report.unexpected.append(src_key)
        elif target[dst_key].shape != value.shape:
            (report.skipped_head if is_head else report.shape_mismatch).append(dst_key)
            logger.log(
                logging.INFO if is_head else logging.WARNING,
                "checkpoint %s: %s has shape %s, model expects %s: not loaded",
                name,
                src_key,
                tuple(value.shape),
                tuple(target[dst_key].shape),
            )
        else:
            loadable[dst_key] = value

    skipped = set(report.skipped_head)
    expected = [k for k in target if fmt == "full" or k.startswith("swinViT.")]
    not_filled = skipped | set(report.shape_mismatch) | set(loadable)
    report.missing = [k for k in expected if k not in not_filled]
    report.loaded = sorted(loadable)

    if strict and not report.complete:
        parts = [
            f"{len(items)} {label} (first: {items[:3]})"
            for label, items in (
                ("missing backbone keys", report.missing),
                ("unexpected checkpoint keys", report.unexpected),
                ("shape mismatches", report.shape_mismatch),
            )
            if items
        ]
        raise ValueError(
            f"strict load of {name} ({fmt} format) failed: {'; '.join(parts)}. Check that the checkpoint "
            "matches the model's feature_size/depths/use_v2, or pass strict=False and inspect the report."
        )

    if loadable:
        copy_model_state(backbone, loadable, inplace=True)
    logger.info(report.summary())
    for label, items in (
        ("missing", report.missing),
        ("unexpected", report.unexpected),
        ("shape mismatch", report.shape_mismatch),
    ):
        if items:
            logger.warning("pretrained SwinUNETR %s keys (%d): %s", label, len(items), items[:10])
    if not loadable:
        logger.warning("checkpoint %s: no key matched the backbone; nothing was loaded", name)
    return report


def _has_head(target: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(_HEAD_PREFIX) for k in target)
