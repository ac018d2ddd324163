"""CLIPSeg split into the parts that training, caching and the 2D->3D engine need, and how it is loaded.

transformers' ``CLIPSegForImageSegmentation`` runs three stages (see its ``forward``):

1. the CLIP vision tower on the image; the decoder reads the hidden states after the layers in
   ``config.extract_layers`` (``(3, 6, 9)`` for ``CIDAS/clipseg-rd64-refined``);
2. the conditional embedding of the prompt: CLIP's text tower, its pooled (EOS) output, ``text_projection``;
3. the decoder (``model.decoder``): FiLM on the extracted activations with the conditional embedding, a few
   transformer layers and a transposed convolution -> logits ``(B, S, S)`` for an ``S x S`` input.

:class:`CLIPSegNet` exposes the three stages as methods (``vision_activations``, ``text_features`` +
``conditional_embeddings``, ``decode``) so that a frozen encoder's outputs can be cached and the decoder
trained from the cache (``TextGuidedSegLib.clipseg.cache``). Unlike transformers' ``forward``, which runs
stages 1 and 2 under ``torch.no_grad()`` (so there the vision and text towers never receive gradients, even
when their parameters are trainable), :class:`CLIPSegNet` keeps autograd on for any tower that has trainable
parameters: ``full`` and ``lora`` fine-tuning really reach CLIP. The vision tower stops after the deepest
extracted layer (the later layers' outputs are never used by the decoder).

Strategies (:data:`STRATEGIES`, one small function each): ``full``, ``decoder``, ``adapter``, ``lora``.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from TextGuidedSegLib.configs import dataclass_from_dict, to_jsonable
from TextGuidedSegLib.text import TextEncoderUnavailableError
from TextGuidedSegLib.text.encoder import _first_line, _hub_offline, is_local_path

__all__ = [
    "ADAPTER_LAYOUTS",
    "BENCHMARK_CLIPSEG",
    "DEFAULT_CLIPSEG",
    "STRATEGIES",
    "BottleneckAdapter",
    "CLIPSegNet",
    "CLIPSegUnavailableError",
    "ParameterCount",
    "PixelSpec",
    "StrategyOptions",
    "apply_strategy",
    "load_clipseg",
]

logger = logging.getLogger(__name__)

#: The default base CLIPSeg (ViT-B/16 CLIP, reduce_dim 64, refined decoder). The benchmark
#: (pranzalkhadka/clipseg-tuning-benchmark) fine-tuned :data:`BENCHMARK_CLIPSEG` instead (its flare22 config).
DEFAULT_CLIPSEG = "CIDAS/clipseg-rd64-refined"
#: The base checkpoint of the CLIPSeg tuning benchmark's three notebooks (reduce_dim 16, plain decoder).
BENCHMARK_CLIPSEG = "CIDAS/clipseg-rd16"
#: ``StrategyOptions.adapter_layout``: ``benchmark`` = the benchmark's CLIPSegShallowAdapter (one vision
#: adapter per extracted layer, one text adapter per extracted layer on the EOT hidden state added to the
#: conditional embedding, a 256-wide conditional adapter); ``compact`` = ours before (one text adapter on
#: the pooled text output, every adapter ``adapter_bottleneck`` wide).
ADAPTER_LAYOUTS = ("compact", "benchmark")
#: Width of the benchmark's conditional adapter (512 -> 256 -> 512).
BENCHMARK_CONDITIONAL_WIDTH = 256
#: ImageNet statistics, CLIPSegProcessor's defaults.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Files of a saved :class:`CLIPSegNet` folder.
NET_FILE = "clipseg_net.json"
BASE_DIR = "clipseg"
LORA_DIR = "lora"
ADAPTERS_FILE = "adapters.safetensors"
NET_FORMAT_VERSION = 1


class CLIPSegUnavailableError(TextEncoderUnavailableError):
    """CLIPSeg weights or processor files cannot be loaded (offline and not cached, or a bad folder).

    A :class:`~TextGuidedSegLib.text.TextEncoderUnavailableError`, so callers that handle a missing CLIP text
    encoder handle this too; the message names the id or folder and says how to get the weights.
    """


def _how_to_get_clipseg(name: str) -> str:
    return (
        "To get the weights: on a machine with internet access run\n"
        f"    hf download {name}        (huggingface_hub >= 0.34; older: huggingface-cli download {name})\n"
        "or\n"
        '    python -c "from transformers import CLIPSegForImageSegmentation as M, CLIPSegProcessor as P; '
        f"M.from_pretrained('{name}'); P.from_pretrained('{name}')\"\n"
        "then copy the Hugging Face cache (~/.cache/huggingface/hub, or $HF_HOME/hub) to this machine, or "
        "save model and processor with save_pretrained(folder) and pass that folder instead of the id. "
        "Set HF_HUB_OFFLINE=1 on machines without internet to avoid network timeouts."
    )


def load_clipseg(
    name_or_path: str = DEFAULT_CLIPSEG, local_files_only: bool | None = None
) -> tuple[nn.Module, Any]:
    """Load ``CLIPSegForImageSegmentation`` and ``CLIPSegProcessor`` from a hub id or a local folder.

    Args:
        name_or_path: Hugging Face id (default ``CIDAS/clipseg-rd64-refined``) or a folder written by
            ``save_pretrained`` (model and processor).
        local_files_only: ``True``: never touch the network; ``False``: download when missing; ``None``: the
            local cache first, then the network. ``HF_HUB_OFFLINE=1`` always means ``True``.

    Returns:
        ``(model, processor)``; the model in ``eval()`` mode on the CPU, float32.

    Raises:
        CLIPSegUnavailableError: the weights or the processor cannot be found (the message says how to get
            them).
    """
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    local = is_local_path(name_or_path)
    if local:
        folder = Path(name_or_path).expanduser()
        if not (folder / "config.json").is_file():
            raise CLIPSegUnavailableError(
                f"CLIPSeg {name_or_path!r} is not available: {folder} holds no config.json "
                "(a folder written by CLIPSegForImageSegmentation.save_pretrained).\n"
                + _how_to_get_clipseg(DEFAULT_CLIPSEG)
            )
        attempts = [True]
    elif _hub_offline() or local_files_only:
        attempts = [True]
    elif local_files_only is None:
        attempts = [True, False]
    else:
        attempts = [False]
    error: Exception | None = None
    for local_only in attempts:
        try:
            model = CLIPSegForImageSegmentation.from_pretrained(name_or_path, local_files_only=local_only)
            processor = CLIPSegProcessor.from_pretrained(name_or_path, local_files_only=local_only)
            model.float().eval()
            logger.info("loaded CLIPSeg %s", name_or_path)
            return model, processor
        except (OSError, ValueError) as err:
            error = err
            logger.debug("loading %s (local_files_only=%s) failed: %s", name_or_path, local_only, err)
    assert error is not None
    if local:
        reason = f"loading the folder failed ({_first_line(error)})"
    elif attempts[-1]:
        reason = f"it is not in the local Hugging Face cache and the network is off ({_first_line(error)})"
    else:
        reason = f"it is not in the local Hugging Face cache and downloading it failed ({_first_line(error)})"
    raise CLIPSegUnavailableError(
        f"CLIPSeg {name_or_path!r} is not available: {reason}.\n"
        + _how_to_get_clipseg(DEFAULT_CLIPSEG if local else name_or_path)
    ) from error


@dataclass(frozen=True)
class PixelSpec:
    """How a ``uint8`` slice becomes CLIPSeg's ``pixel_values`` (what ``CLIPSegProcessor`` does to an image).

    Args:
        image_size: side ``S`` of the square model input (352 for CIDAS/clipseg-rd64-refined).
        mean: per-channel mean subtracted after scaling to [0, 1] (RGB; a CT slice fills all three).
        std: per-channel standard deviation divided by.
    """

    image_size: int = 352
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def from_processor(cls, processor: Any) -> PixelSpec:
        """The spec of a ``CLIPSegProcessor`` (its image processor's size, mean and std)."""
        image_processor = processor.image_processor
        size = image_processor.size
        if isinstance(size, int):
            side = size
        else:
            values = dict(size) if hasattr(size, "keys") else vars(size)
            side = values.get("height") or values.get("shortest_edge")
        return cls(
            image_size=int(side),
            mean=tuple(float(v) for v in image_processor.image_mean),  # type: ignore[arg-type]
            std=tuple(float(v) for v in image_processor.image_std),  # type: ignore[arg-type]
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PixelSpec:
        """Inverse of ``dataclasses.asdict``."""
        return cls(int(data["image_size"]), tuple(data["mean"]), tuple(data["std"]))  # type: ignore[arg-type]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, S, S)`` uint8 slices -> ``(N, 3, S, S)`` float32 pixel values ((x / 255 - mean) / std)."""
        x = images.to(torch.float32).div(255.0)[:, None]
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device)[None, :, None, None]
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device)[None, :, None, None]
        return (x - mean) / std


