"""CLIPSeg: strategies train what they claim, save/reload, slicing, encoder cache, 2D->3D engine, bench.

Every model is a tiny random-init CLIPSeg (``make_tiny_clipseg``: 64 px, width 32, 4 vision layers of which
the first 3 feed the decoder) built in the test; nothing is downloaded. Training tests slice procedural
phantoms; slicing, engine and bench tests use the real CT in ``../shared/data/totalseg`` (skipped without it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, shared_path

from TextGuidedSegLib.bundle import load_bundle
from TextGuidedSegLib.cli import main as cli_main
from TextGuidedSegLib.clipseg.bench import StrategyReport, explain
from TextGuidedSegLib.clipseg.data import (
    SliceCase,
    SliceConfig,
    build_slice_set,
    cases_from_lists,
    slice_back,
)
from TextGuidedSegLib.clipseg.model import (
    STRATEGIES,
    BottleneckAdapter,
    CLIPSegNet,
    CLIPSegUnavailableError,
    apply_strategy,
    load_clipseg,
)
from TextGuidedSegLib.clipseg.testing import make_tiny_clipseg
from TextGuidedSegLib.clipseg.train import CLIPSegTrainConfig, SliceLoss, load_clipseg_config, train_clipseg
from TextGuidedSegLib.clipseg.volume import save_clipseg_bundle
from TextGuidedSegLib.data.phantom import PhantomConfig, write_phantoms
from TextGuidedSegLib.inference import Segmenter
from TextGuidedSegLib.io import load_volume
from TextGuidedSegLib.text import TextEncoderUnavailableError
from TextGuidedSegLib.training.checkpoint import load_checkpoint
from TextGuidedSegLib.training.config import ConfigError

PROMPTS = ["liver", "right kidney", "spleen"]
PHANTOM_STRUCTURES = ["liver", "spleen", "right_kidney", "left_kidney", "stomach"]

# PEFT calls a transformers 5 property that warns about its own deprecation
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init CLIPSeg (model + processor) saved with save_pretrained."""
    return make_tiny_clipseg(tmp_path_factory.mktemp("clipseg") / "tiny")


def fresh_net(folder: Path, strategy: str | None = None) -> CLIPSegNet:
    net = CLIPSegNet.from_pretrained(str(folder))
    if strategy is not None:
        torch.manual_seed(0)
        apply_strategy(net, strategy)
    return net


def pixels(seed: int = 0, n: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 64, 64), dtype=torch.uint8, generator=generator)


@pytest.fixture(scope="session")
def phantom_sets(tmp_path_factory: pytest.TempPathFactory):
    """Training (2 phantoms) and validation (1 phantom) slice sets at 64 px."""
    folder = tmp_path_factory.mktemp("clipseg_phantoms")
    config = PhantomConfig(shape=(64, 64, 24), spacing=(5.0, 5.0, 5.0))
    train_list = write_phantoms(folder / "train", 2, config, seed=0, progress=False)
    val_list = write_phantoms(folder / "val", 1, config, seed=1, progress=False)
    slicing = SliceConfig(structures=PHANTOM_STRUCTURES, spacing=(5.0, 5.0, 5.0), image_size=64)
    train = build_slice_set(cases_from_lists([train_list]), slicing, folder / "slices", progress=False)
    val = build_slice_set(cases_from_lists([val_list]), slicing, folder / "slices", progress=False)
    return train, val


def run_config(tmp_path: Path, folder: Path, strategy: str, **changes) -> CLIPSegTrainConfig:
    values = {
        "run_dir": str(tmp_path / f"run_{strategy}_{changes.get('cache', 'auto')}"),
        "model": str(folder),
        "strategy": strategy,
        "epochs": 2,
        "batch_size": 8,
        "max_steps_per_epoch": 4,
        "threads": 1,
        "tensorboard": False,
        "progress": False,
        "checkpoints": False,
        "export_bundle": False,
        "slicing": SliceConfig(structures=PHANTOM_STRUCTURES, spacing=(5.0, 5.0, 5.0), image_size=64),
    }
    values.update(changes)
    return CLIPSegTrainConfig(**values)


# ----------------------------------------------------------------------------------------------------------
# The model and the strategies
# ----------------------------------------------------------------------------------------------------------


