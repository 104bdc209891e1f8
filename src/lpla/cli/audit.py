"""`lpla audit`: one command from images to a membership-privacy report."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer

from lpla.cli._common import parse_csv, user_errors


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
    nonmembers: int | None = typer.Option(
        None, help="target non-members evaluated [1000, or what the pool leaves]"
    ),
    reference: int | None = typer.Option(
        None, help="reference (population) images queried on each encoder [1000, or what is left]"
    ),
    seeds: int | None = typer.Option(
        None, help="train S target/shadow pairs (other training seeds, same split) [1]"
    ),
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
    shadow_reference_embeddings: list[Path] = typer.Option(
        [], help="with --shadow-embeddings: each shadow's reference embeddings, in order"
    ),
    n_bootstrap: int | None = typer.Option(None, help="bootstrap resamples for the CIs [1000]"),
) -> None:
    """Train target and shadow (or take yours), query them, run every attack, write the report."""
    from lpla.audit import AuditConfig, config_from_dict, load_config, run_audit
    from lpla.cli.tables import print_attack_table
    from lpla.pipeline import current_command

    if target is not None or target_embeddings is not None:
        from lpla.pipeline import GivenInputs

        inputs = GivenInputs(
            target=target,
            shadows=list(shadow),
            target_embeddings=target_embeddings,
            shadow_embeddings=list(shadow_embeddings),
            reference_embeddings=reference_embeddings,
            shadow_reference_embeddings=list(shadow_reference_embeddings),
        )
        _audit_given(inputs, p, attacks, views, seed, device, n_bootstrap, utility, out)
        return
    cfg = load_config(config) if config is not None else AuditConfig()
    top: dict[str, Any] = {
        "nonmembers": nonmembers,
        "reference": reference,
        "seeds": seeds,
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
    if n_bootstrap is not None:
        updates["n_bootstrap"] = n_bootstrap
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
    from lpla.audit import target_split

    target_split(cfg)


def _audit_given(
    inputs: Any,
    p: str | None,
    attacks: str | None,
    views: int | None,
    seed: int | None,
    device: str | None,
    n_bootstrap: int | None,
    utility: bool,
    out: Path,
) -> None:
    """Audit encoders or embeddings the user brings: query (if needed), attack, report."""
    from lpla.cli.tables import print_attack_table
    from lpla.pipeline import (
        AttackSettings,
        QuerySettings,
        current_command,
        run_given,
        settings_from,
    )

    query = settings_from(QuerySettings, views=views, seed=seed, device=device)
    attack = settings_from(
        AttackSettings,
        attacks=parse_csv(attacks) if attacks else None,
        p=parse_csv(p, float) if p else None,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    results = run_given(
        inputs,
        query,
        attack,
        out,
        title="lpla audit",
        command=current_command(),
        report=True,
        utility=utility,
    )
    print_attack_table(results)
    typer.echo(f"report: {out / 'report.html'}")


def register(app: typer.Typer) -> None:
    app.command("audit")(audit_command)
