"""The training loop: exact resume, interruption, checkpoint layout, output-directory rules."""

from __future__ import annotations

import itertools
import json
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lpla.data.base import ArrayDataset
from lpla.errors import LplaError
from lpla.ssl.checkpoint import load_encoder
from lpla.ssl.config import TrainConfig, builtin_configs
from lpla.ssl.train import (
    TrainingInterrupted,
    epoch_permutation,
    learning_rate,
    shard_batch,
    train_encoder,
)


@pytest.fixture(scope="module")
def blobs() -> ArrayDataset:
    """256 learnable 1x12x12 images (a bright quadrant per class) standing in for a dataset."""
    g = np.random.default_rng(0)
    labels = np.arange(256) % 4
    imgs = g.integers(0, 60, size=(256, 1, 12, 12))
    for i, y in enumerate(labels):
        r, c = divmod(int(y), 2)
        imgs[i, 0, r * 6 : r * 6 + 6, c * 6 : c * 6 + 6] += 150
    return ArrayDataset(imgs.astype(np.uint8), labels, name="blobs", split="train", num_classes=4)


def _cfg(tmp_path: Path, name: str = "enc", **kw: Any) -> TrainConfig:
    settings: dict[str, Any] = dict(
        out=str(tmp_path / name),
        dataset="fashion-mnist",
        framework="simclr",
        backbone="cnn-small",
        members=32,
        epochs=4,
        seed=0,
        batch_size=16,
        progress=False,
        utility=False,
        checkpoint_every=1,
        warmup_epochs=1.0,
    )
    settings.update(kw)
    return TrainConfig(**settings)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _interrupt_at(step_to_stop: int, signum: int = signal.SIGINT):
    def on_step(step: int, loss: float) -> None:
        if step == step_to_stop:
            os.kill(os.getpid(), signum)

    return on_step