def test_staged_forward_equals_transformers_forward(tiny_folder):
    net = fresh_net(tiny_folder)
    images = net.pixel.normalize(pixels())
    tokens = net.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = net.hf(
            pixel_values=images, input_ids=tokens.input_ids, attention_mask=tokens.attention_mask
        ).logits
        ours = net(images, net.encode_prompts(PROMPTS))
    assert ours.shape == (3, 64, 64)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def test_bottleneck_adapter_is_the_residual_formula():
    adapter = BottleneckAdapter(4, 2)
    x = torch.randn(5, 4)
    w1, b1, w2, b2 = adapter.down.weight, adapter.down.bias, adapter.up.weight, adapter.up.bias
    expected = x + torch.relu(torch.relu(x @ w1.T + b1) @ w2.T + b2)
    torch.testing.assert_close(adapter(x), expected)


def expected_trainable(net: CLIPSegNet, strategy: str) -> set[int]:
    """Ids of the parameters a strategy claims to train, found from the model's own modules."""
    hf = net.hf
    if strategy == "full":
        unused = {id(p) for module in net.unused_modules().values() for p in module.parameters()}
        unused.add(id(hf.clip.logit_scale))
        return {id(p) for p in hf.parameters()} - unused
    if strategy == "decoder":
        return {id(p) for p in hf.decoder.parameters()}
    if strategy == "adapter":
        return {id(p) for p in net.adapters.parameters()}
    return {id(p) for name, p in hf.named_parameters() if ".lora_A." in name or ".lora_B." in name}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_each_strategy_trains_exactly_what_it_claims(tiny_folder, strategy):
    net = fresh_net(tiny_folder)
    total_before = sum(p.numel() for p in net.parameters())
    count = apply_strategy(net, strategy)
    claimed = expected_trainable(net, strategy)
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert trainable == claimed
    assert count.trainable == sum(p.numel() for p in net.parameters() if id(p) in claimed)
    assert count.total == sum(p.numel() for p in net.parameters())
    hf = net.hf
    if strategy == "decoder":
        assert count.trainable == sum(p.numel() for p in hf.decoder.parameters()) == 13_305
    elif strategy == "full":
        unused = sum(p.numel() for m in net.unused_modules().values() for p in m.parameters()) + 1
        assert count.trainable == total_before - unused
        assert "clip.vision_model.encoder.layers.3" in net.unused_modules()
    elif strategy == "adapter":
        config = hf.config
        places = sorted(net.adapters)
        assert places == sorted(["conditional", "text", *(f"vision_{i}" for i in net.extract_layers)])
        dims = [config.vision_config.hidden_size] * 3 + [
            config.text_config.hidden_size,
            config.projection_dim,
        ]
        assert count.trainable == sum((d * 64 + 64) + (64 * d + d) for d in dims)
        assert count.total == total_before + count.trainable
    else:  # lora: r * (in + out) for every attention projection the segmentation runs, none in layer 3
        targeted = [m for name, m in hf.named_modules() if hasattr(m, "lora_A")]
        names = [name for name, m in hf.named_modules() if hasattr(m, "lora_A")]
        assert len(targeted) == 4 * (3 + 2 + 3)  # q/k/v/out of 3 used vision, 2 text, 3 decoder layers
        assert not any("vision_model.encoder.layers.3." in n for n in names)
        assert count.trainable == sum(8 * (m.in_features + m.out_features) for m in targeted)
    assert net.cacheable == (strategy in ("decoder", "adapter"))

    # one optimizer step: every claimed parameter gets a gradient and moves, nothing else changes
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    net(net.pixel.normalize(pixels()), net.encode_prompts(PROMPTS)).square().mean().backward()
    params = dict(net.named_parameters())
    assert all(params[n].grad is not None for n in params if id(params[n]) in claimed)
    assert all(params[n].grad is None for n in params if id(params[n]) not in claimed)
    optimizer.step()
    changed = {id(params[n]) for n in params if not torch.equal(params[n].detach(), before[n])}
    assert changed <= claimed and changed


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_fine_tuned_net_saves_and_reloads_with_identical_outputs(tiny_folder, tmp_path, strategy):
    net = fresh_net(tiny_folder, strategy)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        net(net.pixel.normalize(pixels()), net.encode_prompts(PROMPTS)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    net.eval()
    folder = net.save(tmp_path / "saved")
    loaded = CLIPSegNet.load(folder)
    assert loaded.strategy == strategy
    with torch.no_grad():
        images = net.pixel.normalize(pixels(seed=1))
        expected = net(images, net.encode_prompts(PROMPTS))
        actual = loaded(images, loaded.encode_prompts(PROMPTS))
    assert torch.equal(actual, expected)
    if strategy == "lora":  # the PEFT way: adapter files beside an untouched base
        assert (folder / "lora" / "adapter_config.json").is_file()
        assert (folder / "lora" / "adapter_model.safetensors").is_file()
        from safetensors.torch import load_file

        base_keys = load_file(str(folder / "clipseg" / "model.safetensors"))
        assert not any("lora_" in k for k in base_keys)
        original = load_file(str(tiny_folder / "model.safetensors"))
        assert all(torch.equal(base_keys[k], v) for k, v in original.items() if k in base_keys)


def test_missing_weights_say_which_and_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(CLIPSegUnavailableError) as info:
        load_clipseg("example-org/clipseg-not-cached")
    message = str(info.value)
    assert "example-org/clipseg-not-cached" in message
    assert "hf download example-org/clipseg-not-cached" in message and "save_pretrained" in message
    assert isinstance(info.value, TextEncoderUnavailableError)  # the CLI maps it to exit status 2
    with pytest.raises(CLIPSegUnavailableError, match="holds no config.json"):
        load_clipseg(str(tmp_path))


# ----------------------------------------------------------------------------------------------------------
# Slicing real CT
# ----------------------------------------------------------------------------------------------------------


def view_nearest(mask: np.ndarray, size: int) -> np.ndarray:
    """RAS (X, Y) mask -> radiological view (Y, X) -> nearest-neighbour resize to size x size (numpy)."""
    view = mask[::-1, ::-1].T
    rows = np.floor((np.arange(size) + 0.5) * view.shape[0] / size).astype(int)
    cols = np.floor((np.arange(size) + 0.5) * view.shape[1] / size).astype(int)
    return view[rows][:, cols]


def test_slicing_totalseg_gives_masks_that_match_the_label_map(tmp_path):
    folder = shared_path("totalseg")
    ct, seg = folder / "example_ct_sm.nii.gz", folder / "example_seg.nii.gz"
    slicing = SliceConfig(spacing=(3.0, 3.0, 3.0), image_size=64, empty_ratio=0.5)  # the CT's own grid
    cases = [SliceCase(ct, seg, "totalseg", "sm")]
    slice_set = build_slice_set(cases, slicing, tmp_path, progress=False)
    labels = np.asarray(nib.load(seg).dataobj).astype(np.int64)  # RAS, 3 mm: model space is this grid
    assert slice_set.images.shape == (labels.shape[2], 64, 64) and slice_set.images.dtype == np.uint8
    totalseg_ids = {"liver": [5], "spleen": [1], "right_kidney": [2, 24], "aorta": [52], "pancreas": [7]}
    present_pairs = set()
    for class_name, ids in totalseg_ids.items():
        s = slice_set.structures.index(class_name)
        for z in range(labels.shape[2]):
            expected = view_nearest(np.isin(labels[:, :, z], ids), 64)
            rows = np.flatnonzero((slice_set.samples[:, 0] == z) & (slice_set.samples[:, 1] == s))
            if expected.any():  # every present (slice, structure) is a sample with exactly this mask
                assert rows.size == 1 and slice_set.samples[rows[0], 2] == 1
                np.testing.assert_array_equal(slice_set.masks[rows[0]], expected.astype(np.uint8))
                present_pairs.add((z, s))
            elif rows.size:  # an empty sample is empty
                assert not slice_set.masks[rows[0]].any() and slice_set.samples[rows[0], 2] == 0
    assert len(present_pairs) > 40
    n_present = int(slice_set.samples[:, 2].sum())
    empty_pairs = 13 * labels.shape[2] - n_present  # totalseg annotates all 13 FLARE22 organs
    assert int((slice_set.samples[:, 2] == 0).sum()) == min(empty_pairs, round(0.5 * n_present))
    # minmax: each slice spans [0, 255]; the radiological view puts the patient's right on the left
    assert slice_set.images.reshape(labels.shape[2], -1).min(1).max() == 0
    assert slice_set.images.reshape(labels.shape[2], -1).max(1).min() == 255
    metadata = json.loads((slice_set.folder / "metadata.json").read_text())
    assert (
        metadata["cases"][0]["image_sha256"]
        and metadata["prompts"]["inferior_vena_cava"][0] == "inferior vena cava"
    )
    stamp = (slice_set.folder / "images.npy").stat().st_mtime_ns
    again = build_slice_set(cases, slicing, tmp_path, progress=False)  # same config and files: reused
    assert again.folder == slice_set.folder and (again.folder / "images.npy").stat().st_mtime_ns == stamp
    window = build_slice_set(
        cases, SliceConfig(spacing=(3.0,) * 3, image_size=64, intensity="window"), tmp_path
    )
    assert window.folder != slice_set.folder


# ----------------------------------------------------------------------------------------------------------
# Training and the frozen-encoder cache
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["decoder", "adapter"])
def test_cached_and_uncached_loss_trajectories_agree(tiny_folder, phantom_sets, tmp_path, strategy):
    train, val = phantom_sets
    runs = {}
    for cache in ("off", "memory", "disk") if strategy == "decoder" else ("off", "memory"):
        config = run_config(tmp_path, tiny_folder, strategy, cache=cache, synonym_prob=0.5)
        runs[cache] = train_clipseg(config, net=fresh_net(tiny_folder), train_set=train, val_set=val)
    assert not runs["off"].cached and runs["memory"].cached
    reference = np.asarray(runs["off"].losses)
    assert reference.size == 8 and np.all(np.isfinite(reference))
    for cache, result in runs.items():
        assert np.abs(np.asarray(result.losses) - reference).max() <= 1e-4, cache
        assert abs(result.history[-1].val_loss - runs["off"].history[-1].val_loss) <= 1e-4
    assert reference[-1] != reference[0]  # it trained


