"""PartCrop (Zhu et al., CCS 2024): members' parts respond more sharply inside their own image.

"A Unified Membership Inference Method for Visual Self-supervised Encoder via Part-aware
Capability" (https://arxiv.org/abs/2404.02462; code: github.com/JiePKU/PartCrop). The attacker
crops small parts of each image, queries the encoder with them, and measures how the crops'
features respond across the positions of the whole image's feature map: an encoder that
trained on the image has learnt where its parts are, so the response is peaked. The query
(:mod:`lpla.partcrop`) turns each image into that *membership feature* (2N sorted energies for N
crops, the ``partcrop`` answer); this attack is the paper's classifier on it: an MLP trained on
the shadow encoder's members and non-members. Numpy and scikit-learn only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lpla.attacks.base import ATTACKS, Attack
from lpla.attacks.encodermi import _check_mlp_params, _MLPHead
from lpla.attacks.features import AttackInput
from lpla.errors import LplaError

__all__ = ["ANSWER", "PartCrop", "partcrop_features"]

#: the answer role this attack reads (:data:`lpla.attacks.features.ANSWER_ROLES`)
ANSWER = "partcrop"


def partcrop_features(item: AttackInput, who: str = "input") -> np.ndarray:
    """PartCrop's membership features of ``item``'s candidates, ``[N, F]``."""
    stats = item.answers.get(ANSWER)
    if stats is None or stats.features is None:
        raise LplaError(
            f"partcrop: the {who} has no PartCrop membership features; PartCrop queries the "
            "encoder with crops, so it needs an encoder (lpla audit/attack with --target, "
            "--encoder or a trained audit), not embeddings files"
        )
    return stats.features


@ATTACKS.register("partcrop", "PartCrop: crops' responses in the image's feature map -> MLP")
class PartCrop(Attack):
    """Standardised membership features -> MLP fitted on the shadow; score = member log-odds.

    The paper's attacker is an MLP (512-256-128, ReLU) on the features; here it is sklearn's
    ``MLPClassifier`` with those layers, behind a ``StandardScaler`` and trained like
    ``encodermi-v`` (L-BFGS, seeded), so that the two MLP attacks differ only in what they read.
    The score is the MLP's log-odds of "member" (the member probability's ranking, without its
    ties at 0 and 1).

    Args:
        hidden_layer_sizes: the MLP's hidden layers (the paper's ``Adversary``: 512, 256, 128).
        alpha, max_iter, random_state: the sklearn ``MLPClassifier``'s (as ``encodermi-v``).
    """

    name = "partcrop"
    min_views = 1
    needs_shadow = True
    needs_answer = ANSWER

    def __init__(
        self,
        hidden_layer_sizes: Sequence[int] = (512, 256, 128),
        alpha: float = 1.0,
        max_iter: int = 200,
        random_state: int = 0,
    ) -> None:
        _check_mlp_params(self.name, hidden_layer_sizes, alpha, max_iter)
        self.hidden_layer_sizes = hidden_layer_sizes
        self.alpha = alpha
        self.max_iter = max_iter
        self.random_state = random_state

    def _fit(self, shadows: list[AttackInput]) -> None:
        values = [partcrop_features(s, f"shadow #{i}") for i, s in enumerate(shadows)]
        widths = {v.shape[1] for v in values}
        if len(widths) > 1:
            raise LplaError(
                f"partcrop: the shadows' membership features differ in width {sorted(widths)}; "
                "query them with the same PartCrop recipe"
            )
        self.n_features_ = widths.pop()
        x = np.concatenate([v[s.labelled] for s, v in zip(shadows, values, strict=True)])
        y = np.concatenate([s.member[s.labelled] for s in shadows]).astype(np.int64)
        self.head_ = _MLPHead(
            self.hidden_layer_sizes, self.alpha, self.max_iter, self.random_state
        ).fit(x, y)

    def _score(self, target: AttackInput) -> np.ndarray:
        x = partcrop_features(target, "target")
        if x.shape[1] != self.n_features_:
            raise LplaError(
                f"partcrop was fitted on {self.n_features_} membership features but the target "
                f"has {x.shape[1]}; query target and shadow with the same PartCrop recipe"
            )
        return self.head_.logit(x)
