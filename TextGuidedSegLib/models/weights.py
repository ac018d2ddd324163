"""A bundle model's weights as safetensors: which keys are stored, how a state dict is written and checked.

Buffers a model computes from its config when it is built (the Swin blocks' relative-position index tables)
are not written (they were 7.5 of the demo bundle's 25 MB); on load the freshly built model has them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

__all__ = ["DERIVED_BUFFERS", "WEIGHTS_FILE", "is_derived_buffer", "save_state_dict", "state_dict_mismatch"]

#: The weights file of a bundle (the library's models and MONAI networks).
WEIGHTS_FILE = "model.safetensors"
#: Buffer names a model rebuilds from its config; left out of bundles.
DERIVED_BUFFERS = ("relative_position_index",)


def is_derived_buffer(key: str) -> bool:
    """True for a state-dict key naming a buffer the model rebuilds itself (``DERIVED_BUFFERS``)."""
    return key.rsplit(".", 1)[-1] in DERIVED_BUFFERS


def save_state_dict(module: nn.Module, path: Path, metadata: Mapping[str, str]) -> None:
    """Write ``module``'s state dict (CPU, contiguous, without derived buffers) as safetensors at ``path``."""
    state = {
        k: v.detach().cpu().contiguous() for k, v in module.state_dict().items() if not is_derived_buffer(k)
    }
    save_file(state, str(path), metadata={"format": "pt", **metadata})


def state_dict_mismatch(expected: Mapping[str, Any], state: Mapping[str, Any]) -> str | None:
    """Why ``state`` does not load into a model whose state dict is ``expected``, or None when it does.

    Names the first missing, unexpected or mis-shaped key; derived buffers (:data:`DERIVED_BUFFERS`) may be
    absent from ``state`` or present (format-1 bundles written before they were left out hold them).
    """
    expected = {k: v for k, v in expected.items() if not is_derived_buffer(k)}
    state = {k: v for k, v in state.items() if not is_derived_buffer(k)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    detail = []
    if missing:
        detail.append(f"missing {len(missing)} key(s), first {missing[0]!r}")
    if unexpected:
        detail.append(f"unexpected {len(unexpected)} key(s), first {unexpected[0]!r}")
    if detail:
        return "; ".join(detail)
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            wanted = tuple(expected[key].shape)
            return f"weight {key!r} has shape {tuple(tensor.shape)} but the model expects {wanted}"
    return None
