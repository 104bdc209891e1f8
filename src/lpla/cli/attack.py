"""`lpla attack`: run membership-inference attacks from encoders or from embeddings files."""

from __future__ import annotations

from pathlib import Path

import typer

from lpla.cli._common import parse_csv, user_errors
from lpla.errors import LplaError


@user_errors
def attack_command(
    target_embeddings: Path | None = typer.Option(
        None, help="target encoder's embeddings (.npz) of candidate images with member 1/0"
    ),
    shadow_embeddings: list[Path] = typer.Option(
        [],
        help="shadow encoder embeddings (.npz) with known member 1/0; repeat for several shadows",
    ),
    reference_embeddings: Path | None = typer.Option(
        None, help="target encoder's embeddings of reference (population, non-member) images"
    ),
    shadow_reference_embeddings: list[Path] = typer.Option(
        [], help="each shadow's embeddings of reference images (same order as --shadow-embeddings)"
    ),
    target: Path | None = typer.Option(
        None, help="target encoder checkpoint directory (queried through the engine)"
    ),
    shadow: list[Path] = typer.Option(
        [], help="shadow encoder checkpoint directory; repeat for several"
    ),
    attacks: str | None = typer.Option(
        None, help="comma-separated attack names (default: every attack the inputs allow)"
    ),
    p: str = typer.Option("1,2,inf", help="norm orders, comma-separated; inf allowed"),
    views: int = typer.Option(10, help="views per image when querying encoders"),
    clean_view0: bool | None = typer.Option(
        None,
        "--clean-view0/--no-clean-view0",
        help="view 0 is the un-augmented image (default: from the embeddings' meta)",
    ),
    views_grid: str = typer.Option("1,2,5,10", help="query budgets K for the AUC-vs-K table"),
    n_bootstrap: int = typer.Option(1000, help="bootstrap resamples for the AUC CI"),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto"),
    out: Path = typer.Option(
        Path("attack-out"), help="output directory (results.json, scores.npz)"
    ),
) -> None:
    """Fit attacks on shadow encoder(s), score the target's candidates, write results.json."""
    from lpla.audit_stages import save_scores
    from lpla.cli.tables import print_attack_table
    from lpla.embeddings import open_embeddings
    from lpla.evaluate import AttackSettings, EncoderAnswers, run_attacks
    from lpla.io import write_json_atomic
    from lpla.runtime import versions

    if (target is None) == (target_embeddings is None):
        raise LplaError(
            "give either --target DIR (an encoder) or --target-embeddings FILE.npz "
            "(exactly one of them)"
        )
    out.mkdir(parents=True, exist_ok=True)
    if target is not None:
        from lpla.query_split import add_cross_baselines, query_checkpoint

        if not shadow:
            raise LplaError("--target needs at least one --shadow DIR")
        t = query_checkpoint(
            target,
            "target",
            out / "embeddings",
            views=views,
            seed=seed,
            device=device,
            clean_view0=bool(clean_view0),
        )
        shs = [
            query_checkpoint(
                s,
                f"shadow{i}",
                out / "embeddings",
                views=views,
                seed=seed,
                device=device,
                clean_view0=bool(clean_view0),
            )
            for i, s in enumerate(shadow)
        ]
        # difficulty calibration (lpla-diff): with one shadow, each encoder is the other's baseline
        if len(shs) == 1:
            add_cross_baselines(
                target,
                shadow[0],
                t,
                shs[0],
                out / "embeddings",
                views=views,
                seed=seed,
                device=device,
                clean_view0=bool(clean_view0),
            )
    else:
        assert target_embeddings is not None
        shadow_free = attacks is not None and set(parse_csv(attacks)) <= {"lpla-ref"}
        if not shadow_embeddings and not shadow_free:
            raise LplaError(
                "--target-embeddings needs --shadow-embeddings (or use --attacks lpla-ref)"
            )
        if shadow_reference_embeddings and len(shadow_reference_embeddings) != len(
            shadow_embeddings
        ):
            raise LplaError(
                "give one --shadow-reference-embeddings per --shadow-embeddings, in the same order"
            )
        t = EncoderAnswers(
            "target",
            open_embeddings(target_embeddings),
            open_embeddings(reference_embeddings) if reference_embeddings else None,
        )
        shs = [
            EncoderAnswers(
                f"shadow{i}",
                open_embeddings(s),
                open_embeddings(shadow_reference_embeddings[i])
                if shadow_reference_embeddings
                else None,
            )
            for i, s in enumerate(shadow_embeddings)
        ]
    if clean_view0 is None:
        clean_view0 = bool(t.candidates.meta.get("clean_view0", False))
    settings = AttackSettings(
        attacks=parse_csv(attacks) if attacks else None,
        p=parse_csv(p, float),
        clean_view0=clean_view0,
        views_grid=parse_csv(views_grid, int),
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    run = run_attacks(t, shs, settings)
    results = run.results | {
        "config": {
            "target": str(target or target_embeddings),
            "shadows": [str(s) for s in (shadow or shadow_embeddings)],
            "p": [str(v) for v in settings.p],
            "attacks": list(run.scores),
            "views": run.results["views"],
            "clean_view0": clean_view0,
            "seed": seed,
            "n_bootstrap": n_bootstrap,
        },
        "versions": versions(),
    }
    save_scores(out / "scores.npz", run.target_member, run.scores)
    write_json_atomic(out / "results.json", results)
    print_attack_table(results)
    typer.echo(f"wrote {out / 'results.json'}")


def register(app: typer.Typer) -> None:
    app.command("attack")(attack_command)
