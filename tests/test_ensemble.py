"""train_ensemble: M encoders trained as one batched model give each member its solo run.

Tolerance. The batched step is not bit-for-bit the solo step: vmapped matmuls (bmm instead of
mm) and the fused optimizer add in another order, so weights differ by float rounding. With SGD,
or with Adam on cnn-small, that stays at rounding size: ``ATOL = 1e-5`` on every tensor
(measured <= 4e-7) and loss curves within a relative 1e-5 (1e-6 absolute near 0, SimSiam's).
With Adam on the mlp, Adam turns rounding into steps of size ~lr in parameters whose exact
gradient is 0 (the bias of the last backbone layer feeds a BatchNorm, which removes it): there
any two correct runs differ, and ``train_encoder`` itself moves those weights by 5.7e-3 when run
with 2 threads instead of 1, so that case is checked at ``ADAM_MLP_ATOL = 1e-2`` with the loss
curve still within 1e-5.
Barlow Twins' gradients (a loss ~1e3 summed over a 1024 x 1024 cross-correlation) carry more
rounding: ``train_encoder`` with 2 threads instead of 1 moves its SGD momentum buffers by up to
9.7e-4 absolute and 8e-4 relative, so its check is ``BARLOW_ATOL = 1e-3``, absolute and relative.
"""

from __future__ import annotations

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
from lpla.data.splits import make_split
from lpla.errors import LplaError
from lpla.ssl.checkpoint import Checkpoint, load_encoder
from lpla.ssl.config import TrainConfig
from lpla.ssl.ensemble import _Members, train_ensemble
from lpla.ssl.train import TrainingInterrupted, train_encoder

ATOL = 1e-5
ADAM_MLP_ATOL = 1e-2
BARLOW_ATOL = 1e-3
LOSS_RTOL = 1e-5
RTOL = 1e-5  # relative part, for large values (Barlow Twins' momentum buffers ~1e2)
#: checkpoint.json keys that say how, where or how fast a run was made, not what it learnt
RUN_KEYS = {"config", "elapsed_s", "loss_curve", "ensemble"}


@pytest.fixture(scope="module")
def blobs() -> ArrayDataset:
    """256 learnable 1x12x12 images (a bright quadrant per class), as in test_train.py."""
    g = np.random.default_rng(0)
    labels = np.arange(256) % 4
    imgs = g.integers(0, 60, size=(256, 1, 12, 12))
    for i, y in enumerate(labels):
        r, c = divmod(int(y), 2)
        imgs[i, 0, r * 6 : r * 6 + 6, c * 6 : c * 6 + 6] += 150
    return ArrayDataset(imgs.astype(np.uint8), labels, name="blobs", split="train", num_classes=4)


def _cfg(root: Path, name: str, **kw: Any) -> TrainConfig:
    settings: dict[str, Any] = dict(
        out=str(root / name),
        dataset="fashion-mnist",
        framework="simclr",
        backbone="mlp",
        members=32,
        epochs=4,
        seed=0,
        batch_size=16,  # 2 steps per epoch
        progress=False,
        utility=False,
        checkpoint_every=1,
        warmup_epochs=1.0,
        device="cpu",
    )
    settings.update(kw)
    return TrainConfig(**settings)


#: three members with their own seeds, members and roles (target seed 0, 1; shadow seed 0)
MEMBERS: list[dict[str, Any]] = [{"seed": 0}, {"seed": 1}, {"seed": 0, "role": "shadow"}]


def _ensemble_and_solos(
    root: Path, data: ArrayDataset, **recipe: Any
) -> tuple[list[Path], list[Path]]:
    cfgs = [_cfg(root, f"member{i}", **recipe, **who) for i, who in enumerate(MEMBERS)]
    batched = train_ensemble(cfgs, dataset=data, log=pytest.fail, batched=True)
    solos = [
        train_encoder(c.replace(out=str(root / f"solo{i}")), dataset=data)
        for i, c in enumerate(cfgs)
    ]
    return batched, solos


def _meta(path: Path) -> dict[str, Any]:
    return json.loads((path / "checkpoint.json").read_text())


@pytest.fixture(scope="module")
def runs(blobs, tmp_path_factory) -> tuple[list[Path], list[Path]]:
    """cnn-small + SGD (momentum, weight decay): one ensemble of 3 and the 3 solo runs."""
    root = tmp_path_factory.mktemp("ensemble")
    return _ensemble_and_solos(
        root, blobs, backbone="cnn-small", optimizer="sgd", lr=0.05, weight_decay=1e-4
    )


