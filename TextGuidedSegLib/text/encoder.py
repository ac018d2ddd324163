"""The frozen CLIP text encoder: prompts in, ``(N, E)`` float32 embeddings out.

The encoder is loaded once with transformers' ``from_pretrained`` (a Hugging Face id such as
``openai/clip-vit-base-patch32`` or a local folder), frozen and kept in ``eval()`` mode. Segmentation models
never run it inside their forward pass: prompts are encoded ahead of time into an
:class:`~TextGuidedSegLib.text.cache.EmbeddingCache` keyed by :attr:`CLIPTextEncoder.identity`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from TextGuidedSegLib.files import sha256_file

logger = logging.getLogger(__name__)

OUTPUT_KINDS = ("pooler", "projected")
DEFAULT_CLIP = "openai/clip-vit-base-patch32"
# Hashed into the identity of a local folder: tokenizer files byte for byte, config.json minus these keys.
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt")
_VOLATILE_CONFIG_KEYS = ("transformers_version", "architectures", "dtype", "torch_dtype", "_name_or_path")
_COMMIT_HASH = re.compile(r"[0-9a-f]{40}")
# A plain text probe: every byte-level BPE vocabulary encodes it without the unknown token.
_TOKENIZER_PROBE = "a photo of the liver"


class TextEncoderUnavailableError(RuntimeError):
    """The text encoder's weights or tokenizer cannot be loaded (offline and not cached, or a bad folder).

    The message names the id or folder and says how to obtain the weights; the original exception is chained.
    """


@runtime_checkable
class PromptEncoder(Protocol):
    """What :class:`~TextGuidedSegLib.text.cache.EmbeddingCache` needs from an encoder (tests pass fakes)."""

    @property
    def identity(self) -> str:
        """Stable string naming the encoder (cache key)."""
        ...

    @property
    def dim(self) -> int:
        """Embedding size ``E``."""
        ...

    def encode(self, prompts: Sequence[str]) -> Tensor:
        """Encode ``N`` prompts into a ``(N, E)`` float32 CPU tensor."""
        ...


@dataclass
class TextEncoderSpec:
    """Which text encoder to load; stored in bundles and configs as a plain dict.

    Args:
        name_or_path: Hugging Face model id (``"openai/clip-vit-base-patch32"``) or a local folder holding
            ``config.json``, ``model.safetensors`` and tokenizer files.
        output: ``"pooler"``: the ``pooler_output`` of ``CLIPTextModel`` (the EOS token's final hidden state,
            E = hidden size, 512 for ViT-B/32); ``"projected"``: ``text_embeds`` of
            ``CLIPTextModelWithProjection`` (E = projection size, 512 for ViT-B/32).
        revision: hub branch, tag or commit; ``None`` is the default branch. Ignored for local folders.

    Example::

        spec = TextEncoderSpec()  # openai/clip-vit-base-patch32, pooler output
        spec = TextEncoderSpec("/models/clip", output="projected")
    """

    name_or_path: str = DEFAULT_CLIP
    output: str = "pooler"
    revision: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name_or_path, str) or not self.name_or_path.strip():
            raise ValueError(f"name_or_path must be a non-empty string, got {self.name_or_path!r}")
        if self.output not in OUTPUT_KINDS:
            raise ValueError(f"output must be one of {OUTPUT_KINDS}, got {self.output!r}")
        if self.revision is not None and not isinstance(self.revision, str):
            raise ValueError(f"revision must be a string or None, got {self.revision!r}")

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as a JSON-ready dict (``name_or_path``, ``output``, ``revision``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextEncoderSpec:
        """Build a spec from :meth:`to_dict` output; missing keys take their defaults.

        Raises:
            ValueError: ``data`` holds a key the spec does not know, or an invalid value.
        """
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TextEncoderSpec key(s) {unknown}; known keys are {sorted(known)}")
        return cls(**data)


def is_local_path(name_or_path: str) -> bool:
    """True for a local folder: one that exists, or a name written as a path (``/x``, ``./x``, ``~/x``)."""
    if Path(name_or_path).expanduser().exists():
        return True
    return (
        os.path.isabs(name_or_path)
        or name_or_path.startswith((".", "~"))
        or "\\" in name_or_path
        or name_or_path.count("/") > 1
    )


def _hub_offline() -> bool:
    """Whether offline mode is on, read from the environment now (hub constants are frozen at import)."""
    import huggingface_hub.constants as hub_constants

    truthy = {"1", "on", "yes", "true"}
    from_env = any(
        os.environ.get(key, "").strip().lower() in truthy
        for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    return from_env or bool(hub_constants.HF_HUB_OFFLINE)


def _how_to_get_weights(name: str) -> str:
    """The fix-it paragraph of every :class:`TextEncoderUnavailableError`."""
    return (
        "To get the weights: on a machine with internet access run\n"
        f"    hf download {name}        (huggingface_hub >= 0.34; older: huggingface-cli download {name})\n"
        "or\n"
        '    python -c "from transformers import CLIPTextModel, CLIPTokenizer; '
        f"CLIPTextModel.from_pretrained('{name}'); CLIPTokenizer.from_pretrained('{name}')\"\n"
        "then copy the Hugging Face cache (~/.cache/huggingface/hub, or $HF_HOME/hub) to this machine, "
        "or save model and tokenizer with save_pretrained(folder) and pass that folder as name_or_path. "
        "Set HF_HUB_OFFLINE=1 on machines without internet to avoid network timeouts."
    )


def _config_sha256(path: Path) -> str:
    """Hex sha256 of ``config.json`` minus the keys a mere re-save changes (version, dtype spelling)."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return sha256_file(path)  # transformers will report the broken file
    if isinstance(config, dict):
        for key in _VOLATILE_CONFIG_KEYS:
            config.pop(key, None)
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def local_model_digest(folder: str | Path) -> str:
    """Hex sha256 over a local model folder's weights (``*.safetensors``), config and tokenizer files.

    Weights and tokenizer files (``tokenizer.json``, ``vocab.json``, ``merges.txt``) count byte for byte;
    ``config.json`` counts without ``transformers_version``, ``architectures``, ``dtype``/``torch_dtype`` and
    ``_name_or_path``. Two folders share the digest only when these match, whatever the folders are called.
    """
    folder = Path(folder)
    parts = [(path.name, sha256_file(path)) for path in sorted(folder.glob("*.safetensors"))]
    if (folder / "config.json").is_file():
        parts.append(("config.json", _config_sha256(folder / "config.json")))
    parts += [(name, sha256_file(folder / name)) for name in _TOKENIZER_FILES if (folder / name).is_file()]
    digest = hashlib.sha256()
    for name, file_digest in parts:
        digest.update(f"{name}\0{file_digest}\n".encode())
    return digest.hexdigest()


