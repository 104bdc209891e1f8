"""An audit's defenses: each one's leakage and utility cost, beside the undefended target's.

For every ``--defense`` spec, in the order given, after ``none`` (the undefended target):

- **output-side**: the same attacks on the target's and shadow's answers served through the
  defense (:func:`lpla.pipeline.attacking.run_defended`); utility = linear probe and kNN on the
  target's clean-image features served through the target's defense, fitted as the attacks
  see it (:func:`lpla.defenses.cost.served_utility`).
- **training-side**: a defended target, trained with the target's recipe changed as the defense
  says, on the same members with the same seed; queried like the target (the same query
  settings, images and answer roles) beside the audit's undefended shadow(s) (the attacker does
  not know the defense), attacked with the same attacks and calibration; utility of the
  defended encoder. With one shadow the pair is queried again in the defense's directory, so
  that each is also queried on the other's candidates (``lpla-diff``'s baselines).

Every defense has a directory ``<run>/defenses/<slug>/`` with its cached stages
(``stages.json``), ``utility.json`` and, training-side, ``target/`` and ``embeddings/``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpla.audit.config import AuditConfig
from lpla.audit.training import train_config, train_settings
from lpla.defenses import create_training_defense, defense_kind, defense_slug
from lpla.defenses.cost import served_utility, utility_entry
from lpla.errors import LplaError
from lpla.io import read_json, write_json_atomic
from lpla.pipeline.answers import EncoderAnswers
from lpla.pipeline.attacking import (
    defended_attacks,
    defense_entry,
    run_attacks,
    run_defended,
    serving_defenses,
)
from lpla.pipeline.querying import EncoderPlan, EncoderRef, query_encoders
from lpla.pipeline.settings import AttackSettings, QuerySettings
from lpla.pipeline.stages import StageCache
from lpla.ssl.checkpoint import SPLIT_FILE, Checkpoint
from lpla.ssl.config import TrainConfig

__all__ = ["DEFENSES_DIR", "AuditDefenses", "defense_dir", "run_defenses"]

DEFENSES_DIR = "defenses"
UTILITY_FILE = "utility.json"


def defense_dir(out: Path, spec: str) -> Path:
    """Where one defense of the audit in ``out`` keeps its files (``none`` too)."""
    return out / DEFENSES_DIR / defense_slug(spec)


@dataclass
class AuditDefenses:
    """What the audit has measured when its defenses run: the undefended run and its parts."""

    cfg: AuditConfig
    out: Path
    device: str
    query: QuerySettings
    attack: AttackSettings
    target: EncoderAnswers
    shadows: list[EncoderAnswers]
    target_plan: EncoderPlan
    shadow_plans: list[EncoderPlan]
    baselines: bool  # the undefended query had cross-baselines (one shadow)
    undefended: dict[str, dict[str, Any]]  # results["attacks"]
    target_checkpoint: Checkpoint
    split_fingerprint: str
    log: Callable[[str], None] = print

    @property
    def target_train(self) -> TrainConfig:
        """The target's TrainConfig (recipe and seed): a defended target changes it."""
        return train_config(
            self.cfg,
            self.cfg.target,
            "target",
            self.out / SPLIT_FILE,
            self.target_checkpoint.path,
            self.device,
            offset=0,
        )

    @property
    def roles(self) -> list[str]:
        """Answers the target was queried for beyond its plan's images (partcrop's crops)."""
        return [
            r
            for r in self.target.files
            if r not in self.target_plan.images and not r.startswith("baseline")
        ]


def run_defenses(job: AuditDefenses) -> list[dict[str, Any]]:
    """results.json's ``defenses``: ``none`` first, then every spec of ``cfg.defenses``."""
    util = _Utility(job)
    entries = [defense_entry("none", job.undefended, util.output("none"))]
    _log_entry(job.log, entries[-1])
    for spec in dict.fromkeys(job.cfg.defenses):
        if spec == "none":
            continue
        if defense_kind(spec) == "output":
            attacks = run_defended(spec, job.target, job.shadows, job.attack)
            entries.append(defense_entry(spec, attacks, util.output(spec)))
        else:
            entries.append(_training_defense(job, spec, util))
        _log_entry(job.log, entries[-1])
    return entries


def _log_entry(log: Callable[[str], None], entry: dict[str, Any]) -> None:
    u = entry["utility"]
    probe = "n/a" if u.get("linear_probe") is None else f"{u['linear_probe']:.3f}"
    knn = "n/a" if u.get("knn") is None else f"{u['knn']:.3f}"
    best = max(entry["attacks"].items(), key=lambda kv: float(kv[1]["auc"]), default=None)
    strongest = "" if best is None else f"; strongest attack {best[0]} AUC {best[1]['auc']:.3f}"
    log(f"defense {entry['defense']}: linear probe {probe}, kNN {knn}{strongest}")