def _assert_close(
    mine: dict[str, torch.Tensor], solo: dict[str, torch.Tensor], atol: float, rtol: float
) -> None:
    assert mine.keys() == solo.keys()
    for key in mine:
        torch.testing.assert_close(
            mine[key].double(),
            solo[key].double(),
            atol=atol,
            rtol=rtol,
            msg=lambda m, key=key: f"{key}: {m}",
        )


def _assert_same_run(batched: Path, solo: Path, atol: float, rtol: float = RTOL) -> None:
    """The same files, the same description, weights and optimizer state within tolerance."""
    assert sorted(p.name for p in batched.iterdir()) == sorted(p.name for p in solo.iterdir())
    _assert_close(
        load_file(str(batched / "model.safetensors")),
        load_file(str(solo / "model.safetensors")),
        atol,
        rtol,
    )
    sb, ss = (
        load_file(str(batched / "train_state.safetensors")),
        load_file(str(solo / "train_state.safetensors")),
    )
    rng = [k for k in sb if k.startswith("rng.")]
    assert rng and all(torch.equal(sb[k], ss[k]) for k in rng)  # the solo run's RNG states
    _assert_close(
        {k: v for k, v in sb.items() if k not in rng},
        {k: v for k, v in ss.items() if k not in rng},
        atol,
        rtol,
    )
    with (
        safe_open(str(batched / "train_state.safetensors"), "pt") as fb,
        safe_open(str(solo / "train_state.safetensors"), "pt") as fs,
    ):
        mb, ms = fb.metadata(), fs.metadata()
        assert {k: v for k, v in mb.items() if k != "counters"} == {
            k: v for k, v in ms.items() if k != "counters"
        }
    mb_, ms_ = _meta(batched), _meta(solo)
    assert set(mb_) == set(ms_) | {"ensemble"}
    assert {k: v for k, v in mb_.items() if k not in RUN_KEYS} == {
        k: v for k, v in ms_.items() if k not in RUN_KEYS
    }
    assert {k: v for k, v in mb_["config"].items() if k != "out"} == {
        k: v for k, v in ms_["config"].items() if k != "out"
    }
    np.testing.assert_allclose(mb_["loss_curve"], ms_["loss_curve"], rtol=LOSS_RTOL, atol=1e-6)
    assert (batched / "split.json").read_bytes() == (solo / "split.json").read_bytes()


def test_every_member_is_its_solo_run(runs) -> None:
    batched, solos = runs
    for i, (b, s) in enumerate(zip(batched, solos, strict=True)):
        _assert_same_run(b, s, ATOL)
        assert _meta(b)["ensemble"] == {"size": 3, "position": i}
        ckpt = Checkpoint.open(b)  # the pipeline's view: a finished run of this config
        assert ckpt.finished_with(ckpt.config(), ckpt.split().fingerprint())
        encoder, _ = load_encoder(b)
        assert encoder(torch.rand(2, 1, 12, 12)).shape == (2, 128)


@pytest.mark.parametrize(
    ("backbone", "optimizer", "atol"),
    [("mlp", "sgd", ATOL), ("cnn-small", "adam", ATOL), ("mlp", "adam", ADAM_MLP_ATOL)],
)
def test_members_match_solo_runs_across_backbones_and_optimizers(
    tmp_path, blobs, backbone, optimizer, atol
) -> None:
    lr = 0.05 if optimizer == "sgd" else 1e-3
    batched, solos = _ensemble_and_solos(
        tmp_path, blobs, backbone=backbone, optimizer=optimizer, lr=lr
    )
    for b, s in zip(batched, solos, strict=True):
        _assert_same_run(b, s, atol)


@pytest.mark.parametrize(
    ("framework", "lr", "atol"),
    [("simsiam", 0.05, ATOL), ("barlow-twins", 1e-4, BARLOW_ATOL), ("vicreg", 5e-3, ATOL)],
)
def test_other_batched_frameworks_match_solo_runs(tmp_path, blobs, framework, lr, atol) -> None:
    """SGD, at a rate for each loss's scale (Barlow Twins' is ~1e3): Adam would turn rounding
    into lr-sized steps of the biases their batch-standardised losses give a zero gradient."""
    cfgs = [
        _cfg(
            tmp_path,
            f"m{i}",
            framework=framework,
            backbone="cnn-small",
            epochs=2,
            optimizer="sgd",
            lr=lr,
            **who,
        )
        for i, who in enumerate(MEMBERS[:2])
    ]
    batched = train_ensemble(cfgs, dataset=blobs, log=pytest.fail, batched=True)
    for i, (b, c) in enumerate(zip(batched, cfgs, strict=True)):
        _assert_same_run(
            b,
            train_encoder(c.replace(out=str(tmp_path / f"s{i}")), dataset=blobs),
            atol,
            rtol=max(atol, RTOL),
        )


