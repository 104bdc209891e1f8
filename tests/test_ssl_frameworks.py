"""SSL frameworks: every registered one trains on tiny data; momentum, temperature, parameters."""

from __future__ import annotations

import pytest
import torch

from lpla.errors import LplaError
from lpla.ssl.augment import create_augmentation
from lpla.ssl.backbones import create_backbone
from lpla.ssl.frameworks import FRAMEWORKS, SSLMethod, create_framework

CONTRACT_NAMES = {"simclr", "moco-v2", "byol", "simsiam", "barlow-twins", "vicreg", "dino"}
MOMENTUM = {"moco-v2", "byol", "dino"}


def _model(name: str, **params: object) -> SSLMethod:
    torch.manual_seed(0)
    return create_framework(name, create_backbone("cnn-small", 1, 12), **params)


def test_registry_has_the_contract_names() -> None:
    assert CONTRACT_NAMES <= set(FRAMEWORKS.names())


@pytest.mark.parametrize("name", FRAMEWORKS.names())
def test_trains_a_few_steps_with_finite_loss(name: str, tiny_dataset) -> None:
    model = _model(name)
    aug = create_augmentation(model.augmentation, (1, 12, 12))
    x = tiny_dataset.get_images(range(32)).float() / 255
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = []
    for step in range(4):
        loss = model([aug.view(v, x) for v in range(model.num_views)])
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.on_step_end(step, 4)
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    after = model.state_dict()
    assert not torch.equal(before["backbone.body.0.weight"], after["backbone.body.0.weight"])
    with torch.no_grad():
        model.eval()
        z = model.project(x[:4])
    assert z.ndim == 2 and z.shape[0] == 4 and torch.isfinite(z).all()
    if name in MOMENTUM:  # the momentum copy moved towards the online net but is not equal to it
        key = "backbone_momentum.body.0.weight"
        assert not torch.equal(before[key], after[key])
        assert not torch.equal(after[key], after["backbone.body.0.weight"])
        assert not any(p.requires_grad for p in model.backbone_momentum.parameters())


def test_momentum_update_is_the_cosine_ema() -> None:
    model = _model("byol", momentum=0.9)
    online = model.backbone.body[0].weight
    with torch.no_grad():
        online.add_(1.0)
    target_before = model.backbone_momentum.body[0].weight.clone()
    model.on_step_end(0, 10)  # cosine schedule at step 0 -> m = 0.9
    expected = 0.9 * target_before + 0.1 * online
    assert torch.allclose(model.backbone_momentum.body[0].weight, expected, atol=1e-6)
    model.on_step_end(9, 10)  # last step -> m = 1: target frozen
    frozen = model.backbone_momentum.body[0].weight.clone()
    model.on_step_end(9, 10)
    assert torch.equal(frozen, model.backbone_momentum.body[0].weight)


def test_simclr_temperature_sets_the_ntxent_loss() -> None:
    z0, z1 = torch.randn(8, 16), torch.randn(8, 16)
    for t in (0.1, 0.5):
        model = _model("simclr", temperature=t)
        assert model.criterion.temperature == t and model.params["temperature"] == t
        # hand-computed NT-Xent for the first anchor, as a check on the loss we wrap
        a = torch.nn.functional.normalize(torch.cat([z0, z1]), dim=1)
        sims = a @ a.T / t
        sims.fill_diagonal_(float("-inf"))
        targets = torch.cat([torch.arange(8, 16), torch.arange(0, 8)])
        expected = torch.nn.functional.cross_entropy(sims, targets)
        assert float(model.criterion(z0, z1)) == pytest.approx(float(expected), rel=1e-5)


def test_moco_queue_fills_with_keys() -> None:
    model = _model("moco-v2", memory_bank_size=64, output_dim=16)
    x = torch.rand(8, 1, 12, 12)
    model([x, x])
    bank = model.criterion.memory_bank
    assert tuple(bank.bank.shape) == (64, 16) and int(bank.bank_ptr) == 8


def test_dino_teacher_temperature_warms_up() -> None:
    model = _model(
        "dino", warmup_teacher_temperature=0.02, teacher_temperature=0.06, warmup_fraction=0.5
    )
    assert model.current_teacher_temperature() == pytest.approx(0.02)
    model.on_step_end(1, 8)  # progress 0.25 -> halfway through warm-up
    assert model.current_teacher_temperature() == pytest.approx(0.04)
    model.on_step_end(5, 8)
    assert model.current_teacher_temperature() == pytest.approx(0.06)
    assert "progress" in model.state_dict()  # a resumed run continues the schedule


def test_parameters_are_validated() -> None:
    with pytest.raises(LplaError, match=r"has no parameter temperature.*momentum"):
        _model("byol", temperature=0.5)
    with pytest.raises(LplaError, match=r"temperature must be > 0"):
        _model("simclr", temperature=0.0)
    with pytest.raises(LplaError, match=r"unknown framework"):
        _model("swav")
    with pytest.raises(LplaError, match=r"at least 2 views"):
        _model("simclr")([torch.rand(4, 1, 12, 12)])