def _training_defense(job: AuditDefenses, spec: str, util: _Utility) -> dict[str, Any]:
    """Train the defended target (cached), query it beside the shadow, attack, measure it."""
    from lpla.ssl.train import train_encoder

    changes = create_training_defense(spec).changes(job.target_train.to_dict())
    where = defense_dir(job.out, spec)
    ckpt = Checkpoint(where / "target")
    tcfg = dataclasses.replace(
        job.target_train, out=str(ckpt.path), utility=False, resume=False, **changes
    )
    tcfg.validate()
    stages = StageCache(where, job.log)
    settings = train_settings(tcfg)
    key = {"train": settings, "split": job.split_fingerprint}

    def train() -> None:
        if ckpt.finished_with(settings, job.split_fingerprint):
            return
        train_encoder(dataclasses.replace(tcfg, resume=ckpt.state_file.exists()))

    stages.run("train_target", key, [ckpt.model_file, ckpt.meta_file], train)
    plan = dataclasses.replace(job.target_plan, encoder=EncoderRef.of_checkpoint(ckpt))
    paired = job.baselines and len(job.shadow_plans) == 1
    target, *shadows = query_encoders(
        [plan, *job.shadow_plans] if paired else [plan],
        job.query,
        where / "embeddings",
        cache=stages,
        baselines=paired,
        roles=job.roles,
    )
    run = run_attacks(
        target, shadows if paired else job.shadows, dataclasses.replace(job.attack, views_grid=())
    )
    return defense_entry(
        spec,
        defended_attacks(run.results["attacks"]),
        util.encoder(spec, ckpt, stages),
        changes=changes,
        encoder=str(ckpt.path.relative_to(job.out)),
    )


class _Utility:
    """Utility entries, each cached in its defense's directory; the probe images, the target's
    features and the target's served defenses are loaded at most once."""

    def __init__(self, job: AuditDefenses) -> None:
        self.job = job
        self._data: tuple[Any, Any] | None = None
        self._skipped: str | None = None

    def _datasets(self) -> tuple[Any, Any] | None:
        if self._data is None and self._skipped is None:
            from lpla.data.registry import create_dataset

            cfg, size = self.job.cfg, self.job.target_train.image_size
            try:
                self._data = tuple(  # type: ignore[assignment]
                    create_dataset(cfg.dataset, s, root=cfg.data_root, image_size=size)
                    for s in ("train", "test")
                )
            except LplaError as exc:
                self._skipped = f"no test split: {exc}"
        return self._data

    def _measure(
        self,
        spec: str,
        checkpoint: Checkpoint,
        stages: StageCache,
        defense_key: dict[str, Any],
        defended: Callable[[], Any],
    ) -> dict[str, Any]:
        job = self.job
        if not job.cfg.utility:
            return utility_entry(None, "not measured (utility is off in this audit)")
        path = stages.out / UTILITY_FILE
        key = {
            "weights": checkpoint.weights_digest(),
            "layer": job.query.layer,
            "seed": job.target_train.seed,
            "train_limit": job.cfg.utility_train_limit,
            "dataset": job.cfg.dataset,
        } | defense_key

        def measure() -> None:
            data = self._datasets()
            if data is None:
                write_json_atomic(path, utility_entry(None, self._skipped))
                return
            from lpla.encoders import load_any_encoder

            enc = load_any_encoder(str(checkpoint.path), device=job.device, layer=job.query.layer)
            got = served_utility(
                enc.module,
                *data,
                {spec: defended()},
                train_limit=job.cfg.utility_train_limit,
                seed=job.target_train.seed,
                device=job.device,
            )
            write_json_atomic(path, utility_entry(got[spec]))

        stages.out.mkdir(parents=True, exist_ok=True)
        stages.run("utility", key, [path], measure)
        return dict(read_json(path))

    def output(self, spec: str) -> dict[str, Any]:
        """The target's features served through ``spec`` (``none``: as they are)."""
        job = self.job
        stages = StageCache(defense_dir(job.out, spec), job.log)

        def defended() -> Any:
            if spec == "none":
                return None
            return serving_defenses(spec, [job.target])[job.target.name]

        key = {"defense": defense_slug(spec), "query": job.query.cache_key()}
        return self._measure(spec, job.target_checkpoint, stages, key, defended)

    def encoder(self, spec: str, checkpoint: Checkpoint, stages: StageCache) -> dict[str, Any]:
        """A defended encoder's own features."""
        return self._measure(spec, checkpoint, stages, {"defense": "none"}, lambda: None)