def _hub_commit_hash(model: torch.nn.Module, spec: TextEncoderSpec, cache_dir: str | None) -> str | None:
    """The commit a hub model came from: ``config._commit_hash`` (transformers 4.x) or the cache snapshot."""
    commit = getattr(model.config, "_commit_hash", None)
    if isinstance(commit, str) and commit:
        return commit
    # transformers 5.x no longer sets config._commit_hash: read the snapshot folder config.json resolves to.
    from huggingface_hub import try_to_load_from_cache

    resolved = try_to_load_from_cache(
        spec.name_or_path, "config.json", cache_dir=cache_dir, revision=spec.revision or "main"
    )
    if isinstance(resolved, str) and _COMMIT_HASH.fullmatch(Path(resolved).parent.name):
        return Path(resolved).parent.name  # <cache>/models--org--name/snapshots/<commit>/config.json
    if spec.revision and _COMMIT_HASH.fullmatch(spec.revision):
        return spec.revision
    return None


def _first_line(err: BaseException) -> str:
    """``"Type: first line of the message"``: enough to see the cause without a hub stack trace."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def _check_tokenizer(tokenizer: Any, vocab_size: int) -> None:
    """Refuse an empty or foreign tokenizer (transformers 5.x builds a 3-token one when files are missing).

    Raises:
        OSError: the tokenizer's files are missing or it does not fit the model's vocabulary.
    """
    if len(tokenizer) > vocab_size:
        raise OSError(
            f"the tokenizer has {len(tokenizer)} tokens but the model only {vocab_size} token embeddings"
        )
    ids = tokenizer(_TOKENIZER_PROBE, add_special_tokens=False)["input_ids"]
    unk = tokenizer.unk_token_id
    if not ids or (unk is not None and unk in ids):
        raise OSError(
            f"the tokenizer ({len(tokenizer)} tokens) maps plain text to the unknown token: "
            "its files (tokenizer.json, or vocab.json + merges.txt) are missing"
        )


class _DropLoadReport(logging.Filter):
    """Drop transformers 5.x ``LOAD REPORT`` warnings (the encoder checks keys itself); keep them at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" in message:
            logger.debug("transformers load report: %s", message)
            return False
        return True