def test_full_and_lora_refuse_the_cache_and_train(tiny_folder, phantom_sets, tmp_path):
    train, val = phantom_sets
    with pytest.raises(ValueError, match="cannot be cached"):
        train_clipseg(
            run_config(tmp_path, tiny_folder, "full", cache="memory"), fresh_net(tiny_folder), train, val
        )
    result = train_clipseg(run_config(tmp_path, tiny_folder, "lora"), fresh_net(tiny_folder), train, val)
    assert not result.cached and len(result.losses) == 8
    times = result.times
    assert times.steps == 8 and min(times.forward, times.backward, times.optimizer) > 0


def test_early_stopping_checkpoints_and_exact_resume(tiny_folder, phantom_sets, tmp_path):
    train, val = phantom_sets
    config = run_config(tmp_path, tiny_folder, "decoder", epochs=3, checkpoints=True, keep_last=5, lr=5e-2)
    whole = train_clipseg(config, fresh_net(tiny_folder), train, val)
    run_dir = Path(config.run_dir)
    checkpoints = sorted(run_dir.glob("ckpt_*.pt"))
    assert [p.name for p in checkpoints] == ["ckpt_0000004.pt", "ckpt_0000008.pt", "ckpt_0000012.pt"]
    assert (run_dir / "best.pt").is_file() and (run_dir / "metrics.jsonl").is_file()
    resumed_config = run_config(
        tmp_path / "resumed", tiny_folder, "decoder", epochs=3, checkpoints=True, lr=5e-2
    )
    resumed = train_clipseg(resumed_config, fresh_net(tiny_folder), train, val, resume=checkpoints[0])
    np.testing.assert_allclose(resumed.losses, whole.losses, rtol=0, atol=1e-6)
    assert resumed.best_epoch == whole.best_epoch
    stopper = run_config(tmp_path / "stop", tiny_folder, "decoder", epochs=20, patience=1, lr=5.0)
    stopped = train_clipseg(stopper, fresh_net(tiny_folder), train, val)
    assert stopped.stopped_early and len(stopped.history) < 20
    assert len(stopped.history) == stopped.best_epoch + 2  # patience 1: one epoch without improvement