def test_members_really_differ(runs) -> None:
    """Own members, seed, initialisation, batches and views: no two members learn the same."""
    batched, _ = runs
    metas = [_meta(p) for p in batched]
    weights = [load_file(str(p / "model.safetensors"))["backbone.body.0.weight"] for p in batched]
    members = [
        Checkpoint(p).split().indices(m["role"] + "_member")
        for p, m in zip(batched, metas, strict=True)
    ]
    assert len({m["train_seed"] for m in metas}) == 3
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.allclose(weights[i], weights[j], atol=1e-3)
            assert metas[i]["loss_curve"] != metas[j]["loss_curve"]
            assert set(members[i].tolist()) != set(members[j].tolist())


def test_batchnorm_running_stats_are_per_member(runs) -> None:
    """In-place BatchNorm updates land in each member's slice under vmap: equal to the solo run's,
    counted once per view and step, and different between members."""
    batched, solos = runs
    stats = [load_file(str(p / "model.safetensors")) for p in batched]
    solo_stats = [load_file(str(p / "model.safetensors")) for p in solos]
    bn = [k.removesuffix(".running_mean") for k in stats[0] if k.endswith(".running_mean")]
    assert len(bn) == 5  # 3 in cnn-small, 2 in the projection head
    for mine, solo in zip(stats, solo_stats, strict=True):
        for layer in bn:
            assert int(mine[f"{layer}.num_batches_tracked"]) == 4 * 2 * 2  # epochs x steps x views
            for stat in ("running_mean", "running_var"):
                torch.testing.assert_close(
                    mine[f"{layer}.{stat}"], solo[f"{layer}.{stat}"], atol=ATOL, rtol=0
                )
            assert mine[f"{layer}.running_mean"].abs().max() > 1e-3  # moved from its init (0)
    for layer in bn:
        assert not torch.allclose(
            stats[0][f"{layer}.running_var"], stats[1][f"{layer}.running_var"]
        )


def test_one_vmapped_forward_updates_each_members_buffers() -> None:
    from lpla.ssl.backbones import create_backbone
    from lpla.ssl.frameworks import create_framework

    def build(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return create_framework("simclr", create_backbone("cnn-small", 1, 12))

    members = _Members([build(0), build(1)])
    solos = [build(0), build(1)]
    torch.manual_seed(2)
    views = (torch.rand(2, 8, 1, 12, 12), torch.rand(2, 8, 1, 12, 12))
    losses = members.losses(views)
    for m, solo in enumerate(solos):
        torch.testing.assert_close(losses[m], solo([views[0][m], views[1][m]]), atol=1e-6, rtol=0)
        for name, buffer in solo.named_buffers():
            if name.endswith(("running_mean", "num_batches_tracked")):
                torch.testing.assert_close(members.buffers[name][m], buffer, atol=1e-6, rtol=0)
    assert int(members.buffers["backbone.body.1.num_batches_tracked"][1]) == 2


def test_paired_halves_shadows(tmp_path, blobs) -> None:
    """Shadows 2 and 5 of 6 (67 members each: paired halves balance images, not shadows)."""
    cfgs = [
        _cfg(
            tmp_path,
            f"p{i}",
            role="shadow",
            shadow_index=i,
            num_shadows=6,
            epochs=2,
            optimizer="sgd",
            lr=0.05,
        )
        for i in (2, 5)
    ]
    batched = train_ensemble(cfgs, dataset=blobs)
    for i, (b, c) in enumerate(zip(batched, cfgs, strict=True)):
        solo = train_encoder(c.replace(out=str(tmp_path / f"s{i}")), dataset=blobs)
        _assert_same_run(b, solo, ATOL)
        assert (b / "paired_halves.npz").read_bytes() == (solo / "paired_halves.npz").read_bytes()
    halves = Checkpoint(batched[0]).paired_halves()
    assert len(halves.members_of(2)) == len(halves.members_of(5)) == 67
    assert set(halves.members_of(2).tolist()) != set(halves.members_of(5).tolist())


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"lr": 0.01}, "'lr'"),
        ({"epochs": 3}, "'epochs'"),
        ({"backbone": "cnn-small"}, "'backbone'"),
        ({"framework_params": {"output_dim": 64}}, "'framework_params'"),
        ({"utility": True}, "'utility'"),
    ],
)
def test_mismatched_recipes_raise(tmp_path, blobs, change, field) -> None:
    cfgs = [_cfg(tmp_path, "a"), _cfg(tmp_path, "b", seed=1, **change)]
    with pytest.raises(
        LplaError,
        match=rf"{field} is .* only num_shadows, out, role, seed, shadow_index, split may differ",
    ):
        train_ensemble(cfgs, dataset=blobs)
    assert not (tmp_path / "a").exists()  # refused before anything is written