@contextlib.contextmanager
def _quiet_load_report() -> Iterator[None]:
    """Silence the per-key load table while loading a text tower out of a full CLIP checkpoint."""
    hf_logger = logging.getLogger("transformers.modeling_utils")
    report_filter = _DropLoadReport()
    hf_logger.addFilter(report_filter)
    try:
        yield
    finally:
        hf_logger.removeFilter(report_filter)


class CLIPTextEncoder:
    """Frozen CLIP text tower: encodes prompts into ``(N, E)`` float32 embeddings.

    Args:
        spec: which model and output; default ``TextEncoderSpec()`` (openai/clip-vit-base-patch32, pooler).
        device: where the model runs; outputs always come back on the CPU.
        local_files_only: ``True``: never touch the network (local folder or the Hugging Face cache only);
            ``False``: download when missing; ``None``: local cache first, then the network.
            ``HF_HUB_OFFLINE=1`` (read at each construction) always means ``True``.
        cache_dir: Hugging Face cache folder to use instead of the default (``$HF_HOME/hub``).

    Raises:
        TextEncoderUnavailableError: weights or tokenizer cannot be found (message says how to get them).
        ValueError: the spec is invalid.

    Example::

        encoder = CLIPTextEncoder()                       # needs the weights in the HF cache or the network
        embeddings = encoder.encode(["liver", "left kidney"])   # (2, 512) float32
        cache_key = encoder.identity                      # "openai/clip-vit-base-patch32@<commit>:pooler"
    """

    def __init__(
        self,
        spec: TextEncoderSpec | None = None,
        device: str | torch.device = "cpu",
        local_files_only: bool | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.spec = spec if spec is not None else TextEncoderSpec()
        self.device = torch.device(device)
        self._cache_dir = str(cache_dir) if cache_dir is not None else None
        self._local = is_local_path(self.spec.name_or_path)
        if self._local:
            self._model, self._tokenizer = self._load_local()
            self._identity = f"local-sha256:{local_model_digest(self._folder)[:16]}:{self.spec.output}"
        else:
            self._model, self._tokenizer, commit = self._load_hub(local_files_only)
            if commit is None:
                commit = self.spec.revision or "unknown-commit"
                logger.warning(
                    "could not find the commit hash of %s; its cache identity uses %r",
                    self.spec.name_or_path,
                    commit,
                )
            self._identity = f"{self.spec.name_or_path}@{commit}:{self.spec.output}"
        self._model.requires_grad_(False)
        self._model.eval()
        self._model.float().to(self.device)
        config = self._model.config
        self._dim = int(config.hidden_size if self.spec.output == "pooler" else config.projection_dim)
        tokenizer_max = int(getattr(self._tokenizer, "model_max_length", 0) or 0)
        positions = int(config.max_position_embeddings)
        self._max_length = min(tokenizer_max, positions) if tokenizer_max > 0 else positions
        logger.info("loaded text encoder %s (E=%d) on %s", self._identity, self._dim, self.device)

    # ------------------------------------------------------------------ loading

    @property
    def _folder(self) -> Path:
        return Path(self.spec.name_or_path).expanduser()

    def _unavailable(self, reason: str) -> TextEncoderUnavailableError:
        name = self.spec.name_or_path
        how = _how_to_get_weights(DEFAULT_CLIP if self._local else name)
        return TextEncoderUnavailableError(f"CLIP text encoder {name!r} is not available: {reason}.\n{how}")

    def _from_pretrained(self, source: str, local_files_only: bool, revision: str | None) -> tuple[Any, Any]:
        """Load and check (model, tokenizer) from one source.

        Raises:
            OSError, ValueError: from transformers / huggingface_hub, or an incomplete tokenizer (the
                caller may retry with the network).
            TextEncoderUnavailableError: the checkpoint cannot serve this spec (no retry helps).
        """
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        model_class = CLIPTextModel if self.spec.output == "pooler" else CLIPTextModelWithProjection
        kwargs: dict[str, Any] = {"local_files_only": local_files_only, "revision": revision}
        if self._cache_dir is not None:
            kwargs["cache_dir"] = self._cache_dir
        with _quiet_load_report():
            model, info = model_class.from_pretrained(
                source, use_safetensors=True, output_loading_info=True, **kwargs
            )
        missing = sorted(info.get("missing_keys") or ())
        if missing:
            hint = (
                "; use output='pooler' or a checkpoint with a text projection"
                if self.spec.output == "projected"
                else ""
            )
            raise self._unavailable(
                f"the checkpoint has no weights for {missing[:5]} "
                f"(needed by {model_class.__name__}, output={self.spec.output!r}){hint}"
            )
        unexpected = info.get("unexpected_keys") or ()
        if unexpected:
            logger.debug("ignored %d checkpoint tensors outside the text tower", len(unexpected))
        tokenizer = CLIPTokenizer.from_pretrained(source, **kwargs)
        _check_tokenizer(tokenizer, int(model.config.vocab_size))
        return model, tokenizer

    def _load_local(self) -> tuple[Any, Any]:
        folder = self._folder
        if not folder.is_dir():
            raise self._unavailable(f"the local folder {folder} does not exist")
        if self.spec.revision is not None:
            logger.warning("revision %r is ignored for the local folder %s", self.spec.revision, folder)
        if not any(folder.glob("*.safetensors")):
            raise self._unavailable(
                f"the local folder {folder} holds no *.safetensors weights (.bin pickles are never loaded)"
            )
        try:
            return self._from_pretrained(str(folder), local_files_only=True, revision=None)
        except (OSError, ValueError) as err:
            raise self._unavailable(f"loading {folder} failed ({_first_line(err)})") from err

    def _cached_snapshot(self) -> Path:
        """The hub cache's snapshot folder for this id and revision, found on disk alone (no network code).

        Raises:
            OSError: the cache has no ``config.json`` for this id and revision.
        """
        from huggingface_hub import try_to_load_from_cache

        revision = self.spec.revision or "main"
        resolved = try_to_load_from_cache(
            self.spec.name_or_path, "config.json", cache_dir=self._cache_dir, revision=revision
        )
        if not isinstance(resolved, str):
            where = self._cache_dir or "the default cache ($HF_HOME/hub)"
            raise OSError(f"no config.json for revision {revision!r} in {where}")
        return Path(resolved).parent

    def _load_hub(self, local_files_only: bool | None) -> tuple[Any, Any, str | None]:
        """Load (model, tokenizer, commit hash) of a hub id: from the cache, then (if allowed) the network."""
        name = self.spec.name_or_path
        offline = _hub_offline()
        if offline or local_files_only:
            attempts = [True]
        elif local_files_only is None:
            attempts = [True, False]  # the cache first: no network round trip when the weights are there
        else:
            attempts = [False]
        error: OSError | ValueError | None = None
        for local_only in attempts:
            try:
                if local_only:
                    # Load the snapshot folder directly: huggingface_hub may reach the network even with
                    # local_files_only=True when HF_HUB_OFFLINE was not set before it was imported.
                    snapshot = self._cached_snapshot()
                    model, tokenizer = self._from_pretrained(
                        str(snapshot), local_files_only=True, revision=None
                    )
                    commit = snapshot.name if _COMMIT_HASH.fullmatch(snapshot.name) else None
                    return model, tokenizer, commit
                model, tokenizer = self._from_pretrained(
                    name, local_files_only=False, revision=self.spec.revision
                )
                return model, tokenizer, _hub_commit_hash(model, self.spec, self._cache_dir)
            except (OSError, ValueError) as err:
                error = err
                logger.debug("loading %s (local_files_only=%s) failed: %s", name, local_only, err)
        assert error is not None
        if attempts[-1]:
            why = "offline mode is on (HF_HUB_OFFLINE)" if offline else "local_files_only=True"
            reason = f"it is not in the local Hugging Face cache and {why}"
        else:
            reason = "it is not in the local Hugging Face cache and downloading it failed"
        raise self._unavailable(f"{reason} ({_first_line(error)})") from error

    # ------------------------------------------------------------------ public API

    @property
    def dim(self) -> int:
        """Embedding size ``E`` (512 for CLIP ViT-B/32, either output)."""
        return self._dim

    @property
    def identity(self) -> str:
        """Stable cache key: ``"<hub id>@<commit>:<output>"`` or ``"local-sha256:<16 hex>:<output>"``.

        For a local folder the hash covers weights, ``config.json`` and tokenizer files, so two different
        local models never share an identity and a moved or renamed copy keeps it.
        """
        return self._identity

    @property
    def max_length(self) -> int:
        """Token context length: prompts are padded and truncated to it (77 for CLIP)."""
        return self._max_length

    @property
    def tokenizer(self) -> Any:
        """The ``transformers.CLIPTokenizer`` in use."""
        return self._tokenizer

    @property
    def model(self) -> torch.nn.Module:
        """The frozen ``CLIPTextModel`` / ``CLIPTextModelWithProjection``."""
        return self._model

    def __repr__(self) -> str:
        return f"CLIPTextEncoder(identity={self._identity!r}, dim={self._dim}, device={str(self.device)!r})"

    def encode(self, prompts: Sequence[str], batch_size: int = 64) -> Tensor:
        """Encode prompts into embeddings.

        Every prompt is padded (and truncated) to :attr:`max_length` tokens, as OpenAI's CLIP does, so a
        prompt's embedding does not depend on the other prompts in its batch (bit-identical for any
        ``batch_size``). Runs under ``torch.no_grad()``; the result is an ordinary tensor (usable in autograd
        graphs later, unlike ``inference_mode`` tensors).

        Args:
            prompts: ``N`` prompt strings (a bare ``str`` is refused).
            batch_size: prompts per forward pass, >= 1.

        Returns:
            ``(N, E)`` float32 CPU tensor: ``pooler_output`` or ``text_embeds`` per ``spec.output``.

        Raises:
            TypeError: ``prompts`` is a string or holds non-strings.
            ValueError: ``batch_size`` < 1.
        """
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of strings, not one string: use encode([prompt])")
        prompts = list(prompts)
        bad = [prompt for prompt in prompts if not isinstance(prompt, str)]
        if bad:
            raise TypeError(f"prompts must be strings, got {[type(item).__name__ for item in bad[:3]]}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not prompts:
            return torch.zeros(0, self._dim, dtype=torch.float32)
        chunks = []
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                tokens = self._tokenizer(
                    prompts[start : start + batch_size],
                    padding="max_length",
                    truncation=True,
                    max_length=self._max_length,
                    return_tensors="pt",
                )
                outputs = self._model(
                    input_ids=tokens["input_ids"].to(self.device),
                    attention_mask=tokens["attention_mask"].to(self.device),
                )
                vectors = outputs.pooler_output if self.spec.output == "pooler" else outputs.text_embeds
                chunks.append(vectors.to(device="cpu", dtype=torch.float32))
        return torch.cat(chunks).contiguous()