def _assert_same_run(a: Path, b: Path) -> None:
    wa, wb = _tensors(a / "model.safetensors"), _tensors(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    sa, sb = _tensors(a / "train_state.safetensors"), _tensors(b / "train_state.safetensors")
    for key in (k for k in sa if k.startswith(("optim.", "buffer."))):
        assert torch.equal(sa[key], sb[key]), key
    ma, mb = (json.loads((d / "checkpoint.json").read_text()) for d in (a, b))
    assert ma["loss_curve"] == mb["loss_curve"] and ma["step"] == mb["step"]


@pytest.mark.parametrize("framework", ["simclr", "moco-v2", "byol", "dino"])
def test_two_plus_two_epochs_equal_four_bit_for_bit(tmp_path, blobs, framework) -> None:
    full = train_encoder(_cfg(tmp_path, "full", framework=framework), dataset=blobs)
    cfg = _cfg(tmp_path, "split", framework=framework)
    with pytest.raises(TrainingInterrupted, match=r"SIGINT received.*--resume") as err:
        train_encoder(cfg, dataset=blobs, on_step=_interrupt_at(3))  # 2 steps/epoch: end of ep. 2
    assert err.value.exit_code == 130
    meta = json.loads((tmp_path / "split" / "checkpoint.json").read_text())
    assert (meta["epoch"], meta["step"], meta["finished"]) == (2, 4, False)
    resumed = train_encoder(cfg.replace(resume=True), dataset=blobs)
    _assert_same_run(full, resumed)


def test_interrupted_mid_epoch_resumes_exactly(tmp_path, blobs) -> None:
    full = train_encoder(_cfg(tmp_path, "full", batch_size=8), dataset=blobs)
    cfg = _cfg(tmp_path, "split", batch_size=8)  # 4 steps per epoch; stop inside epoch 2
    with pytest.raises(TrainingInterrupted):
        train_encoder(cfg, dataset=blobs, on_step=_interrupt_at(5))
    assert json.loads((tmp_path / "split" / "checkpoint.json").read_text())["step"] == 6
    _assert_same_run(full, train_encoder(cfg.replace(resume=True), dataset=blobs))
    # and a different seed gives different weights (the comparison can fail)
    other = train_encoder(_cfg(tmp_path, "other", batch_size=8, seed=1), dataset=blobs)
    w_full, w_other = _tensors(full / "model.safetensors"), _tensors(other / "model.safetensors")
    assert not torch.equal(w_full["backbone.body.0.weight"], w_other["backbone.body.0.weight"])


def test_checkpoint_layout_is_self_describing(tmp_path, blobs) -> None:
    from lpla.data.splits import MembershipSplit

    out = train_encoder(_cfg(tmp_path, augmentation="weak", crop_scale_min=0.9), dataset=blobs)
    assert {p.name for p in out.iterdir()} >= {
        "model.safetensors",
        "train_state.safetensors",
        "checkpoint.json",
        "split.json",
    }
    assert not list(out.glob("*.tmp*"))  # atomic writes leave no temporaries
    meta = json.loads((out / "checkpoint.json").read_text())
    split = MembershipSplit.load(out / "split.json")
    assert meta["split_fingerprint"] == split.fingerprint()
    assert meta["config"]["members"] == 32 and meta["num_members"] == 32
    assert meta["feature_dim"] == 128 and meta["image_shape"] == [1, 12, 12]
    assert meta["augmentation"] == "weak"
    assert meta["augmentation_params"]["views"][0]["crop_scale"] == [0.9, 1.0]
    assert meta["framework_params"]["temperature"] == 0.5 and meta["finished"] is True
    assert len(meta["loss_curve"]) == 4 and torch.__version__.startswith(meta["versions"]["torch"])
    with safe_open(str(out / "train_state.safetensors"), "pt") as fh:
        assert fh.get_tensor("rng.torch").dtype == torch.uint8
        assert json.loads(fh.metadata()["counters"])["step"] == 8
    encoder, _ = load_encoder(out)
    assert encoder(torch.rand(2, 1, 12, 12)).shape == (2, 128)


def test_members_are_the_split_roles(tmp_path, blobs) -> None:
    from lpla.data.splits import MembershipSplit, PairedHalves

    target = train_encoder(_cfg(tmp_path, "t", epochs=1), dataset=blobs)
    shadow = train_encoder(_cfg(tmp_path, "s", epochs=1, role="shadow"), dataset=blobs)
    m_t = json.loads((target / "checkpoint.json").read_text())
    m_s = json.loads((shadow / "checkpoint.json").read_text())
    assert m_t["split_fingerprint"] == m_s["split_fingerprint"]  # same split, other role
    assert m_t["train_seed"] != m_s["train_seed"]  # and its own initialisation
    paired = train_encoder(
        _cfg(tmp_path, "p", epochs=1, role="shadow", shadow_index=1, num_shadows=4), dataset=blobs
    )
    halves = PairedHalves.load(paired / "paired_halves.npz")
    split = MembershipSplit.load(paired / "split.json")
    assert set(halves.index.tolist()) == set(split.population().tolist())
    assert (halves.membership.sum(0) == 2).all()  # every candidate is in 2 of the 4 shadows
    n_members = len(halves.members_of(1))
    assert json.loads((paired / "checkpoint.json").read_text())["num_members"] == n_members


def test_out_dir_rules(tmp_path, blobs) -> None:
    cfg = _cfg(tmp_path, epochs=2)
    out = train_encoder(cfg, dataset=blobs)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert train_encoder(cfg, dataset=blobs) == out  # finished, same settings: reused
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(LplaError, match=r"other settings: lr=0\.001 \(now 0\.01\)"):
        train_encoder(cfg.replace(lr=0.01), dataset=blobs)
    unfinished = _cfg(tmp_path, "u", epochs=3)
    with pytest.raises(TrainingInterrupted, match=r"SIGTERM") as err:
        train_encoder(unfinished, dataset=blobs, on_step=_interrupt_at(0, signal.SIGTERM))
    assert err.value.exit_code == 143 and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    with pytest.raises(LplaError, match=r"unfinished run.*--resume"):
        train_encoder(unfinished, dataset=blobs)
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(LplaError, match=r"not a complete lpla checkpoint"):
        train_encoder(_cfg(tmp_path, "bare"), dataset=blobs)


def test_config_validation_and_files(tmp_path) -> None:
    with pytest.raises(LplaError, match=r"epochs must be >= 1"):
        TrainConfig(epochs=0)
    with pytest.raises(LplaError, match=r"unknown optimizer 'lars'"):
        TrainConfig(optimizer="lars")
    with pytest.raises(LplaError, match=r"together"):
        TrainConfig(shadow_index=0)
    with pytest.raises(LplaError, match=r"unknown setting\(s\) epoch;"):
        TrainConfig.from_dict({"epoch": 3})
    cfg = TrainConfig(members=100, framework_params={"output_dim": 64})
    for name in ("c.yaml", "c.json"):
        cfg.save(tmp_path / name)
        assert TrainConfig.load(tmp_path / name) == cfg
    shipped = builtin_configs()
    assert "cifar10-resnet18-simclr-gpu" in shipped and "cpu-default" in shipped
    for path in shipped.values():
        TrainConfig.load(path)  # every shipped config is valid


def test_schedule_permutation_and_sharding() -> None:
    cfg = TrainConfig(lr=1.0, epochs=10)
    lrs = [learning_rate(cfg, s, 100, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[55] == pytest.approx(0.5)
    assert lrs[99] < 0.001 and all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert torch.equal(epoch_permutation(50, 0, 3), epoch_permutation(50, 0, 3))
    assert not torch.equal(epoch_permutation(50, 0, 3), epoch_permutation(50, 0, 4))
    batch = torch.arange(8)
    parts = [shard_batch(batch, r, 2) for r in range(2)]
    assert sorted(torch.cat(parts).tolist()) == list(range(8)) and len(parts[0]) == 4


def test_a_short_real_run_learns(tmp_path) -> None:
    """256 Fashion-MNIST members, 8 epochs (~5 s): loss falls, views of an image align, and the
    linear probe beats both chance and the same network before training."""
    import torch.nn.functional as F

    from lpla.data.registry import create_dataset
    from lpla.ssl.augment import create_augmentation
    from lpla.ssl.checkpoint import build_model
    from lpla.utility import evaluate_utility

    cfg = _cfg(
        tmp_path,
        members=256,
        epochs=8,
        batch_size=128,
        lr=2e-3,
        warmup_epochs=0.0,
        checkpoint_every=0,
    )
    out = train_encoder(cfg)
    meta = json.loads((out / "checkpoint.json").read_text())
    curve = meta["loss_curve"]
    assert curve[-1] < curve[0] - 0.3
    trained, _ = load_encoder(out)
    torch.manual_seed(0)
    untrained = build_model(meta).backbone.eval()
    train_ds, test_ds = create_dataset("fashion-mnist"), create_dataset("fashion-mnist", "test")
    x = train_ds.get_images(np.arange(256)).float() / 255
    aug = create_augmentation("simclr", (1, 28, 28))

    def alignment_gap(encoder: torch.nn.Module) -> float:
        """Mean cosine of two views of one image minus that of views of different images."""
        torch.manual_seed(1)
        with torch.no_grad():
            a, b = (F.normalize(encoder(aug(x)), dim=1) for _ in range(2))
        sims = a @ b.T
        off_diagonal = (sims.sum() - sims.diag().sum()) / (256 * 255)
        return float(sims.diag().mean() - off_diagonal)

    assert alignment_gap(trained) > alignment_gap(untrained) + 0.05
    kwargs = dict(train_limit=2000, test_limit=1000, pixel_baseline=False)
    after = evaluate_utility(trained, train_ds, test_ds, **kwargs)
    before = evaluate_utility(untrained, train_ds, test_ds, **kwargs)
    assert after["linear_probe_acc"] > 0.6 and after["chance"] == 0.1
    assert after["linear_probe_acc"] > before["linear_probe_acc"]
