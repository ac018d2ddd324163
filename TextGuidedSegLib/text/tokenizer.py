"""OpenAI's CLIP tokenizer, built offline from open_clip's byte-pair-encoding merges file.

OpenAI never published a ``vocab.json``: its tokenizer derives the vocabulary from the merges file
``bpe_simple_vocab_16e6.txt.gz`` (shipped with the ``clip`` and ``open_clip`` packages). This module rebuilds
that vocabulary exactly as ``open_clip.tokenizer.SimpleTokenizer`` does, writes the Hugging Face files
(``vocab.json``, ``merges.txt``) and loads a :class:`transformers.CLIPTokenizer` from them, so token ids match
the published CLIP checkpoints without any download.
"""

from __future__ import annotations

import gzip
import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # transformers is imported on use: it adds ~1 s to start-up
    from transformers import CLIPTokenizer

logger = logging.getLogger(__name__)

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
# OpenAI CLIP: 49152 BPE entries minus the 256 byte symbols minus the 2 special tokens.
CLIP_NUM_MERGES = 49152 - 256 - 2
CLIP_VOCAB_SIZE = 49408
MERGES_HEADER = "#version: 0.2"


def bytes_to_unicode() -> dict[int, str]:
    """Map every byte (0..255) to a printable unicode character, as GPT-2 / CLIP byte-level BPE does.

    Printable latin-1 bytes map to themselves; the others map to code points from 256 upwards. The dict's
    insertion order (printable bytes first) is the order of the first 256 CLIP token ids.

    Returns:
        ``{byte: character}``, 256 entries.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(code) for byte, code in zip(printable, chars, strict=True)}


def read_bpe_merges(bpe_path: str | Path, num_merges: int = CLIP_NUM_MERGES) -> list[tuple[str, str]]:
    """Read the first ``num_merges`` merges of an open_clip BPE file (``.txt.gz`` or plain ``.txt``).

    The first line of the file is a header and is skipped, as open_clip does.

    Args:
        bpe_path: path to ``bpe_simple_vocab_16e6.txt.gz``.
        num_merges: how many merges to keep (48,894 for OpenAI CLIP).

    Returns:
        ``[(left, right), ...]`` in priority order.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file holds fewer merges than asked for, or a malformed line.
    """
    path = Path(bpe_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"CLIP BPE merges file {path} not found: it ships with open_clip "
            "(open_clip/bpe_simple_vocab_16e6.txt.gz) and OpenAI's clip package"
        )
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    body = lines[1 : num_merges + 1]
    if len(body) < num_merges:
        raise ValueError(f"{path} holds {len(body)} merges, fewer than the {num_merges} CLIP needs")
    merges: list[tuple[str, str]] = []
    for number, line in enumerate(body, start=2):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}, line {number}: expected two space-separated symbols, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def clip_vocab(merges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """Build the CLIP vocabulary from BPE merges, in OpenAI's id order.

    Ids: the 256 byte symbols, the same 256 with ``</w>``, one token per merge (the pair joined), then
    ``<|startoftext|>`` and ``<|endoftext|>``. With CLIP's 48,894 merges this gives 49,408 tokens.

    Args:
        merges: ``[(left, right), ...]`` in priority order.

    Returns:
        ``{token: id}``.
    """
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [symbol + "</w>" for symbol in symbols]
    tokens += ["".join(pair) for pair in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("BPE merges produce duplicate tokens; the merges file is not a CLIP vocabulary")
    return vocab


def write_clip_tokenizer_files(
    folder: str | Path, merges: Sequence[tuple[str, str]], model_max_length: int = 77
) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` for a CLIP tokenizer.

    Args:
        folder: destination folder (created if needed).
        merges: ``[(left, right), ...]`` in priority order; the vocabulary is derived from them.
        model_max_length: the text model's context length (77 for CLIP).

    Returns:
        The folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = clip_vocab(merges)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_text = "\n".join([MERGES_HEADER, *(f"{left} {right}" for left, right in merges)]) + "\n"
    (folder / "merges.txt").write_text(merges_text, encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


def load_clip_tokenizer(folder: str | Path) -> CLIPTokenizer:
    """Load a :class:`transformers.CLIPTokenizer` from a folder holding ``vocab.json`` and ``merges.txt``.

    Special tokens are set as CLIP uses them: bos ``<|startoftext|>``, eos = unk = pad ``<|endoftext|>``.
    """
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(
        str(folder),
        local_files_only=True,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
    )


def build_clip_tokenizer(bpe_path: str | Path) -> CLIPTokenizer:
    """Build OpenAI's CLIP tokenizer offline from open_clip's ``bpe_simple_vocab_16e6.txt.gz``.

    The result has 49,408 tokens and the ids of the published CLIP checkpoints
    (``"a photo of a cat"`` -> ``[49406, 320, 1125, 539, 320, 2368, 49407]``), ``model_max_length`` 77 and
    pad = ``<|endoftext|>``. Save it next to a model with ``tokenizer.save_pretrained(folder)``.

    Args:
        bpe_path: path to the merges file (gzip-compressed or plain text).

    Returns:
        The tokenizer; it holds no reference to the temporary folder it was built in.

    Raises:
        FileNotFoundError: ``bpe_path`` does not exist.
        ValueError: the file is not a CLIP merges file.

    Example::

        tokenizer = build_clip_tokenizer("bpe_simple_vocab_16e6.txt.gz")
        tokenizer(["a photo of a cat"], padding=True, truncation=True, return_tensors="pt")
    """
    merges = read_bpe_merges(bpe_path)
    with tempfile.TemporaryDirectory(prefix="clip_tokenizer_") as tmp:
        write_clip_tokenizer_files(tmp, merges)
        tokenizer = load_clip_tokenizer(tmp)
    if len(tokenizer) != CLIP_VOCAB_SIZE:
        raise ValueError(
            f"tokenizer built from {bpe_path} has {len(tokenizer)} tokens, expected {CLIP_VOCAB_SIZE}"
        )
    logger.debug("built CLIP tokenizer from %s (%d tokens)", bpe_path, len(tokenizer))
    return tokenizer
