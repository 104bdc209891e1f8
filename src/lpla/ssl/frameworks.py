"""Self-supervised frameworks as small modules around lightly's losses and heads.

Each framework is an :class:`SSLMethod`: plain PyTorch, usable without our trainer. It owns the
backbone, its heads (and momentum copies), and the loss; ``training_loss(views)`` takes a list of
augmented batches. ``forward(views)`` is the same call, so a DDP wrapper sees it. Hyper-parameters
are keyword arguments with the paper's values, except the projection widths, scaled down so that
CPU-scale runs stay fast (pass the paper's widths for paper-scale runs); the code follows lightly's
own examples (``lightly/examples/pytorch``).
"""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Callable
from typing import Any

import torch
from lightly.loss import (
    BarlowTwinsLoss,
    DINOLoss,
    NegativeCosineSimilarity,
    NTXentLoss,
    VICRegLoss,
)
from lightly.models.modules.heads import (
    BarlowTwinsProjectionHead,
    BYOLPredictionHead,
    BYOLProjectionHead,
    DINOProjectionHead,
    MoCoProjectionHead,
    SimCLRProjectionHead,
    SimSiamPredictionHead,
    SimSiamProjectionHead,
    VICRegProjectionHead,
)
from lightly.models.modules.memory_bank import MemoryBankModule
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor, nn

from lpla.errors import LplaError
from lpla.registry import Registry

FRAMEWORKS: Registry[Callable[..., SSLMethod]] = Registry("framework")


