"""Feature-wise linear modulation (FiLM) of feature maps by a text embedding.

``FiLM`` is the plain ``gamma * F + beta`` of Perez et al. 2018 (film_v1, decoder FiLM);
``ResidualNormFiLM`` normalises the modulated map over channels and adds the input back (film_v2, encoder
FiLM).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FiLM", "ResidualNormFiLM"]


class FiLM(nn.Module):
    """``gamma(text) * features + beta(text)``, with ``gamma``/``beta`` broadcast over the spatial axes.

    ``gamma`` and ``beta`` are ``Linear(text_dim -> channels)`` layers, Xavier-uniform weights, zero biases.

    Args:
        text_dim: size ``E`` of a text embedding.
        channels: number of channels ``C`` of the modulated feature map.

    Examples::

        >>> film = FiLM(text_dim=512, channels=96)
        >>> film(torch.rand(2, 96, 8, 8, 8), torch.rand(2, 512)).shape
        torch.Size([2, 96, 8, 8, 8])
    """

    def __init__(self, text_dim: int, channels: int) -> None:
        super().__init__()
        if text_dim < 1 or channels < 1:
            raise ValueError(
                f"FiLM needs text_dim >= 1 and channels >= 1, got text_dim={text_dim}, channels={channels}."
            )
        self.text_dim = text_dim
        self.channels = channels
        self.gamma = nn.Linear(text_dim, channels)
        self.beta = nn.Linear(text_dim, channels)
        for linear in (self.gamma, self.beta):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def _check(self, features: torch.Tensor, text: torch.Tensor) -> None:
        if features.ndim < 2 or features.shape[1] != self.channels:
            raise ValueError(
                f"{type(self).__name__} expects features (N, {self.channels}, *spatial), "
                f"got {tuple(features.shape)}."
            )
        if text.ndim != 2 or text.shape[1] != self.text_dim or text.shape[0] != features.shape[0]:
            raise ValueError(
                f"{type(self).__name__} expects text (N, {self.text_dim}) with N = features batch "
                f"{features.shape[0]}, got {tuple(text.shape)}."
            )

    def modulate(self, features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Return ``gamma * features + beta``, same shape as ``features``."""
        self._check(features, text)
        view = (features.shape[0], self.channels) + (1,) * (features.ndim - 2)
        return self.gamma(text).view(view) * features + self.beta(text).view(view)

    def forward(self, features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Modulate ``features`` by ``text``.

        Args:
            features: feature map ``(N, C, *spatial)``.
            text: text embeddings ``(N, E)``, one per feature map.

        Returns:
            ``(N, C, *spatial)``: ``gamma(text) * features + beta(text)``.
        """
        return self.modulate(features, text)


class ResidualNormFiLM(FiLM):
    """``LayerNorm_C(gamma(text) * F + beta(text)) + F``: FiLM, LayerNorm over channels per voxel, residual.

    Parameters: those of ``FiLM`` plus the LayerNorm's ``2 * channels`` affine weights.

    Args:
        text_dim: size ``E`` of a text embedding.
        channels: number of channels ``C`` of the modulated feature map.
        eps: LayerNorm epsilon.

    Examples::

        >>> block = ResidualNormFiLM(text_dim=512, channels=48)
        >>> block(torch.rand(2, 48, 16, 16, 16), torch.rand(2, 512)).shape
        torch.Size([2, 48, 16, 16, 16])
    """

    def __init__(self, text_dim: int, channels: int, eps: float = 1e-5) -> None:
        super().__init__(text_dim=text_dim, channels=channels)
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Modulate ``features`` by ``text``, normalise over channels and add ``features`` back.

        Args:
            features: feature map ``(N, C, *spatial)``.
            text: text embeddings ``(N, E)``, one per feature map.

        Returns:
            ``(N, C, *spatial)``.
        """
        modulated = self.modulate(features, text)
        normed = self.norm(torch.movedim(modulated, 1, -1))
        return torch.movedim(normed, -1, 1) + features