class BottleneckAdapter(nn.Module):
    """Residual bottleneck adapter ``x + ReLU(W2 ReLU(W1 x + b1) + b2)`` on the last axis.

    ``W2`` starts small (std 1e-3), so the adapter starts close to the identity and still gets gradients
    (a zero start would leave the outer ReLU, and so the adapter, without any gradient).

    Args:
        dim: size of the last axis of ``x``.
        bottleneck: hidden size of the adapter.
    """

    def __init__(self, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.normal_(self.up.weight, std=1e-3)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., dim)`` -> ``(..., dim)``."""
        return x + torch.relu(self.up(torch.relu(self.down(x))))


@dataclass
class StrategyOptions:
    """Hyper-parameters of the strategies that add parameters.

    Args:
        adapter_bottleneck: hidden size of each bottleneck adapter (``adapter``; the benchmark: 512).
        adapter_layout: ``compact`` or ``benchmark`` (:data:`ADAPTER_LAYOUTS`); ``benchmark`` with width 512
            on CIDAS/clipseg-rd16 has 4,201,984 trainable parameters, as the benchmark's adapter run.
        lora_rank: rank ``r`` of the LoRA updates (``lora``).
        lora_alpha: LoRA scaling numerator (the update is scaled by ``alpha / r``).
        lora_dropout: dropout on the LoRA input.
        lora_targets: attention projections that get LoRA (module names ending so).
    """

    adapter_bottleneck: int = 64
    adapter_layout: str = "compact"
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"])

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return to_jsonable(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StrategyOptions:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` listing the valid ones."""
        return dataclass_from_dict(cls, data)


