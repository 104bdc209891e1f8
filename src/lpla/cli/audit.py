"""`lpla audit`: one command from images to a membership-privacy report."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from lpla.cli._common import attack_settings, parse_attack_params, parse_csv, user_errors
from lpla.errors import LplaError

if TYPE_CHECKING:
    from lpla.pipeline.own import ShadowRecipe


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
    members: str | None = typer.Option(
        None,
        help="a count: target members to train on (the shadow gets as many); with --encoder: "
        "the images it was trained on (a folder, a .txt of paths or a .csv path[,label])",
    ),
    nonmembers: str | None = typer.Option(
        None,
        help="a count: target non-members evaluated [1000, or what the pool leaves]; with "
        "--encoder: images it was not trained on (folder, .txt or .csv)",
    ),
    reference: str | None = typer.Option(
        None,
        help="a count: reference (population) images queried on each encoder [1000, or what is "
        "left]; with --encoder: more images it was not trained on, that calibrate the attacks "
        "(default: a seeded half of --nonmembers, at most 1000)",
    ),
    seeds: int | None = typer.Option(
        None, help="train S target/shadow pairs (other training seeds, same split) [1]"
    ),
    reference_models: int | None = typer.Option(
        None,
        help="per-image calibration: train M reference encoders on random member sets of the "
        "candidates (a keep matrix) in one batched ensemble, instead of one shadow; adds "
        "lpla-lira, lpla-rmia and encodermi-t-lira [0]",
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
    attack_param: list[str] = typer.Option(
        [], help="an attack's hyper-parameter, e.g. encodermi-t.calibration=reference (repeat)"
    ),
    defense: list[str] = typer.Option(
        [],
        help="a defense to measure with its utility cost (repeat): output-side (noise:0.1, "
        "quantize:4, l2-normalize) or training-side, which trains a defended target "
        "(early-stop:EPOCHS, strong-aug:SCALE, weight-decay:WD); lpla list defenses",
    ),
    seed: int | None = typer.Option(None),
    device: str | None = typer.Option(None, help="auto, cpu or cuda"),
    utility: bool = typer.Option(
        True, "--utility/--no-utility", help="measure linear-probe and kNN accuracy"
    ),
    target: Path | None = typer.Option(
        None, help="audit this trained encoder (checkpoint dir) instead of training one"
    ),
    shadow: list[Path] = typer.Option(
        [],
        help="with --target: the attacker's shadow encoder(s); with --encoder: one encoder of "
        "yours trained like it on other images (any --encoder kind)",
    ),
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
    encoder: str | None = typer.Option(
        None,
        help="audit YOUR encoder on your --members/--nonmembers images: a .pt2 (torch.export), "
        "TorchScript .pt, package.module:factory, timm:NAME, torchvision:NAME or an lpla "
        "checkpoint directory",
    ),
    weights: str | None = typer.Option(
        None, help="with --encoder: .safetensors weights for module:factory, timm:, torchvision:"
    ),
    normalize: str | None = typer.Option(
        None,
        help="with --encoder: input normalisation, auto (timm/torchvision: the model's "
        "mean/std), imagenet, none or MEAN/STD",
    ),
    image_size: int | None = typer.Option(
        None,
        help="with --encoder: resize every image to N x N (default: the encoder's size if "
        "known, else the first member image's)",
    ),
    shadow_members: str | None = typer.Option(
        None, help="with --encoder --shadow ENC: the images the shadow was trained on"
    ),
    shadow_nonmembers: str | None = typer.Option(
        None, help="with --encoder --shadow ENC: images the shadow was not trained on"
    ),
    shadow_reference: str | None = typer.Option(
        None,
        help="with --encoder --shadow ENC: the shadow's reference images (default: a seeded "
        "half of --shadow-nonmembers, at most 1000)",
    ),
    shadow_weights: str | None = typer.Option(
        None, help="with --encoder --shadow ENC: .safetensors weights of the shadow"
    ),
    train_shadows: str | None = typer.Option(
        None,
        help="with --encoder and no shadow of yours: lpla trains shadow encoders on your images "
        "with this recipe, FRAMEWORK or FRAMEWORK/BACKBONE (e.g. simclr/mlp; the rest is the "
        "audit's recipe), into --out/shadows/, so the shadow-fitted attacks run",
    ),
    shadows: int | None = typer.Option(
        None,
        help="with --train-shadows: how many, 1 (on half of your non-members) or an even "
        "number (paired halves of all your images; adds lpla-lira) [1]",
    ),
    shadow_epochs: int | None = typer.Option(
        None, help="with --train-shadows: training epochs [the recipe's]"
    ),
) -> None:
    """Train target and shadow (or take yours), query them, run every attack, write the report.

    Your own encoder on your own images: lpla audit --encoder model.pt2 --members DIR
    --nonmembers DIR2 --out runs/mine (docs/own-encoder.md).
    """
    from lpla.audit import AuditConfig, config_from_dict, load_config, run_audit
    from lpla.cli.tables import print_attack_table
    from lpla.pipeline import current_command

    own_flags = {
        "--weights": weights,
        "--normalize": normalize,
        "--image-size": image_size,
        "--shadow-members": shadow_members,
        "--shadow-nonmembers": shadow_nonmembers,
        "--shadow-reference": shadow_reference,
        "--shadow-weights": shadow_weights,
        "--train-shadows": train_shadows,
        "--shadows": shadows,
        "--shadow-epochs": shadow_epochs,
    }
    if encoder is not None:
        _refuse(
            "--encoder audits an encoder you trained yourself, on your images; these options "
            "are for training an audit's encoders or for --target audits, not for --encoder:",
            {
                "--target": target,
                "--target-embeddings": target_embeddings,
                "--shadow-embeddings": shadow_embeddings or None,
                "--reference-embeddings": reference_embeddings,
                "--shadow-reference-embeddings": shadow_reference_embeddings or None,
                "--config": config,
                "--dataset": dataset,
                "--data-root": data_root,
                "--seeds": seeds,
                "--reference-models": reference_models,
                "--framework": framework,
                "--backbone": backbone,
                "--epochs": epochs,
                "--knowledge": knowledge,
            },
        )
        _audit_own(
            encoder,
            weights=weights,
            normalize=normalize,
            image_size=image_size,
            members=members,
            nonmembers=nonmembers,
            reference=reference,
            shadow=[str(s) for s in shadow],
            shadow_weights=shadow_weights,
            shadow_members=shadow_members,
            shadow_nonmembers=shadow_nonmembers,
            shadow_reference=shadow_reference,
            train_shadows=train_shadows,
            shadows=shadows,
            shadow_epochs=shadow_epochs,
            p=p,
            attacks=attacks,
            views=views,
            seed=seed,
            device=device,
            n_bootstrap=n_bootstrap,
            defense=list(defense),
            attack_params=parse_attack_params(attack_param) or None,
            utility=utility,
            out=out,
        )
        return
    _refuse("these options need --encoder (your encoder, audited on your images):", own_flags)
    counts = {
        "--members": members,
        "--nonmembers": nonmembers,
        "--reference": reference,
    }
    member_count, nonmember_count, reference_count = (_count(flag, v) for flag, v in counts.items())
    if target is not None or target_embeddings is not None:
        from lpla.pipeline import GivenInputs

        _refuse(
            "with --target or --target-embeddings, lpla neither trains reference encoders (give "
            "trained ones as --shadow / --shadow-embeddings, each with its members) nor serves "
            "defended answers (use an audit that trains its target, or --encoder):",
            {"--reference-models": reference_models, "--defense": defense or None},
        )

        inputs = GivenInputs(
            target=target,
            shadows=list(shadow),
            target_embeddings=target_embeddings,
            shadow_embeddings=list(shadow_embeddings),
            reference_embeddings=reference_embeddings,
            shadow_reference_embeddings=list(shadow_reference_embeddings),
        )
        _audit_given(
            inputs, p, attacks, attack_param, views, seed, device, n_bootstrap, utility, out
        )
        return
    cfg = load_config(config) if config is not None else AuditConfig()
    top: dict[str, Any] = {
        "nonmembers": nonmember_count,
        "reference": reference_count,
        "seeds": seeds,
        "reference_models": reference_models,
        "dataset": dataset,
        "data_root": data_root,
        "members": member_count,
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
    if attack_param:
        updates["attack_params"] = parse_attack_params(attack_param)
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


def _is_count(value: str) -> bool:
    return value.strip().lstrip("+-").isdigit()


def _count(flag: str, value: str | None) -> int | None:
    """A training audit's image count; an image list here is a mix-up with --encoder."""
    if value is None:
        return None
    if not _is_count(value):
        raise LplaError(
            f"{flag} {value} names images, which needs --encoder ENC (the encoder trained on "
            f"them: lpla audit --encoder model.pt2 --members M --nonmembers N); without "
            f"--encoder, {flag} is a number of images, e.g. {flag} 128"
        )
    return int(value)