def test_clipseg_checkpoints_say_best_metric_is_a_loss_and_old_ones_resume(
    tiny_folder, phantom_sets, tmp_path
):
    train, val = phantom_sets
    config = run_config(tmp_path, tiny_folder, "decoder", epochs=2, checkpoints=True, keep_last=5)
    whole = train_clipseg(config, fresh_net(tiny_folder), train, val)
    first = load_checkpoint(Path(config.run_dir) / "ckpt_0000004.pt")
    assert (first["best_metric_name"], first["best_metric_mode"], first["kind"]) == (
        "val_loss",
        "min",
        "clipseg",
    )
    assert first["best_metric"] == pytest.approx(whole.history[0].val_loss)
    old = {k: v for k, v in first.items() if k not in ("best_metric_name", "best_metric_mode")}
    torch.save(old, tmp_path / "old.pt")  # written before checkpoints said what best_metric is
    resumed_config = run_config(tmp_path / "resumed", tiny_folder, "decoder", epochs=2, checkpoints=True)
    resumed = train_clipseg(resumed_config, fresh_net(tiny_folder), train, val, resume=tmp_path / "old.pt")
    np.testing.assert_allclose(resumed.losses, whole.losses, rtol=0, atol=1e-6)
    assert resumed.best_epoch == whole.best_epoch