class SSLMethod(nn.Module):
    """Backbone + heads + loss of one self-supervised framework."""

    augmentation: str = "simclr"  # default training augmentation recipe (lpla.ssl.augment)
    num_views: int = 2

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.params: dict[str, Any] = {}

    def forward(self, views: list[Tensor]) -> Tensor:
        return self.training_loss(views)

    def training_loss(self, views: list[Tensor]) -> Tensor:
        raise NotImplementedError

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Called after each optimizer step (momentum encoders update here)."""

    def project(self, x: Tensor) -> Tensor:
        """Projection-head output for images ``x`` (the "projection" query layer)."""
        raise NotImplementedError

    def _check_views(self, views: list[Tensor]) -> None:
        if len(views) < 2:
            raise LplaError(f"{type(self).__name__} needs at least 2 views, got {len(views)}")


def create_framework(name: str, backbone: nn.Module, **params: Any) -> SSLMethod:
    """Build framework ``name`` on ``backbone``; unknown or invalid parameters are user errors."""
    factory = FRAMEWORKS.get(name)
    accepted = [p for p in inspect.signature(factory).parameters if p != "backbone"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise LplaError(
            f"framework {name!r} has no parameter {', '.join(unknown)}; "
            f"its parameters are: {', '.join(accepted)}"
        )
    params = {k: v for k, v in params.items() if v is not None}
    method = factory(backbone, **params)
    method.name = name  # type: ignore[assignment]
    for module in method.modules():  # lightly leaves a disabled bank's pointer uninitialised:
        if isinstance(module, MemoryBankModule) and module.size[0] == 0:
            module.bank_ptr.zero_()  # zero it so that saved training states are deterministic
    return method


def list_frameworks(pattern: str = "*") -> list[str]:
    return FRAMEWORKS.names(pattern)


def _feature_dim(backbone: nn.Module) -> int:
    dim = getattr(backbone, "feature_dim", None)
    if not isinstance(dim, int):
        raise LplaError("the backbone has no integer 'feature_dim'; build it with create_backbone")
    return dim


def _positive(**values: float) -> None:
    for key, value in values.items():
        if not value > 0:
            raise LplaError(f"framework parameter {key} must be > 0, got {value}")


def _momentum_copy(module: nn.Module) -> nn.Module:
    twin = copy.deepcopy(module)
    deactivate_requires_grad(twin)
    return twin


@FRAMEWORKS.register("simclr", "SimCLR (Chen et al., ICML 2020): NT-Xent over 2 views, T=0.5")
class SimCLR(SSLMethod):
    """SimCLR [Chen et al. 2020, arXiv 2002.05709]. T = 0.5 (the paper's CIFAR value)."""

    augmentation = "simclr"

    def __init__(
        self,
        backbone: nn.Module,
        temperature: float = 0.5,
        hidden_dim: int | None = None,
        output_dim: int = 128,
    ) -> None:
        super().__init__(backbone)
        _positive(temperature=temperature, output_dim=output_dim)
        dim = _feature_dim(backbone)
        hidden = hidden_dim or dim
        self.params = {"temperature": temperature, "hidden_dim": hidden, "output_dim": output_dim}
        self.projection_head = SimCLRProjectionHead(dim, hidden, output_dim)
        self.criterion = NTXentLoss(temperature=temperature)

    def project(self, x: Tensor) -> Tensor:
        return self.projection_head(self.backbone(x))

    def training_loss(self, views: list[Tensor]) -> Tensor:
        self._check_views(views)
        z = [self.project(v) for v in views]
        pairs = [(i, j) for i in range(len(z)) for j in range(i + 1, len(z))]
        return torch.stack([self.criterion(z[i], z[j]) for i, j in pairs]).mean()


@FRAMEWORKS.register("moco-v2", "MoCo v2 (Chen et al. 2020): momentum encoder + queue, T=0.2")
class MoCoV2(SSLMethod):
    """MoCo v2 [Chen et al. 2020, arXiv 2003.04297]: T = 0.2, momentum 0.99 -> 1 (cosine).

    The paper's queue holds 65,536 keys and m = 0.999; at small scale a 4,096-key queue and a
    cosine schedule from 0.99 follow lightly's example.
    """

    augmentation = "moco-v2"

    def __init__(
        self,
        backbone: nn.Module,
        temperature: float = 0.2,
        memory_bank_size: int = 4096,
        momentum: float = 0.99,
        hidden_dim: int | None = None,
        output_dim: int = 128,
    ) -> None:
        super().__init__(backbone)
        _positive(temperature=temperature, memory_bank_size=memory_bank_size, output_dim=output_dim)
        if not 0.0 <= momentum <= 1.0:
            raise LplaError(f"moco-v2 momentum must be in [0, 1], got {momentum}")
        dim = _feature_dim(backbone)
        hidden = hidden_dim or dim
        self.params = {
            "temperature": temperature,
            "memory_bank_size": memory_bank_size,
            "momentum": momentum,
            "hidden_dim": hidden,
            "output_dim": output_dim,
        }
        self.momentum = momentum
        self.projection_head = MoCoProjectionHead(dim, hidden, output_dim)
        self.backbone_momentum = _momentum_copy(backbone)
        self.projection_head_momentum = _momentum_copy(self.projection_head)
        self.criterion = NTXentLoss(
            temperature=temperature, memory_bank_size=(memory_bank_size, output_dim)
        )

    def project(self, x: Tensor) -> Tensor:
        return self.projection_head(self.backbone(x))

    def training_loss(self, views: list[Tensor]) -> Tensor:
        self._check_views(views)
        query = self.project(views[0])
        with torch.no_grad():
            key = self.projection_head_momentum(self.backbone_momentum(views[1]))
        return self.criterion(query, key)

    def on_step_end(self, step: int, total_steps: int) -> None:
        m = cosine_schedule(step, max(total_steps, 1), self.momentum, 1.0)
        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.projection_head, self.projection_head_momentum, m)


@FRAMEWORKS.register("byol", "BYOL (Grill et al., NeurIPS 2020): predictor + momentum target")
class BYOL(SSLMethod):
    """BYOL [Grill et al. 2020, arXiv 2006.07733]: symmetric negative cosine, tau 0.99 -> 1.

    Paper widths 4096 -> 256; scaled to 1024 -> 128 by default.
    """

    augmentation = "byol"

    def __init__(
        self,
        backbone: nn.Module,
        momentum: float = 0.99,
        hidden_dim: int = 1024,
        output_dim: int = 128,
    ) -> None:
        super().__init__(backbone)
        _positive(hidden_dim=hidden_dim, output_dim=output_dim)
        if not 0.0 <= momentum <= 1.0:
            raise LplaError(f"byol momentum must be in [0, 1], got {momentum}")
        dim = _feature_dim(backbone)
        self.params = {"momentum": momentum, "hidden_dim": hidden_dim, "output_dim": output_dim}
        self.momentum = momentum
        self.projection_head = BYOLProjectionHead(dim, hidden_dim, output_dim)
        self.prediction_head = BYOLPredictionHead(output_dim, hidden_dim, output_dim)
        self.backbone_momentum = _momentum_copy(backbone)
        self.projection_head_momentum = _momentum_copy(self.projection_head)
        self.criterion = NegativeCosineSimilarity()

    def project(self, x: Tensor) -> Tensor:
        return self.projection_head(self.backbone(x))

    def training_loss(self, views: list[Tensor]) -> Tensor:
        self._check_views(views)
        x0, x1 = views[0], views[1]
        p0 = self.prediction_head(self.project(x0))
        p1 = self.prediction_head(self.project(x1))
        with torch.no_grad():
            z0 = self.projection_head_momentum(self.backbone_momentum(x0))
            z1 = self.projection_head_momentum(self.backbone_momentum(x1))
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))

    def on_step_end(self, step: int, total_steps: int) -> None:
        m = cosine_schedule(step, max(total_steps, 1), self.momentum, 1.0)
        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.projection_head, self.projection_head_momentum, m)


