"""FiLM-conditioned SwinUNETR: film_v1 (FiLM in the decoder), film_v2 (residual LayerNorm-FiLM, encoder).

Both share MONAI's ``SwinUNETR`` (``backbone``) and differ only in where the text embedding modulates
features.

Query mode (``config.mode == "query"``): the output head has 1 channel and there is one output mask per query.
The Swin transformer and the encoder blocks run once per image; their features are repeated per query and the
conditioned part runs for all ``B * Q`` (image, query) pairs as one batch; logits are reshaped to
``(B, Q, D, H, W)``. Global mode: the head has ``num_classes`` channels and ``text[:, 0]`` (one embedding per
image) conditions the network.
"""

from __future__ import annotations

import torch
from torch import nn

from .backbone import SwinFeatures, SwinUNETRModel
from .config import ModelConfig
from .film import FiLM, ResidualNormFiLM

__all__ = ["DecoderFiLMSwinUNETR", "EncoderFiLMSwinUNETR"]


def _head_channels(config: ModelConfig) -> int:
    return 1 if config.mode == "query" else config.num_classes


class _FiLMSwinUNETR(SwinUNETRModel):
    """Shared query/global plumbing of the FiLM models."""

    uses_text = True
    modes = ("query", "global")

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, out_channels=_head_channels(config))

    def conditioned_logits(self, features: SwinFeatures, text: torch.Tensor) -> torch.Tensor:
        """Run the text-conditioned part on ``N`` (features, embedding) pairs.

        Args:
            features: encoder features, batch ``N``.
            text: ``(N, E)`` embeddings.

        Returns:
            ``(N, head_channels, D, H, W)`` logits.
        """
        raise NotImplementedError

    def compute_logits(self, image: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        """Encode once per image, then condition and decode for every (image, query) pair in one batch.

        Args:
            image: ``(B, in_channels, D, H, W)``.
            text: ``(B, Q, E)`` (``Q = 1`` in global mode).

        Returns:
            ``(B, Q, D, H, W)`` in query mode, ``(B, num_classes, D, H, W)`` in global mode.
        """
        assert text is not None  # checked by TextSegModel.check_inputs
        return self.logits_from_features(self.encode(image), text)

    def logits_from_features(self, features: SwinFeatures, text: torch.Tensor) -> torch.Tensor:
        """The text-dependent half of ``compute_logits``: condition and decode already encoded images.

        With ``encode`` / ``encode_full_resolution`` this is the protocol of
        ``inference.feature_cache`` (a new prompt re-uses the encoder features of every window).

        Args:
            features: ``self.encode(image)`` (or the same maps from a cache), batch ``B``.
            text: ``(B, Q, E)`` embeddings (``Q = 1`` in global mode), in the features' dtype.

        Returns:
            ``(B, Q, D, H, W)`` in query mode, ``(B, num_classes, D, H, W)`` in global mode.

        Without gradients (inference) the queries are decoded one at a time: the full-resolution decoder
        maps of every query at once cost ~1 GiB per extra prompt at fs 48 and a 96^3 window, for no speed.
        """
        batch, num_queries, _ = text.shape
        if not torch.is_grad_enabled() and num_queries > 1:
            return torch.cat(
                [self.logits_from_features(features, text[:, q : q + 1]) for q in range(num_queries)], 1
            )
        features = features.repeat_per_query(num_queries)
        logits = self.conditioned_logits(features, text.reshape(batch * num_queries, -1))
        return logits.reshape(batch, -1, *logits.shape[2:])


class DecoderFiLMSwinUNETR(_FiLMSwinUNETR):
    """film_v1: SwinUNETR with ``FiLM`` on the four deepest decoder inputs.

    ``film.dec4`` (16·fs channels) before decoder5, ``film.dec3`` (8·fs) before decoder4, ``film.dec2`` (4·fs)
    before decoder3, ``film.dec1`` (2·fs) before decoder2. Skips, dec0 and decoder1 are not modulated.
    FiLM adds ``2 * (E * C + C)`` parameters per level: 1,477,440 at fs=48, E=512.

    Args:
        config: ``architecture="film_v1"``, mode ``"query"`` or ``"global"``.

    Examples::

        >>> model = DecoderFiLMSwinUNETR(ModelConfig(architecture="film_v1", feature_size=12))
        >>> model(torch.rand(1, 1, 64, 64, 64), torch.rand(1, 3, 512)).shape
        torch.Size([1, 3, 64, 64, 64])
    """

    architecture = "film_v1"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        fs, e = config.feature_size, config.text_dim
        self.film = nn.ModuleDict(
            {
                "dec4": FiLM(e, 16 * fs),
                "dec3": FiLM(e, 8 * fs),
                "dec2": FiLM(e, 4 * fs),
                "dec1": FiLM(e, 2 * fs),
            }
        )

    def conditioned_logits(self, features: SwinFeatures, text: torch.Tensor) -> torch.Tensor:
        """The SwinUNETR decoder with FiLM before decoder5, decoder4, decoder3 and decoder2, then ``out``."""
        net, film = self.backbone, self.film
        dec3 = net.decoder5(film["dec4"](features.dec4, text), features.hs3)
        dec2 = net.decoder4(film["dec3"](dec3, text), features.enc3)
        dec1 = net.decoder3(film["dec2"](dec2, text), features.enc2)
        dec0 = net.decoder2(film["dec1"](dec1, text), features.enc1)
        out = net.decoder1(dec0, features.enc0)
        return net.out(out)


class EncoderFiLMSwinUNETR(_FiLMSwinUNETR):
    """film_v2: SwinUNETR whose encoder features are modulated by ``ResidualNormFiLM`` before the decoder.

    Modulated: enc1 (fs channels), enc2 (2·fs), enc3 (4·fs), hs3 = hidden_states_out[3] (8·fs) and dec4
    (16·fs); enc0 is not. The decoder then runs unchanged on the modulated maps. Parameters added per level:
    ``2 * (E * C + C)`` (FiLM) ``+ 2 * C`` (LayerNorm): 1,529,664 at fs=48, E=512.

    Args:
        config: ``architecture="film_v2"``, mode ``"query"`` or ``"global"``.

    Examples::

        >>> model = EncoderFiLMSwinUNETR(ModelConfig(architecture="film_v2", feature_size=12))
        >>> model(torch.rand(1, 1, 64, 64, 64), torch.rand(1, 2, 512)).shape
        torch.Size([1, 2, 64, 64, 64])
    """

    architecture = "film_v2"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        fs, e = config.feature_size, config.text_dim
        self.film = nn.ModuleDict(
            {
                "enc1": ResidualNormFiLM(e, fs),
                "enc2": ResidualNormFiLM(e, 2 * fs),
                "enc3": ResidualNormFiLM(e, 4 * fs),
                "hs3": ResidualNormFiLM(e, 8 * fs),
                "dec4": ResidualNormFiLM(e, 16 * fs),
            }
        )

    def conditioned_logits(self, features: SwinFeatures, text: torch.Tensor) -> torch.Tensor:
        """Modulate enc1, enc2, enc3, hs3 and dec4, then run the plain decoder and the output head."""
        film = self.film
        modulated = SwinFeatures(
            enc0=features.enc0,
            enc1=film["enc1"](features.enc1, text),
            enc2=film["enc2"](features.enc2, text),
            enc3=film["enc3"](features.enc3, text),
            hs3=film["hs3"](features.hs3, text),
            dec4=film["dec4"](features.dec4, text),
        )
        return self.backbone.out(self.decode(modulated))