@pytest.mark.slow
def test_torchrun_two_ranks_follow_the_single_process_losses(tiny_folder, phantom_sets, tmp_path):
    """DDP (gloo, 2 ranks, half the batch each) reproduces the one-process loss trajectory."""
    train, val = phantom_sets
    lists = {}
    for name, slice_set in (("train", train), ("val", val)):
        lines = [f"{c['image']}\t{c['label']}" for c in slice_set.cases]
        lists[name] = tmp_path / f"{name}.txt"
        lists[name].write_text("\n".join(lines) + "\n")
    config = {
        "model": str(tiny_folder),
        "strategy": "decoder",
        "epochs": 2,
        "batch_size": 8,
        "max_steps_per_epoch": 4,
        "threads": 1,
        "tensorboard": False,
        "progress": False,
        "slicing": {"structures": PHANTOM_STRUCTURES, "spacing": [5.0, 5.0, 5.0], "image_size": 64},
        "data": {
            "train_lists": [str(lists["train"])],
            "val_lists": [str(lists["val"])],
            "default_dataset": "phantom",
            "slices_dir": str(tmp_path / "slices"),
        },
    }
    (tmp_path / "config.yaml").write_text(json.dumps(config))
    script = REPO_ROOT / "Training" / "train_clipseg.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    losses = {}
    for name, launcher in (
        ("single", [sys.executable, str(script)]),
        (
            "ddp",
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node=2",
                str(script),
            ],
        ),
    ):
        run_dir = tmp_path / name
        command = [*launcher, "--config", str(tmp_path / "config.yaml"), f"--run_dir={run_dir}"]
        subprocess.run(command, check=True, env=env, timeout=240, capture_output=True)
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        losses[name] = [json.loads(line)["loss"] for line in lines if '"event"' not in line]
        assert (run_dir / "bundle" / "config.json").is_file()
    assert len(losses["ddp"]) == len(losses["single"]) == 8
    np.testing.assert_allclose(losses["ddp"], losses["single"], rtol=0, atol=1e-4)


def test_example_configs_load_and_reject_unknown_keys(tmp_path):
    configs = sorted((REPO_ROOT / "Training" / "configs" / "clipseg").glob("*.yaml"))
    assert configs
    for path in configs:
        config = load_clipseg_config(path)
        assert config.strategy in STRATEGIES and config.lr == 1e-3 and config.patience == 3
    with pytest.raises(ConfigError, match="unknown config key 'slicing.image_sise'"):
        load_clipseg_config(None, ["--slicing.image_sise=96"])
    with pytest.raises(ConfigError, match="strategy must be one of"):
        load_clipseg_config(None, ["--strategy=everything"])