@FRAMEWORKS.register("simsiam", "SimSiam (Chen & He, CVPR 2021): stop-gradient, no negatives")
class SimSiam(SSLMethod):
    """SimSiam [Chen & He 2021, arXiv 2011.10566]. Paper widths 2048/512; scaled 512/128."""

    augmentation = "simsiam"

    def __init__(
        self,
        backbone: nn.Module,
        hidden_dim: int = 512,
        output_dim: int = 512,
        prediction_dim: int = 128,
    ) -> None:
        super().__init__(backbone)
        _positive(hidden_dim=hidden_dim, output_dim=output_dim, prediction_dim=prediction_dim)
        dim = _feature_dim(backbone)
        self.params = {
            "hidden_dim": hidden_dim,
            "output_dim": output_dim,
            "prediction_dim": prediction_dim,
        }
        self.projection_head = SimSiamProjectionHead(dim, hidden_dim, output_dim)
        self.prediction_head = SimSiamPredictionHead(output_dim, prediction_dim, output_dim)
        self.criterion = NegativeCosineSimilarity()

    def project(self, x: Tensor) -> Tensor:
        return self.projection_head(self.backbone(x))

    def training_loss(self, views: list[Tensor]) -> Tensor:
        self._check_views(views)
        z0, z1 = self.project(views[0]), self.project(views[1])
        p0, p1 = self.prediction_head(z0), self.prediction_head(z1)
        return 0.5 * (self.criterion(p0, z1.detach()) + self.criterion(p1, z0.detach()))


@FRAMEWORKS.register("barlow-twins", "Barlow Twins (Zbontar et al., ICML 2021), lambda=5e-3")
class BarlowTwins(SSLMethod):
    """Barlow Twins [Zbontar et al. 2021, arXiv 2103.03230]. Paper widths 8192; scaled 1024."""

    augmentation = "barlow-twins"

    def __init__(
        self,
        backbone: nn.Module,
        lambda_param: float = 5e-3,
        hidden_dim: int = 1024,
        output_dim: int = 1024,
    ) -> None:
        super().__init__(backbone)
        _positive(lambda_param=lambda_param, hidden_dim=hidden_dim, output_dim=output_dim)
        dim = _feature_dim(backbone)
        self.params = {
            "lambda_param": lambda_param,
            "hidden_dim": hidden_dim,
            "output_dim": output_dim,
        }
        self.projection_head = BarlowTwinsProjectionHead(dim, hidden_dim, output_dim)
        self.criterion = BarlowTwinsLoss(lambda_param=lambda_param)

    def project(self, x: Tensor) -> Tensor:
        return self.projection_head(self.backbone(x))

    def training_loss(self, views: list[Tensor]) -> Tensor:
        self._check_views(views)
        return self.criterion(self.project(views[0]), self.project(views[1]))


@FRAMEWORKS.register("vicreg", "VICReg (Bardes et al., ICLR 2022): 25/25/1 invariance/var/cov")
class VICReg(SSLMethod):
    """VICReg [Bardes et al. 2022, arXiv 2105.04906]. Paper widths 8192; scaled 1024."""

    augmentation = "vicreg"

    def __init__(
        self,
        backbone: nn.Module,
        lambda_param: float = 25.0,
        mu_param: float = 25.0,
        nu_param: float = 1.0,
        hidden_dim: int = 1024,
        output_dim: int = 1024,
    ) -> None:
        super().__init__(backbone)
        _positive(hidden_dim=hidden_dim, output_dim=output_dim)
        dim = _feature_dim(backbone)
        self.params = {
            "lambda_param": lambda_param,
            "mu_param": mu_param,
            "nu_param": nu_param,
            "hidden_dim": hidden_dim,
            "output_dim": output_dim,
        }
        self.projection_head = VICRegProjectionHead(dim, hidden_dim, output_dim, num_layers=2)
        self.criterion = VICRegLoss(lambda_param, mu_param, nu_param)

    def project(self, x: Tensor) -> Tensor:
        return self.projection_head(self.backbone(x))

    def training_loss(self, views: list[Tensor]) -> Tensor:
        self._check_views(views)
        return self.criterion(self.project(views[0]), self.project(views[1]))