def _image_list(flag: str, value: str | None) -> str | None:
    """An own-encoder audit's image list; a bare count here is a mix-up with a training audit."""
    if value is None:
        return None
    if _is_count(value) and not Path(value).exists():
        raise LplaError(
            f"{flag} {value} is a number of images (to train an audit's own encoder), but "
            f"--encoder audits yours: give the images instead, a folder, a .txt of paths or a "
            f".csv path[,label] (e.g. {flag} images/{flag.lstrip('-').replace('-', '_')}/)"
        )
    return value


def _refuse(why: str, given: dict[str, Any]) -> None:
    """One error naming every option in ``given`` that was set."""
    named = [flag for flag, value in given.items() if value is not None]
    if named:
        raise LplaError(f"{why} {', '.join(named)}")


def _audit_own(
    encoder: str,
    *,
    weights: str | None,
    normalize: str | None,
    image_size: int | None,
    members: str | None,
    nonmembers: str | None,
    reference: str | None,
    shadow: list[str],
    shadow_weights: str | None,
    shadow_members: str | None,
    shadow_nonmembers: str | None,
    shadow_reference: str | None,
    train_shadows: str | None,
    shadows: int | None,
    shadow_epochs: int | None,
    p: str | None,
    attacks: str | None,
    views: int | None,
    seed: int | None,
    device: str | None,
    n_bootstrap: int | None,
    defense: list[str],
    attack_params: dict[str, dict[str, Any]] | None,
    utility: bool,
    out: Path,
) -> None:
    """Your encoder on your images: query, attack (shadow-free unless --shadow or
    --train-shadows), report."""
    from lpla.cli.tables import print_attack_table
    from lpla.pipeline import (
        EncoderRef,
        OwnEncoder,
        OwnInputs,
        QuerySettings,
        current_command,
        run_own,
        settings_from,
    )
    from lpla.pipeline.own import IMAGES_FILE

    members = _image_list("--members", members)
    nonmembers = _image_list("--nonmembers", nonmembers)
    if members is None or nonmembers is None:
        raise LplaError(
            "--encoder needs --members (images it was trained on) and --nonmembers (images it "
            "was not trained on): each a folder, a .txt of paths or a .csv path[,label]"
        )
    if image_size is not None and image_size < 1:
        raise LplaError(f"--image-size must be a positive number of pixels, got {image_size}")
    target = OwnEncoder(
        EncoderRef(encoder, weights, normalize),
        members,
        nonmembers,
        _image_list("--reference", reference),
    )
    own_shadow = None
    shadow_lists = {"--shadow-members": shadow_members, "--shadow-nonmembers": shadow_nonmembers}
    if train_shadows is not None and shadow:
        raise LplaError(
            f"--train-shadows {train_shadows} has lpla train shadow encoders for you, --shadow "
            f"{shadow[0]} brings yours: give one of them"
        )
    recipe = None
    if train_shadows is not None:
        recipe = _shadow_recipe(train_shadows, shadow_epochs, 1 if shadows is None else shadows)
    else:
        _refuse(
            "these options go with --train-shadows RECIPE:",
            {"--shadows": shadows, "--shadow-epochs": shadow_epochs},
        )
    if len(shadow) > 1:
        raise LplaError("with --encoder, give one --shadow encoder (with its own image lists)")
    if shadow:
        missing = [flag for flag, v in shadow_lists.items() if v is None]
        if missing:
            raise LplaError(
                f"--shadow {shadow[0]} needs {' and '.join(missing)}: the images the shadow was "
                "(not) trained on"
            )
        own_shadow = OwnEncoder(
            EncoderRef(shadow[0], shadow_weights, normalize),
            str(_image_list("--shadow-members", shadow_members)),
            str(_image_list("--shadow-nonmembers", shadow_nonmembers)),
            _image_list("--shadow-reference", shadow_reference),
        )
    else:
        _refuse(
            "these options describe a shadow encoder; give it with --shadow ENC:",
            shadow_lists
            | {"--shadow-reference": shadow_reference, "--shadow-weights": shadow_weights},
        )
    query = settings_from(QuerySettings, views=views, seed=seed, device=device)
    attack = attack_settings(attacks, p, n_bootstrap, seed, attack_params)
    results = run_own(
        OwnInputs(target, own_shadow, image_size, recipe),
        query,
        attack,
        out,
        command=current_command(),
        utility=utility,
        defenses=defense,
        log=typer.echo,
    )
    print_attack_table(results, title=f"lpla audit: {encoder}")
    for note in results["notes"]:
        typer.echo(f"note: {note}")
    for row in results.get("shadows") or []:
        typer.echo(f"shadow: {out / row['encoder']} ({row['recipe']})")
    typer.echo(f"images: {out / IMAGES_FILE}")
    typer.echo(f"report: {out / 'report.html'}")