@dataclass(frozen=True)
class ParameterCount:
    """Parameters of a model under a strategy.

    Attributes:
        strategy: the strategy's name.
        trainable: parameters with ``requires_grad``.
        total: all parameters (base model, adapters and LoRA weights included).
    """

    strategy: str
    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        """``trainable / total``."""
        return self.trainable / max(1, self.total)

    def __str__(self) -> str:
        return (
            f"strategy {self.strategy}: {self.trainable:,} trainable of {self.total:,} parameters "
            f"({100 * self.fraction:.2f} %)"
        )


class CLIPSegNet(nn.Module):
    """CLIPSeg as three callable stages, with optional adapters and LoRA (see the module docstring).

    Args:
        model: a ``CLIPSegForImageSegmentation``.
        tokenizer: its CLIP tokenizer (``processor.tokenizer``).
        pixel: how slices become pixel values.
        source: the hub id or folder the base weights came from (recorded in saved folders and bundles).

    Attributes:
        model: the transformers model, or the ``peft.PeftModel`` wrapping it after the ``lora`` strategy.
        adapters: bottleneck adapters by place (``vision_<layer>``, ``text``, ``conditional``); empty unless
            the ``adapter`` strategy added them.
        strategy: the strategy applied (``"none"`` before any).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, pixel: PixelSpec, source: str = "") -> None:
        super().__init__()
        self.model = model
        self.adapters = nn.ModuleDict()
        self.tokenizer = tokenizer
        self.pixel = pixel
        self.source = source
        self.strategy = "none"
        self.options = StrategyOptions()

    @classmethod
    def from_pretrained(
        cls, name_or_path: str = DEFAULT_CLIPSEG, local_files_only: bool | None = None
    ) -> CLIPSegNet:
        """Load base CLIPSeg weights and processor (see :func:`load_clipseg`)."""
        model, processor = load_clipseg(name_or_path, local_files_only)
        return cls(model, processor.tokenizer, PixelSpec.from_processor(processor), source=name_or_path)

    # -- structure ---------------------------------------------------------------------------------------

    @property
    def hf(self) -> nn.Module:
        """The ``CLIPSegForImageSegmentation`` (inside the PEFT wrapper after ``lora``)."""
        get_base = getattr(self.model, "get_base_model", None)
        return get_base() if get_base is not None else self.model

    @property
    def extract_layers(self) -> tuple[int, ...]:
        """Vision layers whose outputs the decoder reads (0-based), in the order the decoder expects."""
        return tuple(int(i) for i in self.hf.config.extract_layers)

    @property
    def projection_dim(self) -> int:
        """Size ``E`` of a conditional embedding."""
        return int(self.hf.config.projection_dim)

    def _trainable(self, module: nn.Module) -> bool:
        return any(p.requires_grad for p in module.parameters())

    @property
    def vision_trainable(self) -> bool:
        """Whether the vision tower (or LoRA inside it) has trainable parameters."""
        return self._trainable(self.hf.clip.vision_model)

    @property
    def text_trainable(self) -> bool:
        """Whether the text tower or its projection (or LoRA inside them) has trainable parameters."""
        clip = self.hf.clip
        return self._trainable(clip.text_model) or self._trainable(clip.text_projection)

    @property
    def cacheable(self) -> bool:
        """True when both towers are frozen: their outputs per slice and per prompt never change."""
        return not (self.vision_trainable or self.text_trainable)

    def unused_modules(self) -> dict[str, nn.Module]:
        """Parts of CLIP the segmentation never runs, by name: the vision layers after the deepest extracted
        one, the vision ``post_layernorm`` and ``visual_projection`` (``logit_scale`` is unused too)."""
        clip = self.hf.clip
        vision = clip.vision_model
        deepest = max(self.extract_layers)
        unused: dict[str, nn.Module] = {
            f"clip.vision_model.encoder.layers.{i}": layer
            for i, layer in enumerate(vision.encoder.layers)
            if i > deepest
        }
        unused["clip.vision_model.post_layernorm"] = vision.post_layernorm
        unused["clip.visual_projection"] = clip.visual_projection
        return unused

    def attention_projections(self) -> list[str]:
        """Names (in the transformers model) of the attention projections the segmentation runs: q/k/v/out of
        the used vision layers, of every text layer and of every decoder layer."""
        unused = tuple(f"{name}." for name in self.unused_modules())
        names = []
        for name, module in self.hf.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("q_proj", "k_proj", "v_proj", "out_proj") and isinstance(module, nn.Linear):
                if not name.startswith(unused):
                    names.append(name)
        return names

    def parameter_count(self) -> ParameterCount:
        """Trainable and total parameters of the whole net (adapters and LoRA included)."""
        params = list(self.parameters())
        return ParameterCount(
            self.strategy, sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
        )

    # -- the three stages --------------------------------------------------------------------------------

    def vision_activations(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Hidden states after each extracted vision layer, adapters not applied.

        Runs the vision tower up to the deepest extracted layer, with autograd only when the tower has
        trainable parameters.

        Args:
            pixel_values: ``(B, 3, S, S)`` float32 (``PixelSpec.normalize``).

        Returns:
            One ``(B, T, H)`` tensor per extracted layer (``T = 1 + (S / patch)**2`` tokens, ``H`` the vision
            width), in ``extract_layers`` order.
        """
        vision = self.hf.clip.vision_model
        wanted = self.extract_layers
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.vision_trainable):
            hidden = vision.embeddings(pixel_values, interpolate_pos_encoding=True)
            hidden = vision.pre_layrnorm(hidden)
            found: dict[int, torch.Tensor] = {}
            for index, layer in enumerate(vision.encoder.layers[: max(wanted) + 1]):
                hidden = layer(hidden, None)
                if index in wanted:
                    found[index] = hidden
        return [found[i] for i in wanted]

    @property
    def text_layer_adapters(self) -> bool:
        """True with the benchmark's adapter layout (text adapters on each extracted layer's EOT state)."""
        return any(name.startswith("text_") for name in self.adapters)

    def text_features(self, prompts: Sequence[str]) -> torch.Tensor:
        """Pooled (EOS) text-tower outputs ``(P, H_text)`` of ``prompts``, before ``text_projection``.

        With the benchmark's adapter layout ``(P, 1 + L, H_text)``: the pooled output, then the EOT token's
        hidden state after each of the ``L`` extracted layers (what its text adapters read).
        """
        device = next(self.parameters()).device
        tokens = self.tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt")
        layers = self.text_layer_adapters
        input_ids = tokens["input_ids"].to(device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.text_trainable):
            out = self.hf.clip.text_model(
                input_ids=input_ids,
                attention_mask=tokens["attention_mask"].to(device),
                output_hidden_states=layers,
            )
        if not layers:
            return out.pooler_output
        hidden = out.hidden_states  # embeddings, then one per layer
        deepest = max(self.extract_layers) + 1
        if deepest >= len(hidden):
            raise ValueError(
                f"the text tower has {len(hidden) - 1} layers; the benchmark's text adapters read layers "
                f"{list(self.extract_layers)} (extract_layers): use adapter_layout=compact with this model"
            )
        eot = input_ids.argmax(dim=-1)  # the EOT token has the highest id (the benchmark's rule)
        rows = torch.arange(input_ids.shape[0], device=device)
        states = [hidden[layer + 1][rows, eot] for layer in self.extract_layers]
        return torch.stack([out.pooler_output, *states], dim=1)

    def conditional_embeddings(self, text_features: torch.Tensor) -> torch.Tensor:
        """``text_features`` (see :meth:`text_features`) -> ``(P, E)`` conditional embeddings (adapters on).

        Benchmark layout: ``cond_adapter(text_projection(pooled)) + sum_l text_adapter_l(eot_state_l)``.
        """
        layers = text_features[:, 1:] if text_features.ndim == 3 else None
        pooled = text_features[:, 0] if text_features.ndim == 3 else text_features
        if "text" in self.adapters:
            pooled = self.adapters["text"](pooled)
        conditional = self.hf.clip.text_projection(pooled)
        if "conditional" in self.adapters:
            conditional = self.adapters["conditional"](conditional)
        if layers is not None:
            for index, layer in enumerate(self.extract_layers):
                conditional = conditional + self.adapters[f"text_{layer}"](layers[:, index])
        return conditional

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Conditional embeddings ``(P, E)`` of prompts (CLIPSeg's own text side, adapters applied)."""
        return self.conditional_embeddings(self.text_features(prompts))

    def decode(self, activations: Sequence[torch.Tensor], conditional: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, S, S)`` from extracted activations (``(B, T, H)`` each) and ``(B, E)`` embeddings."""
        if self.adapters:
            activations = [
                self.adapters[f"vision_{layer}"](a) if f"vision_{layer}" in self.adapters else a
                for layer, a in zip(self.extract_layers, activations, strict=True)
            ]
        logits = self.hf.decoder(list(activations), conditional).logits
        return logits.reshape(conditional.shape[0], *logits.shape[-2:])

    def forward(self, pixel_values: torch.Tensor, conditional: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, S, S)`` for pixel values ``(B, 3, S, S)`` and conditional embeddings ``(B, E)``."""
        return self.decode(self.vision_activations(pixel_values), conditional)

    @torch.no_grad()
    def predict_slices(
        self, images: torch.Tensor, conditional: torch.Tensor, batch_size: int = 16, to_cpu: bool = True
    ) -> torch.Tensor:
        """Logits ``(N, Q, S, S)`` of ``N`` uint8 slices ``(N, S, S)`` for ``Q`` embeddings ``(Q, E)``.

        The vision tower runs once per slice, the decoder once per (slice, query). The result is float32,
        on the CPU (``to_cpu``) or on the net's device.
        """
        device = next(self.parameters()).device
        conditional = conditional.to(device)
        q = conditional.shape[0]
        out = []
        for start in range(0, images.shape[0], batch_size):
            pixels = self.pixel.normalize(images[start : start + batch_size].to(device))
            n = pixels.shape[0]
            activations = [a.repeat_interleave(q, dim=0) for a in self.vision_activations(pixels)]
            logits = self.decode(activations, conditional.repeat(n, 1)).float()
            logits = logits.reshape(n, q, *logits.shape[-2:])
            out.append(logits.cpu() if to_cpu else logits)
        if not out:
            size = self.pixel.image_size
            return torch.zeros(0, q, size, size, device="cpu" if to_cpu else device)
        return torch.cat(out)

    # -- save / load -------------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Write the net to ``folder`` (created): base weights with ``save_pretrained``, LoRA the PEFT way.

        Layout: ``clipseg/`` (``CLIPSegForImageSegmentation.save_pretrained`` + processor files: for ``lora``
        the base without LoRA), ``lora/`` (``PeftModel.save_pretrained``: ``adapter_config.json`` +
        ``adapter_model.safetensors``), ``adapters.safetensors`` (bottleneck adapters) and
        ``clipseg_net.json`` (strategy, options, pixel spec, source).
        """
        from transformers import CLIPSegProcessor, ViTImageProcessor

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.strategy == "lora":
            base = copy.deepcopy(self.model).unload()  # the base weights without the LoRA layers
            base.save_pretrained(folder / BASE_DIR)
            self.model.save_pretrained(folder / LORA_DIR)
        else:
            self.model.save_pretrained(folder / BASE_DIR)
        image_processor = ViTImageProcessor(
            size={"height": self.pixel.image_size, "width": self.pixel.image_size},
            image_mean=list(self.pixel.mean),
            image_std=list(self.pixel.std),
        )
        CLIPSegProcessor(image_processor=image_processor, tokenizer=self.tokenizer).save_pretrained(
            folder / BASE_DIR
        )
        if len(self.adapters):
            state = {k: v.detach().cpu().contiguous() for k, v in self.adapters.state_dict().items()}
            save_file(state, str(folder / ADAPTERS_FILE), metadata={"format": "pt"})
        description = {
            "format_version": NET_FORMAT_VERSION,
            "strategy": self.strategy,
            "options": self.options.to_dict(),
            "pixel": asdict(self.pixel),
            "source": self.source,
            "adapters": sorted(self.adapters),
        }
        (folder / NET_FILE).write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: str | Path, trainable: bool = False) -> CLIPSegNet:
        """Read a folder written by :meth:`save` (LoRA through ``PeftModel.from_pretrained``).

        Args:
            folder: the folder.
            trainable: re-apply the strategy's trainable flags (to continue training); else all frozen.

        Raises:
            CLIPSegUnavailableError: files are missing or do not load.
        """
        folder = Path(folder)
        try:
            description = json.loads((folder / NET_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise CLIPSegUnavailableError(f"{folder}: cannot read {NET_FILE} ({err})") from err
        model, processor = load_clipseg(str(folder / BASE_DIR), local_files_only=True)
        net = cls(
            model, processor.tokenizer, PixelSpec.from_dict(description["pixel"]), description["source"]
        )
        strategy = description["strategy"]
        options = StrategyOptions.from_dict(description["options"])
        if strategy == "lora":
            from peft import PeftModel

            net.model = PeftModel.from_pretrained(model, str(folder / LORA_DIR), is_trainable=trainable)
            net.strategy, net.options = "lora", options
            net.requires_grad_(False)
            if trainable:
                for name, param in net.model.named_parameters():
                    param.requires_grad = "lora_" in name
        else:
            if strategy in STRATEGIES:
                apply_strategy(net, strategy, options, log=False)
            if len(net.adapters):
                net.adapters.load_state_dict(load_file(str(folder / ADAPTERS_FILE)), strict=True)
            if not trainable:
                net.requires_grad_(False)
        net.eval()
        return net


# ----------------------------------------------------------------------------------------------------------
# Strategies: each freezes or wraps the net in place
# ----------------------------------------------------------------------------------------------------------


def _full(net: CLIPSegNet, options: StrategyOptions) -> None:
    """Everything the segmentation runs trains: CLIP's vision tower up to the deepest extracted layer, the
    text tower and its projection, the decoder (``net.unused_modules()`` and ``logit_scale`` stay frozen:
    they never receive a gradient)."""
    net.requires_grad_(True)
    for module in net.unused_modules().values():
        module.requires_grad_(False)
    net.hf.clip.logit_scale.requires_grad_(False)


def _decoder(net: CLIPSegNet, options: StrategyOptions) -> None:
    """CLIP frozen; the decoder (FiLM, reductions, decoder layers, transposed convolution) trains."""
    net.requires_grad_(False)
    net.hf.decoder.requires_grad_(True)


def _adapter(net: CLIPSegNet, options: StrategyOptions) -> None:
    """CLIPSeg frozen; residual bottleneck adapters train on the extracted vision activations, on the text
    side (``compact``: the pooled output; ``benchmark``: each extracted layer's EOT state, added to the
    conditional embedding) and on the conditional embedding (``options.adapter_layout``)."""
    if options.adapter_layout not in ADAPTER_LAYOUTS:
        raise ValueError(
            f"options.adapter_layout must be one of {list(ADAPTER_LAYOUTS)}, got {options.adapter_layout!r}"
        )
    net.requires_grad_(False)
    config = net.hf.config
    width = options.adapter_bottleneck
    for layer in net.extract_layers:
        net.adapters[f"vision_{layer}"] = BottleneckAdapter(config.vision_config.hidden_size, width)
    if options.adapter_layout == "benchmark":
        if config.text_config.hidden_size != config.projection_dim:
            raise ValueError(
                f"adapter_layout=benchmark adds text hidden states ({config.text_config.hidden_size}) to the "
                f"conditional embedding ({config.projection_dim}): they must be one size; use "
                "adapter_layout=compact with this model"
            )
        for layer in net.extract_layers:
            net.adapters[f"text_{layer}"] = BottleneckAdapter(config.text_config.hidden_size, width)
        conditional_width = BENCHMARK_CONDITIONAL_WIDTH
    else:
        net.adapters["text"] = BottleneckAdapter(config.text_config.hidden_size, width)
        conditional_width = width
    net.adapters["conditional"] = BottleneckAdapter(config.projection_dim, conditional_width)
    device = next(net.hf.parameters()).device
    net.adapters.to(device)
    net.adapters.requires_grad_(True)


def _lora(net: CLIPSegNet, options: StrategyOptions) -> None:
    """PEFT LoRA on the attention projections the segmentation runs (``options.lora_targets`` of the used
    vision layers, the text tower and the decoder); everything else frozen."""
    from peft import LoraConfig, get_peft_model

    net.requires_grad_(False)
    targets = tuple(options.lora_targets)
    config = LoraConfig(
        r=options.lora_rank,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        target_modules=[name for name in net.attention_projections() if name.endswith(targets)],
        bias="none",
    )
    net.model = get_peft_model(net.model, config)


#: Strategy name -> the function that freezes / wraps a fresh :class:`CLIPSegNet` in place.
STRATEGIES: dict[str, Callable[[CLIPSegNet, StrategyOptions], None]] = {
    "full": _full,
    "decoder": _decoder,
    "adapter": _adapter,
    "lora": _lora,
}


def apply_strategy(
    net: CLIPSegNet, strategy: str, options: StrategyOptions | None = None, log: bool = True
) -> ParameterCount:
    """Apply a strategy of :data:`STRATEGIES` to a fresh net; log and return its parameter counts.

    Raises:
        ValueError: an unknown strategy name, or a net that already has a strategy.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown CLIPSeg strategy {strategy!r}; choose one of {sorted(STRATEGIES)}")
    if net.strategy != "none":
        raise ValueError(f"this net already has strategy {net.strategy!r}; start from a fresh CLIPSegNet")
    options = options or StrategyOptions()
    STRATEGIES[strategy](net, options)
    net.strategy, net.options = strategy, options
    count = net.parameter_count()
    if log:
        logger.info("%s", count)
    return count
