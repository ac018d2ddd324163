"""The frozen CLIP text encoder and the prompt -> embedding cache.

- :class:`TextEncoderSpec`: which encoder (hub id or local folder, ``pooler``/``projected`` output, revision).
- :class:`CLIPTextEncoder`: loads it frozen in ``eval()``; ``encode(prompts) -> (N, E)``; ``identity``.
- :class:`EmbeddingCache`: prompt -> ``(E,)`` embedding, keyed by the encoder identity; safetensors + JSON.
- :func:`build_clip_tokenizer`: OpenAI's 49,408-token CLIP tokenizer built offline from open_clip's BPE file.

Tests build tiny random-init text towers with :func:`TextGuidedSegLib.text.testing.make_tiny_clip_text_model`.
"""

from .cache import EmbeddingCache, EmbeddingCacheError, PromptNotCachedError
from .encoder import CLIPTextEncoder, PromptEncoder, TextEncoderSpec, TextEncoderUnavailableError
from .tokenizer import build_clip_tokenizer

__all__ = [
    "CLIPTextEncoder",
    "EmbeddingCache",
    "EmbeddingCacheError",
    "PromptEncoder",
    "PromptNotCachedError",
    "TextEncoderSpec",
    "TextEncoderUnavailableError",
    "build_clip_tokenizer",
]
