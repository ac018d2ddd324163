"""``ModelConfig``: the hyper-parameters of a segmentation model, and nothing else (no weights, no paths).

A config round-trips through JSON (``to_dict`` / ``from_dict``) and is all ``build_model`` needs. What each
architecture accepts is declared by its class (``models.factory.MODEL_CLASSES``): the model classes are built
from a ``ModelConfig``, so this module looks them up when a config is checked, not when it is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from monai.utils import look_up_option

from TextGuidedSegLib.configs import dataclass_from_dict, field_names, to_jsonable

if TYPE_CHECKING:
    from .base import TextSegModel

__all__ = ["MODES", "ModelConfig"]

#: ``"query"``: one mask per text embedding; ``"global"``: one embedding per sample, ``num_classes`` channels.
MODES: tuple[str, ...] = ("query", "global")
#: UNETR's ViT patch size in MONAI (fixed there): ``img_size`` must be a multiple of it.
UNETR_PATCH_SIZE = 16


def _registry() -> Any:
    """``models.factory`` (the registry), imported when first needed: it imports the classes, which import
    this module."""
    from . import factory

    return factory


def _option(value: Any, options: tuple[str, ...], name: str) -> str:
    """Return ``value`` if it is in ``options``, else raise a ValueError naming the field and the options."""
    try:
        return str(look_up_option(value, options))
    except ValueError as err:
        raise ValueError(
            f"ModelConfig.{name}={value!r} is not valid; use one of {list(options)}. ({str(err).strip()})"
        ) from None


def _int_tuple(value: Any, name: str, length: int) -> tuple[int, ...]:
    """Return ``length`` positive ints as a tuple, or raise a ValueError saying what is expected."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != length:
        raise ValueError(f"ModelConfig.{name} must be a sequence of {length} positive ints, got {value!r}.")
    items = tuple(value)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items):
        raise ValueError(f"ModelConfig.{name} must be a sequence of {length} positive ints, got {value!r}.")
    return items


def _positive_int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}.")
    return value


@dataclass
class ModelConfig:
    """Hyper-parameters of one segmentation model; ``build_model(config)`` builds it.

    Args:
        architecture: one of ``"film_v1"`` (FiLM in the SwinUNETR decoder), ``"film_v2"`` (residual
            LayerNorm-FiLM on the encoder features), ``"universal"`` (CLIP-Driven Universal Model head),
            ``"swinunetr"`` and ``"unetr"`` (MONAI's text-free networks, ``num_classes`` channels).
        mode: ``"query"`` (one mask per text embedding) or ``"global"`` (one embedding per sample conditions
            a ``num_classes``-channel network; film_v1 / film_v2 only). Ignored by the text-free baselines,
            which output ``num_classes`` channels by nature.
        feature_size: network feature size (channels of the first stage); divisible by 12 for the
            SwinUNETR-based architectures. MONAI's UNETR takes it as its own ``feature_size``.
        in_channels: image channels (1 for CT).
        num_classes: output channels in global mode and of the text-free baselines, in taxonomy order.
        text_dim: size ``E`` of a text embedding (512 for CLIP ViT-B/32).
        img_size: the fixed input size ``(D, H, W)`` of UNETR (its position embeddings are sized to it);
            multiples of 16. Unused by the other architectures.
        depths: number of Swin transformer blocks in each of the 4 stages.
        num_heads: attention heads in each of the 4 stages; ``feature_size * 2**i`` must be divisible by
            ``num_heads[i]``.
        drop_rate: dropout rate in [0, 1].
        attn_drop_rate: attention dropout rate in [0, 1] (Swin models).
        dropout_path_rate: stochastic depth rate in [0, 1] (Swin models).
        use_checkpoint: gradient checkpointing in the Swin transformer (less memory, slower backward).
        use_v2: MONAI's SwinUNETR-v2 (a residual conv block at the start of each Swin stage).

    Examples::

        >>> cfg = ModelConfig(architecture="film_v2", feature_size=48)
        >>> ModelConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    architecture: str = "film_v1"
    mode: str = "query"
    feature_size: int = 48
    in_channels: int = 1
    num_classes: int = 32
    text_dim: int = 512
    img_size: tuple[int, int, int] = (96, 96, 96)
    depths: tuple[int, int, int, int] = (2, 2, 2, 2)
    num_heads: tuple[int, int, int, int] = (3, 6, 12, 24)
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    dropout_path_rate: float = 0.0
    use_checkpoint: bool = False
    use_v2: bool = False

    def __post_init__(self) -> None:
        registry = _registry()
        self.architecture = _option(self.architecture, registry.ARCHITECTURES, "architecture")
        self.mode = _option(self.mode, MODES, "mode")
        if self.mode not in self.model_class.modes:
            valid = list(registry.GLOBAL_MODE_ARCHITECTURES)
            raise ValueError(
                f"ModelConfig.mode={self.mode!r} is only valid for {valid}, not architecture="
                f"{self.architecture!r}; use mode='query'."
            )
        for name in ("feature_size", "in_channels", "num_classes", "text_dim"):
            _positive_int(getattr(self, name), name)
        self.img_size = _int_tuple(self.img_size, "img_size", 3)  # type: ignore[assignment]
        self.depths = _int_tuple(self.depths, "depths", 4)  # type: ignore[assignment]
        self.num_heads = _int_tuple(self.num_heads, "num_heads", 4)  # type: ignore[assignment]
        for name in ("drop_rate", "attn_drop_rate", "dropout_path_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"ModelConfig.{name} must be a float in [0, 1], got {value!r}.")
            setattr(self, name, float(value))
        for name in ("use_checkpoint", "use_v2"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ModelConfig.{name} must be true or false, got {getattr(self, name)!r}.")
        self.model_class.check_config(self)

    @property
    def model_class(self) -> type[TextSegModel]:
        """The class ``build_model`` builds for ``architecture``."""
        return _registry().MODEL_CLASSES[self.architecture]

    @property
    def uses_text(self) -> bool:
        """True for the text-conditioned architectures (film_v1, film_v2, universal)."""
        return self.model_class.uses_text

    @property
    def output(self) -> str:
        """``"query"`` (one mask per text embedding) or ``"channels"`` (``num_classes`` masks)."""
        return "query" if self.uses_text and self.mode == "query" else "channels"

    @classmethod
    def field_names(cls) -> list[str]:
        """The keys ``from_dict`` accepts, in declaration order."""
        return field_names(cls)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict (tuples become lists) that ``from_dict`` turns back into this config."""
        return to_jsonable(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build a config from a dict such as ``to_dict`` writes; missing keys take their defaults.

        Args:
            data: mapping of field name to value (lists are accepted for the tuple fields).

        Raises:
            TypeError: ``data`` is not a mapping.
            ValueError: a key is unknown (the message lists the valid keys) or a value is out of range.
        """
        if not isinstance(data, dict):
            raise TypeError(f"ModelConfig.from_dict expects a dict, got {type(data).__name__}.")
        return dataclass_from_dict(cls, data)