@FRAMEWORKS.register("dino", "DINO (Caron et al., ICCV 2021): self-distillation, 2 global views")
class DINO(SSLMethod):
    """DINO [Caron et al. 2021, arXiv 2104.14294] with 2 global views (no local crops at CPU scale).

    Teacher temperature warms up linearly from ``warmup_teacher_temperature`` over the first
    ``warmup_fraction`` of training (the paper: 0.04 -> 0.04..0.07 over 30 of 300 epochs); teacher
    momentum 0.99 -> 1 (cosine). Paper head 2048/256/65536; scaled 512/64/1024.
    """

    augmentation = "dino"

    def __init__(
        self,
        backbone: nn.Module,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.04,
        warmup_teacher_temperature: float = 0.04,
        warmup_fraction: float = 0.1,
        momentum: float = 0.99,
        hidden_dim: int = 512,
        bottleneck_dim: int = 64,
        output_dim: int = 1024,
    ) -> None:
        super().__init__(backbone)
        _positive(
            student_temperature=student_temperature,
            teacher_temperature=teacher_temperature,
            warmup_teacher_temperature=warmup_teacher_temperature,
            output_dim=output_dim,
        )
        if not 0.0 <= momentum <= 1.0:
            raise LplaError(f"dino momentum must be in [0, 1], got {momentum}")
        dim = _feature_dim(backbone)
        self.params = {
            "student_temperature": student_temperature,
            "teacher_temperature": teacher_temperature,
            "warmup_teacher_temperature": warmup_teacher_temperature,
            "warmup_fraction": warmup_fraction,
            "momentum": momentum,
            "hidden_dim": hidden_dim,
            "bottleneck_dim": bottleneck_dim,
            "output_dim": output_dim,
        }
        self.momentum = momentum
        self.warmup_fraction = warmup_fraction
        self.teacher_temperature = teacher_temperature
        self.warmup_teacher_temperature = warmup_teacher_temperature
        with warnings.catch_warnings():  # lightly's head uses the deprecated weight_norm
            warnings.simplefilter("ignore", FutureWarning)
            self.projection_head = DINOProjectionHead(dim, hidden_dim, bottleneck_dim, output_dim)
            # weight-normed heads cannot be deep-copied: build a twin and copy the weights
            teacher_head = DINOProjectionHead(dim, hidden_dim, bottleneck_dim, output_dim)
        self.backbone_momentum = _momentum_copy(backbone)
        teacher_head.load_state_dict(self.projection_head.state_dict())
        deactivate_requires_grad(teacher_head)
        self.projection_head_momentum = teacher_head
        self.criterion = DINOLoss(output_dim=output_dim, student_temp=student_temperature)
        # training progress in [0, 1], a buffer so that a resumed run uses the same temperature
        self.progress: Tensor
        self.register_buffer("progress", torch.zeros((), dtype=torch.float64))

    def project(self, x: Tensor) -> Tensor:
        return self.projection_head(self.backbone(x))

    def current_teacher_temperature(self) -> float:
        progress = float(self.progress)
        if self.warmup_fraction <= 0 or progress >= self.warmup_fraction:
            return self.teacher_temperature
        t = progress / self.warmup_fraction
        return self.warmup_teacher_temperature + t * (
            self.teacher_temperature - self.warmup_teacher_temperature
        )

    def training_loss(self, views: list[Tensor]) -> Tensor:
        self._check_views(views)
        with torch.no_grad():
            teacher_out = [
                self.projection_head_momentum(self.backbone_momentum(v)) for v in views[:2]
            ]
        student_out = [self.project(v) for v in views]
        return self.criterion(
            teacher_out, student_out, teacher_temp=self.current_teacher_temperature()
        )

    def on_step_end(self, step: int, total_steps: int) -> None:
        total = max(total_steps, 1)
        self.progress.fill_((step + 1) / total)
        m = cosine_schedule(step, total, self.momentum, 1.0)
        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.projection_head, self.projection_head_momentum, m)