# ----------------------------------------------------------------------------------------------------------
# The 2D->3D engine and CLIPSeg bundles
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clipseg_bundle(tiny_folder, tmp_path_factory) -> Path:
    """An adapter-strategy bundle at 3 mm (the shared CT's own grid), minmax intensity."""
    net = fresh_net(tiny_folder, "adapter")
    slicing = SliceConfig(spacing=(3.0, 3.0, 3.0), image_size=64)
    return save_clipseg_bundle(tmp_path_factory.mktemp("clipseg_bundle") / "bundle", net, slicing)


def test_engine_label_map_lies_on_the_input_grid(clipseg_bundle):
    volume = load_volume(shared_path("totalseg", "example_ct_sm.nii.gz"))
    bundle = load_bundle(clipseg_bundle)
    assert bundle.config.model.architecture == "clipseg" and bundle.model.predicts_volume
    result = Segmenter(bundle, device="cpu", progress=False, probabilities=True).segment(
        volume, "liver and both kidneys"
    )
    assert result.labels.shape == volume.shape and result.labels.dtype == np.uint8
    assert set(np.unique(result.labels)) <= {0, 1, 2, 3}
    assert result.probabilities.shape == (3, *volume.shape)
    assert [s.class_name for s in result.segments] == ["liver", "right_kidney", "left_kidney"]


def test_engine_sees_exactly_the_training_slices(clipseg_bundle, tmp_path):
    """On the slice set's grid, the engine's logits are the slice predictions resized back, bit for bit."""
    folder = shared_path("totalseg")
    bundle = load_bundle(clipseg_bundle)
    net = bundle.model.net
    slicing = SliceConfig(spacing=(3.0, 3.0, 3.0), image_size=64)
    slice_set = build_slice_set(
        [SliceCase(folder / "example_ct_sm.nii.gz", folder / "example_seg.nii.gz", "totalseg", "sm")],
        slicing,
        tmp_path,
        progress=False,
    )
    segmenter = Segmenter(bundle, device="cpu", progress=False)
    volume = load_volume(folder / "example_ct_sm.nii.gz")
    prepared = segmenter.prepare(volume)
    text = bundle.cache.get(["liver", "spleen"])
    with torch.inference_mode():
        engine = segmenter.predict_logits(prepared.image, text[None], None)  # (1, 2, X, Y, Z)
        slices = net.predict_slices(torch.from_numpy(np.array(slice_set.images)), text)  # (Z, 2, S, S)
    x, y, z = volume.shape
    assert engine.shape == (1, 2, x, y, z)
    expected = slice_back(slices, (x, y)).permute(1, 2, 3, 0)[None]
    torch.testing.assert_close(engine, expected, rtol=0, atol=1e-5)


def test_cli_segment_with_a_clipseg_bundle(clipseg_bundle, tmp_path, capsys):
    ct = shared_path("totalseg", "example_ct_sm.nii.gz")
    output = tmp_path / "seg.nii.gz"
    status = cli_main(
        ["segment", str(ct), "-p", "spleen", "-b", str(clipseg_bundle), "-o", str(output), "--device", "cpu"]
        + ["--no-progress"]
    )
    assert status == 0
    written = nib.load(output)
    assert written.shape == nib.load(ct).shape
    np.testing.assert_allclose(written.affine, nib.load(ct).affine)
    sidecar = json.loads(output.with_name("seg.json").read_text())
    assert sidecar["segments"][0]["class_name"] == "spleen" and sidecar["segments"][0]["prompt"] == "spleen"
    assert cli_main(["info", str(clipseg_bundle)]) == 0
    assert "clipseg" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------------------


def report(strategy: str, wall: float, steps: int, step: dict[str, float], **changes) -> StrategyReport:
    values = {
        "strategy": strategy,
        "trainable": 1000,
        "total": 10_000,
        "trainable_tensors": 10,
        "epochs": steps // 10,
        "best_epoch": steps // 10 - 1,
        "stopped_early": False,
        "steps": steps,
        "train_dice": 0.7,
        "val_dice": 0.6,
        "val_dice_3d": 0.5,
        "dice_3d": [],
        "wall_seconds": wall,
        "cache_seconds": 0.0,
        "step_seconds": {**step, "step": sum(step.values())},
        "samples_per_s": 1.0,
        "peak_memory_mib": 1.0,
        "memory_kind": "cpu_rss",
        "cached": False,
    }
    values.update(changes)
    return StrategyReport(**values)


