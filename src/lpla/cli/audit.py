"""`lpla audit`: one command from images to a membership-privacy report."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import typer

from lpla.cli._common import parse_csv, user_errors
from lpla.errors import LplaError


@user_errors
def audit_command(
    out: Path = typer.Option(
        Path("runs/audit"), help="run directory (cached stages, results.json, report.html)"
    ),
    config: Path | None = typer.Option(
        None, help="audit config (YAML/JSON); flags given here override it"
    ),
    dataset: str | None = typer.Option(
        None, help="dataset name (lpla list datasets); default fashion-mnist"
    ),
    data_root: str | None = typer.Option(None, help="where the dataset's files are"),
    members: int | None = typer.Option(None, help="target members (the shadow gets as many)"),
    framework: str | None = typer.Option(None, help="target SSL framework"),
    backbone: str | None = typer.Option(None, help="target backbone"),
    epochs: int | None = typer.Option(None, help="training epochs of target and shadow"),
    knowledge: str | None = typer.Option(
        None,
        help="attacker knowledge: same, other-framework, other-backbone, other-data (join with +)",
    ),
    views: int | None = typer.Option(None, help="K augmented views per image"),
    p: str | None = typer.Option(None, help="norm orders, e.g. 1,2,inf"),
    attacks: str | None = typer.Option(
        None, help="comma-separated attacks (default: all the inputs allow)"
    ),
    defense: list[str] = typer.Option(
        [], help="output-side defense to measure too, e.g. noise:0.1 (repeat)"
    ),
    seed: int | None = typer.Option(None),
    device: str | None = typer.Option(None, help="auto, cpu or cuda"),
    utility: bool = typer.Option(
        True, "--utility/--no-utility", help="measure linear-probe and kNN accuracy"
    ),
    target: Path | None = typer.Option(
        None, help="audit this trained encoder (checkpoint dir) instead of training one"
    ),
    shadow: list[Path] = typer.Option([], help="with --target: the attacker's shadow encoder(s)"),
    target_embeddings: Path | None = typer.Option(
        None, help="audit precomputed embeddings (.npz) instead"
    ),
    shadow_embeddings: list[Path] = typer.Option(
        [], help="with --target-embeddings: shadow embeddings"
    ),
    reference_embeddings: Path | None = typer.Option(
        None, help="with --target-embeddings: target's reference embeddings"
    ),
) -> None:
    """Train target and shadow (or take yours), query them, run every attack, write the report."""
    from lpla.audit import AuditConfig, config_from_dict, current_command, load_config, run_audit
    from lpla.cli.tables import print_attack_table

    if target is not None or target_embeddings is not None:
        _audit_given(
            out,
            target,
            shadow,
            target_embeddings,
            shadow_embeddings,
            reference_embeddings,
            p,
            attacks,
            views,
            seed,
            device,
        )
        return
    cfg = load_config(config) if config is not None else AuditConfig()
    top: dict[str, Any] = {
        "dataset": dataset,
        "data_root": data_root,
        "members": members,
        "knowledge": knowledge,
        "views": views,
        "seed": seed,
        "device": device,
    }
    updates = {k: v for k, v in top.items() if v is not None}
    if p is not None:
        updates["p"] = tuple(parse_csv(p, float))
    if attacks is not None:
        updates["attacks"] = tuple(parse_csv(attacks))
    if defense:
        updates["defenses"] = tuple(defense)
    if not utility:
        updates["utility"] = False
    t_updates: dict[str, Any] = {
        k: v
        for k, v in {"framework": framework, "backbone": backbone, "epochs": epochs}.items()
        if v is not None
    }
    cfg = dataclasses.replace(cfg, target=dataclasses.replace(cfg.target, **t_updates), **updates)
    cfg = config_from_dict(cfg.to_dict() | {"p": list(cfg.p)})  # round-trip: validates every key
    cfg.validate()  # before anything is written to --out
    _check_split_fits(cfg)
    from lpla.io import write_json_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "audit_config.json", cfg.to_dict())
    results = run_audit(cfg, out, log=typer.echo, command=current_command())
    print_attack_table(
        results, title=f"lpla audit: {cfg.dataset}, {cfg.target.framework}/{cfg.target.backbone}"
    )
    typer.echo(f"report: {out / 'report.html'}")


def _check_split_fits(cfg: Any) -> None:
    """Too many members for the dataset: say so before --out gets a config for an impossible run."""
    from lpla.audit_stages import target_split

    target_split(cfg)


def _audit_given(
    out: Path,
    target: Path | None,
    shadow: list[Path],
    target_embeddings: Path | None,
    shadow_embeddings: list[Path],
    reference_embeddings: Path | None,
    p: str | None,
    attacks: str | None,
    views: int | None,
    seed: int | None,
    device: str | None,
) -> None:
    """Audit encoders or embeddings the user brings: query (if needed), attack, report."""
    from lpla.audit import current_command
    from lpla.audit_stages import save_norms, save_scores
    from lpla.cli.tables import print_attack_table
    from lpla.embeddings import open_embeddings
    from lpla.evaluate import AttackSettings, EncoderAnswers, run_attacks
    from lpla.io import read_json, write_json_atomic
    from lpla.runtime import versions

    out.mkdir(parents=True, exist_ok=True)
    if target is not None:
        from lpla.query_split import add_cross_baselines, query_checkpoint

        if not shadow:
            raise LplaError("--target needs at least one --shadow encoder directory")
        kw = dict(views=views or 10, seed=seed or 0, device=device or "auto", clean_view0=True)
        t = query_checkpoint(target, "target", out / "embeddings", **kw)  # type: ignore[arg-type]
        shs = [
            query_checkpoint(s, f"shadow{i}", out / "embeddings", **kw)  # type: ignore[arg-type]
            for i, s in enumerate(shadow)
        ]
        if len(shs) == 1:  # lpla-diff: each encoder is the other's baseline
            add_cross_baselines(target, shadow[0], t, shs[0], out / "embeddings", **kw)  # type: ignore[arg-type]
    else:
        assert target_embeddings is not None
        if not shadow_embeddings:
            raise LplaError("--target-embeddings needs --shadow-embeddings")
        t = EncoderAnswers(
            "target",
            open_embeddings(target_embeddings),
            open_embeddings(reference_embeddings) if reference_embeddings else None,
        )
        shs = [
            EncoderAnswers(f"shadow{i}", open_embeddings(s))
            for i, s in enumerate(shadow_embeddings)
        ]
    settings = AttackSettings(
        attacks=parse_csv(attacks) if attacks else None,
        p=parse_csv(p or "1,2,inf", float),
        clean_view0=bool(t.candidates.meta.get("clean_view0", False)),
        seed=seed or 0,
    )
    run = run_attacks(t, shs, settings)
    results = run.results | {
        "title": "lpla audit",
        "command": current_command(),
        "versions": versions(),
        "config": {
            "target": str(target or target_embeddings),
            "shadows": [str(s) for s in (shadow or shadow_embeddings)],
        },
    }
    member = np.asarray(t.candidates.member)
    results["split"] = {
        "dataset": t.candidates.meta.get("dataset"),
        "seed": t.candidates.meta.get("seed"),
        "sizes": {
            "target_member": int((member == 1).sum()),
            "target_nonmember": int((member == 0).sum()),
        },
    }
    if target is not None:
        ckpt = read_json(target / "checkpoint.json")
        if ckpt.get("utility"):
            results["utility"] = ckpt["utility"]
        if (target / "split.json").is_file():
            split = read_json(target / "split.json")
            results["split"] = {
                k: split.get(k) for k in ("dataset", "seed", "sizes", "fingerprint")
            }
    save_scores(out / "scores.npz", run.target_member, run.scores)
    save_norms(out / "norms.npz", run)
    write_json_atomic(out / "results.json", results)
    from lpla.report.html import build_report

    build_report(out)
    print_attack_table(results)
    typer.echo(f"report: {out / 'report.html'}")


def register(app: typer.Typer) -> None:
    app.command("audit")(audit_command)