def test_different_member_counts_or_one_out_raise(tmp_path, blobs) -> None:
    fewer = make_split("fashion-mnist", len(blobs), members=32, seed=0, shadow_members=24)
    fewer.save(tmp_path / "fewer.json")
    cfgs = [
        _cfg(tmp_path, "a"),
        _cfg(tmp_path, "b", role="shadow", split=str(tmp_path / "fewer.json")),
    ]
    with pytest.raises(LplaError, match=r"as many members each .* has 32 and .* has 24"):
        train_ensemble(cfgs, dataset=blobs)
    halves = [_cfg(tmp_path, f"p{i}", role="shadow", shadow_index=i, num_shadows=4) for i in (0, 1)]
    with pytest.raises(LplaError, match=r"as many members each .* has 64 and .* has 66"):
        train_ensemble(halves, dataset=blobs)
    with pytest.raises(LplaError, match=r"two ensemble members write to"):
        train_ensemble([_cfg(tmp_path, "a"), _cfg(tmp_path, "a", seed=1)], dataset=blobs)


def test_momentum_framework_falls_back_to_solo_runs(tmp_path, blobs) -> None:
    lines: list[str] = []
    cfgs = [
        _cfg(tmp_path, f"b{i}", framework="byol", epochs=2, **who)
        for i, who in enumerate(MEMBERS[:2])
    ]
    outs = train_ensemble(cfgs, dataset=blobs, log=lines.append)
    assert len(lines) == 1 and "one after another" in lines[0] and "byol" in lines[0]
    for i, (out, c) in enumerate(zip(outs, cfgs, strict=True)):
        meta = Checkpoint.open(out).meta()
        assert meta["finished"] and meta["framework"] == "byol" and "ensemble" not in meta
        encoder, _ = load_encoder(out)
        assert encoder(torch.rand(2, 1, 12, 12)).shape == (2, 256)
        solo = train_encoder(c.replace(out=str(tmp_path / f"s{i}")), dataset=blobs)
        wo, ws = (
            load_file(str(out / "model.safetensors")),
            load_file(str(solo / "model.safetensors")),
        )
        assert all(torch.equal(wo[k], ws[k]) for k in wo)  # it is train_encoder's run


def test_when_batching_applies(tmp_path, blobs) -> None:
    """Auto: the mlp is batched on a CPU, conv backbones run one after another there (a grouped
    convolution is slower than separate ones); batched=False never batches."""
    lines: list[str] = []
    mlp = train_ensemble(
        [_cfg(tmp_path, f"m{i}", epochs=1, seed=i) for i in range(2)],
        dataset=blobs,
        log=lines.append,
    )
    conv = train_ensemble(
        [_cfg(tmp_path, f"c{i}", epochs=1, seed=i, backbone="cnn-small") for i in range(2)],
        dataset=blobs,
        log=lines.append,
    )
    never = train_ensemble(
        [_cfg(tmp_path, f"n{i}", epochs=1, seed=i) for i in range(2)],
        dataset=blobs,
        log=lines.append,
        batched=False,
    )
    assert all("ensemble" in _meta(p) for p in mlp)
    assert not any("ensemble" in _meta(p) for p in [*conv, *never])
    assert len(lines) == 2 and "convolutions are slower" in lines[0] and "batched=False" in lines[1]