def test_slice_loss_per_sample_matches_the_batch_loss_and_monai():
    from monai.losses import DiceLoss

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 16, 16, generator=generator)
    target = (torch.rand(5, 16, 16, generator=generator) > 0.6).float()
    criterion = SliceLoss(dice_weight=0.5)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = bce(logits, target) + 0.5 * DiceLoss(sigmoid=True)(logits[:, None], target[:, None])
    assert criterion(logits, target).item() == pytest.approx(expected.item(), abs=1e-7)
    per_sample = criterion.per_sample(logits, target)
    one_by_one = [criterion(logits[i : i + 1], target[i : i + 1]) for i in range(5)]
    assert per_sample.shape == (5,)
    assert torch.allclose(per_sample, torch.stack(one_by_one), atol=1e-6, rtol=0)
    assert per_sample.mean().item() == pytest.approx(expected.item(), abs=1e-6)


def test_explanation_is_computed_from_the_measured_split():
    # full stops early after 3 epochs; decoder's steps are cheaper but it runs 5 epochs
    full = report("full", 16.0, 30, {"data": 0.0, "forward": 0.2, "backward": 0.25, "optimizer": 0.05})
    full.stopped_early = True
    decoder = report(
        "decoder", 20.0, 50, {"data": 0.0, "forward": 0.3, "backward": 0.05, "optimizer": 0.01}, cached=False
    )
    text = explain([decoder, full])
    assert text.startswith("**full is the fastest: 16.00 s** = 30 steps x 0.5000 s")
    assert "+10.00 s from running 50 steps instead of 30" in text  # 20 extra steps x 0.5 s
    assert "-7.00 s from its steps being 0.72x as long" in text  # 50 x (0.36 - 0.5)
    # with the same step counts, the slower strategy's largest per-step part is named with its reason
    cached = report(
        "decoder", 3.0, 10, {"data": 0.01, "forward": 0.05, "backward": 0.1, "optimizer": 0.04}, cached=True
    )
    lora = report("lora", 9.0, 10, {"data": 0.01, "forward": 0.45, "backward": 0.2, "optimizer": 0.04})
    text = explain([lora, cached])
    assert "**decoder is the fastest" in text
    assert (
        "+4.00 s in the forward pass" in text
    )  # 10 x (0.45 - 0.05) and "reads CLIP's activations from the cache" in text


def test_clipseg_bench_runs_end_to_end_on_real_ct_slices(tmp_path, capsys):
    folder = shared_path("totalseg")
    train = f"{folder / 'example_ct.nii.gz'},{folder / 'example_seg_fast_force_split.nii.gz'},0:97"
    val = f"{folder / 'example_ct_sm.nii.gz'},{folder / 'example_seg.nii.gz'},15:30"
    out = tmp_path / "bench"
    argv = ["--log-level", "WARNING", "clipseg-bench", "--tiny", "--output", str(out), "--volumes", train]
    argv += ["--val-volumes", val, "--spacing", "3", "3", "3", "--epochs", "2", "--max-steps-per-epoch", "3"]
    argv += ["--batch-size", "8", "--device", "cpu", "--no-progress", "--override", "threads=1"]
    assert cli_main(argv) == 0
    assert (out / "report.md").is_file() and (out / "dice_vs_time.png").stat().st_size > 1000
    results = json.loads((out / "results.json").read_text())
    names = [r["strategy"] for r in results["strategies"]]
    assert names == ["full", "decoder", "adapter", "lora"]
    for row in results["strategies"]:
        split = row["step_seconds"]
        assert row["steps"] == 6 and split["step"] == pytest.approx(
            split["data"] + split["forward"] + split["backward"] + split["optimizer"]
        )
        assert 0.0 <= row["val_dice"] <= 1.0 and 0.0 <= row["val_dice_3d"] <= 1.0
        assert len(row["dice_3d"]) == 13 and row["peak_memory_mib"] > 0
    assert [r["cached"] for r in results["strategies"]] == [False, True, True, False]
    fastest = min(results["strategies"], key=lambda r: r["wall_seconds"])["strategy"]
    text = (out / "report.md").read_text()
    assert f"**{fastest} is the fastest" in text and "| strategy | trainable / total params" in text
    assert "wrote" in capsys.readouterr().out