def _shadow_recipe(recipe: str, epochs: int | None, count: int) -> ShadowRecipe:
    """``--train-shadows FRAMEWORK[/BACKBONE]``: the audit's recipe with these changed."""
    from lpla.audit.config import EncoderSpec
    from lpla.pipeline.own import ShadowRecipe
    from lpla.ssl.backbones import BACKBONES
    from lpla.ssl.frameworks import FRAMEWORKS

    framework, _, backbone = recipe.strip().partition("/")
    try:
        FRAMEWORKS.get(framework)
        if backbone:
            BACKBONES.get(backbone)
    except LplaError as exc:
        raise LplaError(
            f"--train-shadows {recipe}: {exc}; a recipe is FRAMEWORK[/BACKBONE], e.g. simclr/mlp"
        ) from None
    if epochs is not None and epochs < 1:
        raise LplaError(f"--shadow-epochs must be at least 1, got {epochs}")
    changes: dict[str, Any] = {"framework": framework}
    if backbone:
        changes["backbone"] = backbone
    if epochs is not None:
        changes["epochs"] = epochs
    spec = EncoderSpec(**changes)
    shadow_recipe = ShadowRecipe(f"{spec.framework}/{spec.backbone}", spec.train_fields(), count)
    shadow_recipe.validate()
    return shadow_recipe


def _check_split_fits(cfg: Any) -> None:
    """Too many members for the dataset: say so before --out gets a config for an impossible run."""
    from lpla.audit import target_split

    target_split(cfg)


def _audit_given(
    inputs: Any,
    p: str | None,
    attacks: str | None,
    attack_param: list[str],
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
        QuerySettings,
        current_command,
        run_given,
        settings_from,
    )

    query = settings_from(QuerySettings, views=views, seed=seed, device=device)
    attack = attack_settings(attacks, p, n_bootstrap, seed, attack_param)
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