def test_finished_runs_are_skipped(tmp_path, blobs) -> None:
    first = [_cfg(tmp_path, f"m{i}", epochs=2, **who) for i, who in enumerate(MEMBERS[:2])]
    train_ensemble(first, dataset=blobs)
    stamps = [(Path(c.out) / "model.safetensors").stat().st_mtime_ns for c in first]
    new = _cfg(tmp_path, "m2", epochs=2, **MEMBERS[2])
    outs = train_ensemble([*first, new], dataset=blobs, log=pytest.fail)
    assert outs == [Path(c.out) for c in [*first, new]]
    assert [(Path(c.out) / "model.safetensors").stat().st_mtime_ns for c in first] == stamps
    assert _meta(outs[2])["ensemble"] == {"size": 1, "position": 0} and _meta(outs[2])["finished"]
    with pytest.raises(LplaError, match=r"other settings: lr=0\.001 \(now 0\.01\)"):
        train_ensemble([c.replace(lr=0.01) for c in first], dataset=blobs)


def test_interrupted_ensemble_resumes_exactly(tmp_path, blobs) -> None:
    cfgs = [_cfg(tmp_path, f"m{i}", **who) for i, who in enumerate(MEMBERS[:2])]
    full = train_ensemble([c.replace(out=c.out + "-full") for c in cfgs], dataset=blobs)

    def interrupt(step: int, losses: list[float]) -> None:
        assert len(losses) == 2
        if step == 4:  # inside epoch 3 (2 steps per epoch)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(
        TrainingInterrupted, match=r"SIGINT received: stopped after step 5 of 8"
    ) as err:
        train_ensemble(cfgs, dataset=blobs, on_step=interrupt)
    assert err.value.exit_code == 130
    assert [(_meta(Path(c.out))["step"], _meta(Path(c.out))["finished"]) for c in cfgs] == [
        (5, False)
    ] * 2
    with pytest.raises(LplaError, match=r"unfinished run.*--resume"):
        train_ensemble(cfgs, dataset=blobs)
    resumed = train_ensemble([c.replace(resume=True) for c in cfgs], dataset=blobs)
    for a, b in zip(resumed, full, strict=True):
        wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
        assert all(torch.equal(wa[k], wb[k]) for k in wa)  # bit for bit
        assert _meta(a)["loss_curve"] == _meta(b)["loss_curve"]


def test_utility_is_measured_per_member(tmp_path, blobs) -> None:
    test_ds = ArrayDataset(
        blobs.get_images(np.arange(64)).numpy(),
        blobs.labels[:64],
        name="blobs",
        split="test",
        num_classes=4,
    )
    cfgs = [
        _cfg(tmp_path, f"m{i}", epochs=1, utility=True, utility_train_limit=64, **who)
        for i, who in enumerate(MEMBERS[:2])
    ]
    outs = train_ensemble(cfgs, dataset=blobs, test_dataset=test_ds)
    solo = train_encoder(
        cfgs[0].replace(out=str(tmp_path / "solo")), dataset=blobs, test_dataset=test_ds
    )
    mine, theirs = _meta(outs[0]), _meta(solo)
    assert set(mine) == set(theirs) | {"ensemble"} and mine["distributed"] is None
    assert set(mine["utility"]) == set(theirs["utility"])
    assert mine["utility"]["linear_probe_acc"] == pytest.approx(
        theirs["utility"]["linear_probe_acc"], abs=0.05
    )
    assert (
        _meta(outs[1])["utility"]["linear_probe_acc"] > 0.25
    )  # measured on member 1's own weights


def test_worker_processes_train_the_same_members(blobs, tmp_path: Path) -> None:
    """Two single-threaded processes, members dealt round-robin: each member is still its solo
    run (within the mlp + SGD tolerance), and the files are the same."""
    recipe: dict[str, Any] = {"optimizer": "sgd", "lr": 0.05}
    cfgs = [_cfg(tmp_path, f"member{i}", **recipe, **who) for i, who in enumerate(MEMBERS)]
    outs = train_ensemble(cfgs, dataset=blobs, log=lambda m: None, workers=2)
    assert outs == [Path(c.out) for c in cfgs]
    for i, cfg in enumerate(cfgs):
        alone = cfg.replace(out=str(tmp_path / f"solo{i}"), threads=1)
        solo = train_encoder(alone, dataset=blobs)
        _assert_same_run(Path(cfg.out), solo, atol=1e-5)


def test_workers_are_one_on_request_and_never_below_one(tmp_path: Path) -> None:
    from lpla.ssl.ensemble import _worker_count

    cfgs = [_cfg(tmp_path, f"m{i}") for i in range(3)]
    assert _worker_count(cfgs, 1) == 1
    assert _worker_count(cfgs, 8) == 3  # never more processes than members
    assert _worker_count(cfgs[:1], 4) == 1
    with pytest.raises(LplaError, match="workers"):
        _worker_count(cfgs, 0)
