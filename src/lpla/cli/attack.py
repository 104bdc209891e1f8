"""`lpla attack`: run membership-inference attacks from encoders or from embeddings files."""

from __future__ import annotations

from pathlib import Path

import typer

from lpla.cli._common import attack_settings, user_errors


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
    attack_param: list[str] = typer.Option(
        [], help="an attack's hyper-parameter, e.g. encodermi-t.calibration=reference (repeat)"
    ),
    p: str | None = typer.Option(None, help="norm orders, comma-separated; inf allowed [1,2,inf]"),
    views: int | None = typer.Option(None, help="views per image when querying encoders [10]"),
    clean_view0: bool | None = typer.Option(
        None,
        "--clean-view0/--no-clean-view0",
        help="querying: view 0 is the un-augmented image [on]; embeddings files: what to assume "
        "when their metadata does not say",
    ),
    views_grid: str | None = typer.Option(
        None, help="query budgets K for the AUC-vs-K table [1,2,5,10]"
    ),
    n_bootstrap: int | None = typer.Option(None, help="bootstrap resamples for the CIs [1000]"),
    seed: int | None = typer.Option(None, help="query and bootstrap seed [0]"),
    device: str | None = typer.Option(None, help="auto, cpu or cuda [auto]"),
    out: Path = typer.Option(
        Path("attack-out"), help="output directory (results.json, scores.npz, norms.npz)"
    ),
) -> None:
    """Fit attacks on shadow encoder(s), score the target's candidates, write results.json."""
    from lpla.cli.tables import print_attack_table
    from lpla.pipeline import GivenInputs, QuerySettings, current_command, run_given, settings_from

    inputs = GivenInputs(
        target=target,
        shadows=list(shadow),
        target_embeddings=target_embeddings,
        shadow_embeddings=list(shadow_embeddings),
        reference_embeddings=reference_embeddings,
        shadow_reference_embeddings=list(shadow_reference_embeddings),
        clean_view0=clean_view0 if target_embeddings is not None else None,
    )
    query = settings_from(
        QuerySettings,
        views=views,
        clean_view0=clean_view0 if target is not None else None,
        seed=seed,
        device=device,
    )
    attack = attack_settings(attacks, p, n_bootstrap, seed, attack_param, views_grid)
    results = run_given(
        inputs,
        query,
        attack,
        out,
        title="lpla attack",
        command=current_command(),
        report=False,
        utility=False,
    )
    print_attack_table(results)
    typer.echo(f"wrote {out / 'results.json'}")


def register(app: typer.Typer) -> None:
    app.command("attack")(attack_command)
