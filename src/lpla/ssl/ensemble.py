"""``train_ensemble(cfgs)``: M small SSL encoders with one recipe, trained together in one process.

An audit with reference models trains M encoders with the same recipe, each on its own members.
Here they share one loop: their weights are stacked (``torch.func.stack_module_state``) and the
framework's own ``training_loss`` (lightly's loss, not re-derived) runs under ``torch.func.vmap``
over ``functional_call``, so one forward and one backward serve all M. The gradient of the sum
of the members' losses with respect to member m's slice of the stacked parameters is member m's
own gradient; BatchNorm running statistics are stacked buffers that the vmapped forward updates
in place, member by member. One optimizer steps the stacked parameters: Adam, AdamW and SGD
(momentum, weight decay) are elementwise, so it is each member's own optimizer (the fused kernel
where torch has one). The learning-rate schedule is ``train_encoder``'s.

Each member draws what ``train_encoder`` draws for it: its split and members, its initialisation
(``training_seed``), its batch order (``epoch_permutation``) and its augmentation randomness
(``torch.manual_seed(derive_seed(seed, step, 0))`` before its views). Augmentation runs member by
member: one kornia call on all members' images at once is not faster on a CPU (measured at 28x28,
batch 128, M = 8, one thread: crop 20 ms merged vs 8 x 2.9 ms, flip 4.0 vs 8 x 0.2, colour jitter
12 vs 8 x 0.5), and ColorJitter draws one operation order per call, which a merged call cannot
keep per member.

Batched: ``simclr``, ``simsiam``, ``barlow-twins``, ``vicreg`` (a step is a pure function of the
parameters, buffers and views), with any backbone on CUDA and with convolution-free backbones
(``mlp``) on a CPU: there one grouped convolution runs at half the speed of M separate ones, so
conv backbones are not batched unless ``batched=True``. Trained one after another by
``train_encoder`` instead, with one log line saying why: frameworks with momentum encoders
(``moco-v2``, ``byol``, ``dino``: their ``on_step_end`` updates frozen copies, MoCo keeps a
queue), multi-device runs, fp16 AMP on CUDA (its loss scaler would skip a step for every member
when one overflows), optimizers that are not elementwise, conv backbones on a CPU. CUDA works
with or without bf16 autocast.

Every member's directory is the one ``train_encoder(cfg)`` writes (weights, training state with
the RNG states the solo run would hold, checkpoint.json with the same keys, split, paired halves),
plus ``"ensemble": {"size": M, "position": i}`` in checkpoint.json. The weights equal the solo
run's within float rounding, not bit for bit: batched matmuls and the fused optimizer add in
another order (tests/test_ensemble.py states the tolerance).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from lightly.models.modules.memory_bank import MemoryBankModule
from torch import Tensor, nn

from lpla.data.base import ImageDataset
from lpla.errors import LplaError
from lpla.runtime import cpu_budget, resolve_device, seed_everything, set_threads, versions
from lpla.ssl.augment import create_augmentation
from lpla.ssl.backbones import create_backbone
from lpla.ssl.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    MODEL_FILE,
    SPLIT_FILE,
    STATE_FILE,
    load_model_state,
    load_train_state,
    save_model,
    save_train_state,
    write_meta,
)
from lpla.ssl.config import TrainConfig
from lpla.ssl.frameworks import FRAMEWORKS, SSLMethod, create_framework
from lpla.ssl.train import (
    TrainingInterrupted,
    _check_out_dir,
    _load_split,
    _member_indices,
    _progress_bar,
    _stop_on_signals,
    _utility,
    derive_seed,
    epoch_permutation,
    learning_rate,
    make_optimizer,
    step_schedule,
    train_encoder,
    training_pool,
    training_seed,
)

__all__ = ["MEMBER_FIELDS", "train_ensemble"]

#: The TrainConfig fields in which the members of one ensemble may differ: who a run is, not how
#: it trains. Every other field is the shared recipe.
MEMBER_FIELDS = frozenset({"out", "seed", "split", "role", "shadow_index", "num_shadows"})

#: Optimizers whose update of an element reads only that element's gradient and state, so that
#: one optimizer over stacked parameters is M independent ones (LARS/LAMB-style norms are not).
ELEMENTWISE_OPTIMIZERS = frozenset({"adam", "adamw", "sgd"})

Log = Callable[[str], None]
OnStep = Callable[[int, list[float]], None]


class _NotBatchable(Exception):
    """The built models cannot share one vmapped step (the reason is the message)."""


def train_ensemble(
    cfgs: Sequence[TrainConfig],
    *,
    dataset: ImageDataset | None = None,
    test_dataset: ImageDataset | None = None,
    log: Log | None = None,
    on_step: OnStep | None = None,
    batched: bool | None = None,
    workers: int | None = 1,
) -> list[Path]:
    """Train every ``cfg`` as ``train_encoder(cfg)`` would; return their checkpoint directories.

    The configs must share the recipe (they may differ only in :data:`MEMBER_FIELDS`) and train
    on as many members each. A config whose ``out`` holds a finished run with its settings is
    skipped; unfinished runs continue with ``resume=True`` (runs stopped at different steps train
    as separate ensembles). ``dataset``/``test_dataset`` replace the registry's splits, as in
    ``train_encoder``. ``on_step(step, losses)`` gets every member's loss after each step.
    ``batched``: None batches where that is exact and faster (not conv backbones on a CPU),
    True wherever it is exact, False never (``train_encoder`` one after another).
    ``workers``: processes that each train a share of the members with one thread (CPU only;
    ``None``: one per core :func:`~lpla.runtime.cpu_budget` allows). A small encoder's step
    is compute-bound on a CPU and uses a second thread poorly, so two single-threaded
    processes outrun one two-threaded one (docs/performance.md).
    """
    say: Log = log or print
    cfgs = list(cfgs)
    if not cfgs:
        return []
    for cfg in cfgs:
        cfg.validate()
    _check_same_recipe(cfgs)
    outs = [Path(c.out) for c in cfgs]
    n_workers = _worker_count(cfgs, workers)
    if n_workers > 1:
        if on_step is not None:
            raise ValueError("on_step cannot follow training in worker processes; workers=1")
        say(f"training {len(cfgs)} encoder(s) in {n_workers} processes of one thread each")
        _train_in_workers(cfgs, n_workers, dataset, test_dataset, batched)
        return outs

    reason = "asked to (batched=False)" if batched is False else _fallback_reason(cfgs[0])
    if reason is None:
        saved = [_check_out_dir(c, Path(c.out), c.resume) for c in cfgs]
        pending = [(c, meta) for c, meta in zip(cfgs, saved, strict=True) if not _finished(meta)]
        by_start: dict[int, list[tuple[TrainConfig, dict[str, Any] | None]]] = {}
        for cfg, meta in pending:
            by_start.setdefault(int(meta["step"]) if meta else 0, []).append((cfg, meta))
        try:
            for group in by_start.values():
                _train_batched(
                    [c for c, _ in group],
                    [m for _, m in group],
                    dataset=dataset,
                    test_dataset=test_dataset,
                    on_step=on_step,
                    convolutions_on_cpu=batched is True,
                )
            return outs
        except _NotBatchable as exc:
            reason = str(exc)
    say(f"training {len(cfgs)} encoder(s) one after another, not batched: {reason}")
    for cfg in cfgs:
        train_encoder(cfg, dataset=dataset, test_dataset=test_dataset)
    return outs


def _worker_count(cfgs: list[TrainConfig], workers: int | None) -> int:
    """How many processes share the members: 1 on a GPU or when asked; else up to the cores."""
    if workers is not None and workers < 1:
        raise LplaError(f"workers must be >= 1, got {workers}")
    if resolve_device(cfgs[0].device) != "cpu" or len(cfgs) < 2:
        return 1
    wanted = cpu_budget() if workers is None else workers
    return max(1, min(wanted, len(cfgs)))


def _train_in_workers(
    cfgs: list[TrainConfig],
    n_workers: int,
    dataset: ImageDataset | None,
    test_dataset: ImageDataset | None,
    batched: bool | None,
) -> None:
    """Members dealt round-robin to ``n_workers`` spawned processes, each one thread; a worker's
    error (or an interruption) is raised here once every worker has stopped."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    groups = [
        [
            dataclasses.replace(c, threads=1, progress=c.progress and w == 0)
            for c in cfgs[w::n_workers]
        ]
        for w in range(n_workers)
    ]
    context = multiprocessing.get_context("spawn")  # no forked torch thread pools
    with ProcessPoolExecutor(max_workers=n_workers, mp_context=context) as pool:
        futures = [pool.submit(_worker, group, dataset, test_dataset, batched) for group in groups]
        errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error


def _worker(
    cfgs: list[TrainConfig],
    dataset: ImageDataset | None,
    test_dataset: ImageDataset | None,
    batched: bool | None,
) -> None:
    train_ensemble(
        cfgs, dataset=dataset, test_dataset=test_dataset, batched=batched, workers=1, log=print
    )


def _finished(meta: dict[str, Any] | None) -> bool:
    return bool(meta and meta.get("finished"))


def _check_same_recipe(cfgs: list[TrainConfig]) -> None:
    """One recipe for all members, distinct output directories; else one readable error."""
    first = cfgs[0]
    for field in dataclasses.fields(TrainConfig):
        if field.name in MEMBER_FIELDS:
            continue
        ours = getattr(first, field.name)
        for cfg in cfgs[1:]:
            theirs = getattr(cfg, field.name)
            if theirs != ours:
                raise LplaError(
                    f"ensemble members must share the training recipe, but {field.name!r} is "
                    f"{ours!r} for {first.out} and {theirs!r} for {cfg.out}; only "
                    f"{', '.join(sorted(MEMBER_FIELDS))} may differ: train the others separately"
                )
    seen: set[Path] = set()
    for cfg in cfgs:
        out = Path(cfg.out).resolve()
        if out in seen:
            raise LplaError(f"two ensemble members write to {cfg.out}; give each its own out")
        seen.add(out)


def _fallback_reason(cfg: TrainConfig) -> str | None:
    """Why this recipe cannot be batched exactly (None: it can)."""
    framework = FRAMEWORKS.get(cfg.framework)
    if getattr(framework, "on_step_end", SSLMethod.on_step_end) is not SSLMethod.on_step_end:
        return f"{cfg.framework} updates a momentum encoder after every step"
    if cfg.devices * cfg.num_nodes > 1:
        return "multi-device training runs each encoder with its own processes"
    if cfg.optimizer not in ELEMENTWISE_OPTIMIZERS:
        return f"optimizer {cfg.optimizer!r} is not elementwise"
    device = resolve_device(cfg.device)
    if device not in ("cpu",) and not device.startswith("cuda"):
        return f"device {device!r} is not supported by the batched loop"
    if device.startswith("cuda") and cfg.amp and _amp_dtype(cfg) == torch.float16:
        return "fp16 AMP's loss scaler would skip a step for every member when one overflows"
    return None


def _amp_dtype(cfg: TrainConfig) -> torch.dtype:
    """train_encoder's autocast dtype: bf16 unless asked otherwise or unsupported."""
    if cfg.amp_dtype == "fp16":
        return torch.float16
    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def _build_model(cfg: TrainConfig, image_shape: tuple[int, int, int], seed: int) -> SSLMethod:
    """The model train_encoder builds for ``cfg``: same seed, same construction order."""
    seed_everything(seed)
    backbone = create_backbone(cfg.backbone, image_shape[0], image_shape[1])
    params = dict(cfg.framework_params)
    if cfg.temperature is not None:
        params["temperature"] = cfg.temperature
    return create_framework(cfg.framework, backbone, **params)


def _check_batchable(model: nn.Module, device: str, convolutions_on_cpu: bool) -> None:
    """State a vmapped step would not carry (frozen copies, a queue of past batches), or a step
    that would be slower batched: vmap turns M convolutions into one grouped convolution, which
    a CPU runs at half the speed of M separate ones (cnn-small, M = 8: 0.46x on 1 thread, 0.56x
    on 2; the mlp's matmuls gain)."""
    if device == "cpu" and not convolutions_on_cpu:
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]
        if convs:
            raise _NotBatchable(
                "batched convolutions are slower than one model after another on a CPU "
                f"({convs[0]}, ...; batched=True batches them anyway)"
            )
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    if frozen:
        raise _NotBatchable(f"the model has frozen parameters ({frozen[0]}, ...)")
    for name, module in model.named_modules():
        if isinstance(module, MemoryBankModule) and module.size[0] > 0:
            raise _NotBatchable(f"{name} keeps a memory bank of past batches")


def _stacked_optimizer(cfg: TrainConfig, params: list[Tensor]) -> torch.optim.Optimizer:
    """The recipe's optimizer over the stacked parameters, fused where torch has the kernel."""
    try:
        return make_optimizer(cfg, params, fused=True)
    except (RuntimeError, ValueError, TypeError):  # no fused kernel for this device or dtype
        return make_optimizer(cfg, params)


class _Members:
    """The M models: stacked tensors for training, one module per member for its files."""

    def __init__(self, models: list[SSLMethod]) -> None:
        self.models = models
        self.param_names = [name for name, _ in models[0].named_parameters()]
        params, buffers = torch.func.stack_module_state(models)  # type: ignore[arg-type]
        self.params: dict[str, Tensor] = dict(params)
        self.buffers: dict[str, Tensor] = dict(buffers)
        self.base = models[0]  # functional_call borrows its code, never its tensors

        def member_loss(
            p: dict[str, Tensor], b: dict[str, Tensor], views: tuple[Tensor, ...]
        ) -> Tensor:
            return torch.func.functional_call(self.base, (p, b), (list(views),))

        self._losses = torch.func.vmap(member_loss)

    def losses(self, views: tuple[Tensor, ...]) -> Tensor:
        """Each member's loss [M] on its views (each view [M, B, C, H, W])."""
        return self._losses(self.params, self.buffers, views)  # type: ignore[no-any-return]

    def trainable(self) -> list[Tensor]:
        return [self.params[name] for name in self.param_names]

    @torch.no_grad()
    def unstack(self) -> None:
        """Copy the stacked weights and buffers into the member modules (before writing)."""
        for m, model in enumerate(self.models):
            for name, param in model.named_parameters():
                param.copy_(self.params[name][m])
            for name, buffer in model.named_buffers():
                buffer.copy_(self.buffers[name][m])


def _member_optimizer_state(
    stacked: torch.optim.Optimizer, trainable: list[Tensor], member: torch.optim.Optimizer, m: int
) -> None:
    """Load member ``m``'s slice of the stacked optimizer into its own (solo-built) optimizer, so
    that its training state is the one train_encoder would save."""
    groups = member.state_dict()["param_groups"]
    for group in groups:
        group["lr"] = stacked.param_groups[0]["lr"]
    state: dict[int, dict[str, Any]] = {}
    for index, param in enumerate(trainable):
        if param in stacked.state:
            state[index] = {
                key: value[m] if isinstance(value, Tensor) and value.dim() > 0 else value
                for key, value in stacked.state[param].items()
            }
    member.load_state_dict({"state": state, "param_groups": groups})


def _stack_optimizer_states(
    stacked: torch.optim.Optimizer, members: list[torch.optim.Optimizer]
) -> None:
    """Resume: the members' saved optimizer states, stacked into the shared optimizer."""
    states = [opt.state_dict()["state"] for opt in members]
    merged: dict[int, dict[str, Any]] = {}
    for index in states[0]:
        merged[index] = {}
        for key, value in states[0][index].items():
            if isinstance(value, Tensor) and value.dim() > 0:
                merged[index][key] = torch.stack([s[index][key] for s in states])
            else:
                merged[index][key] = value
    stacked.load_state_dict({"state": merged, "param_groups": stacked.state_dict()["param_groups"]})


def _train_batched(
    cfgs: list[TrainConfig],
    saved_metas: list[dict[str, Any] | None],
    *,
    dataset: ImageDataset | None,
    test_dataset: ImageDataset | None,
    on_step: OnStep | None,
    convolutions_on_cpu: bool,
) -> None:
    """The loop of train_encoder, for M members at once (read it side by side with train.py)."""
    cfg = cfgs[0]  # the shared recipe
    size = len(cfgs)
    outs = [Path(c.out) for c in cfgs]
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)

    dataset, image_shape = training_pool(cfg, dataset)
    splits = [_load_split(c, len(dataset)) for c in cfgs]
    for out, meta, split in zip(outs, saved_metas, splits, strict=True):
        if meta is not None and meta.get("split_fingerprint") != split.fingerprint():
            raise LplaError(
                f"the split rebuilt for {out} differs from the saved one; the dataset "
                "changed since the run started: start a new run in another --out"
            )
    member_idx = [
        _member_indices(c, s, o, write=False) for c, s, o in zip(cfgs, splits, outs, strict=True)
    ]
    counts = [len(idx) for idx in member_idx]
    if len(set(counts)) > 1:
        i = next(i for i, n in enumerate(counts) if n != counts[0])
        raise LplaError(
            f"ensemble members must train on as many members each (the same steps per epoch), "
            f"but {outs[0]} has {counts[0]} and {outs[i]} has {counts[i]}; train them separately"
        )
    num_members = counts[0]

    # models: each from its own seed, exactly as train_encoder builds it
    seeds = [training_seed(c) for c in cfgs]
    models = [_build_model(c, image_shape, s) for c, s in zip(cfgs, seeds, strict=True)]  # type: ignore[arg-type]
    _check_batchable(models[0], device, convolutions_on_cpu)
    aug_name = cfg.augmentation or models[0].augmentation
    augment = create_augmentation(
        aug_name,
        image_shape,  # type: ignore[arg-type]
        cfg.aug_strength,
        crop_scale_min=cfg.crop_scale_min,
        jitter=cfg.jitter,
    )
    num_views = cfg.num_views or models[0].num_views
    for model in models:
        model.to(device)
    for out, split, c in zip(outs, splits, cfgs, strict=True):
        out.mkdir(parents=True, exist_ok=True)
        split.save(out / SPLIT_FILE)
        _member_indices(c, split, out, write=True)  # paired halves, as train_encoder writes them
    images = torch.stack([dataset.get_images(idx) for idx in member_idx]).to(device)

    on_cuda = device.startswith("cuda")
    amp_dtype = _amp_dtype(cfg)
    use_amp = on_cuda and cfg.amp
    global_batch, steps_per_epoch, total_steps, warmup_steps = step_schedule(cfg, num_members, 1)

    # per-member optimizers (solo-built): the format of each member's saved training state
    member_opts = [
        make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad]) for model in models
    ]
    counters: list[dict[str, Any]] = [
        {"step": 0, "epoch_loss_sum": 0.0, "epoch_steps": 0, "loss_curve": [], "elapsed_s": 0.0}
        for _ in cfgs
    ]
    for m, saved in enumerate(saved_metas):
        if saved is not None:  # resume: weights, buffers and optimizer state of this member
            load_model_state(outs[m] / MODEL_FILE, models[m])
            counters[m], _ = load_train_state(
                outs[m] / STATE_FILE, model=models[m], optimizer=member_opts[m]
            )
    if len({c["step"] for c in counters}) > 1:
        raise LplaError(f"ensemble members stopped at different steps: {outs}; resume them apart")
    members = _Members(models)
    trainable = members.trainable()
    optimizer = _stacked_optimizer(cfg, trainable)
    if any(meta is not None for meta in saved_metas):
        _stack_optimizer_states(optimizer, member_opts)
    rng_states: list[Tensor | None] = [None] * size

    def restore_rng(m: int) -> None:
        """Global RNGs as member m's solo run holds them after its last step."""
        seed_everything(seeds[m])
        state = rng_states[m]
        if state is not None:
            torch.set_rng_state(state)

    def describe(m: int, finished: bool) -> dict[str, Any]:
        c, model = cfgs[m], models[m]
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": c.to_dict(),
            "seed": c.seed,
            "train_seed": seeds[m],
            "epoch": counters[m]["step"] // steps_per_epoch,
            "epochs": c.epochs,
            "step": counters[m]["step"],
            "total_steps": total_steps,
            "steps_per_epoch": steps_per_epoch,
            "finished": finished,
            "loss_curve": counters[m]["loss_curve"],
            "elapsed_s": round(counters[m]["elapsed_s"], 3),
            "dataset": c.dataset,
            "role": c.role,
            "num_members": num_members,
            "shadow_index": c.shadow_index,
            "num_shadows": c.num_shadows,
            "split_file": SPLIT_FILE,
            "split_fingerprint": splits[m].fingerprint(),
            "framework": c.framework,
            "framework_params": model.params,
            "backbone": c.backbone,
            "feature_dim": int(model.backbone.feature_dim),  # type: ignore[arg-type]
            "image_shape": list(image_shape),
            "augmentation": aug_name,
            "augmentation_params": augment.describe(),
            "num_views": num_views,
            "batch_size": global_batch,
            "device": device,
            "amp": str(amp_dtype).removeprefix("torch.") if use_amp else None,
            "world_size": 1,
            "versions": versions(),
            "utility": None,
            "ensemble": {"size": size, "position": m},
        }

    def save_checkpoints(finished: bool) -> None:
        members.unstack()
        for m, model in enumerate(models):
            _member_optimizer_state(optimizer, trainable, member_opts[m], m)
            restore_rng(m)
            save_model(outs[m] / MODEL_FILE, model)
            save_train_state(
                outs[m] / STATE_FILE,
                model=model,
                optimizer=member_opts[m],
                scaler_state={},  # what a disabled GradScaler (no fp16 AMP) saves
                counters=counters[m],
            )
            write_meta(outs[m], describe(m, finished))  # last: its presence means tensors complete

    autocast = torch.autocast("cuda", dtype=amp_dtype) if use_amp else contextlib.nullcontext()
    stop: dict[str, int] = {}
    start_step = counters[0]["step"]
    resumed_elapsed = [c["elapsed_s"] for c in counters]
    start = time.perf_counter()
    views = tuple(
        torch.empty((size, global_batch, *image_shape), device=device) for _ in range(num_views)
    )
    permutations: list[Tensor] = []
    perm_epoch = -1
    bar = _progress_bar(
        enabled=cfg.progress,
        total=total_steps,
        done=start_step,
        label=f"{cfg.framework}/{cfg.backbone} x{size}",
    )
    for model in models:
        model.train()
    with _stop_on_signals(stop), bar as advance:
        for step in range(start_step, total_steps):
            epoch, position = divmod(step, steps_per_epoch)
            if epoch != perm_epoch:
                permutations = [epoch_permutation(num_members, s, epoch) for s in seeds]
                perm_epoch = epoch
            for m in range(size):  # each member's batch and views from its own streams
                batch = permutations[m][position * global_batch : (position + 1) * global_batch]
                torch.manual_seed(derive_seed(seeds[m], step, 0))  # augmentation randomness
                x = images[m][batch.to(device)].float().div_(255.0)
                for v in range(num_views):
                    views[v][m].copy_(augment.view(v, x))
                rng_states[m] = torch.get_rng_state()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step, total_steps, warmup_steps)

            with autocast:
                losses = members.losses(views)
            values = [float(v) for v in losses.detach().float().tolist()]
            for m, value in enumerate(values):
                if not math.isfinite(value):
                    raise LplaError(
                        f"training loss of {outs[m]} became {value} at step {step} (epoch "
                        f"{epoch}); lower --lr, or pass --no-amp"
                    )
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()  # member m's slice of the gradient is its own gradient
            optimizer.step()

            now = time.perf_counter()
            for m, value in enumerate(values):
                counters[m]["step"] = step + 1
                counters[m]["epoch_loss_sum"] += value
                counters[m]["epoch_steps"] += 1
                counters[m]["elapsed_s"] = resumed_elapsed[m] + now - start
            if (step + 1) % steps_per_epoch == 0:  # an epoch ended
                for run in counters:
                    run["loss_curve"].append(run["epoch_loss_sum"] / run["epoch_steps"])
                    run["epoch_loss_sum"], run["epoch_steps"] = 0.0, 0
                done_epochs = (step + 1) // steps_per_epoch
                if cfg.checkpoint_every and done_epochs % cfg.checkpoint_every == 0:
                    save_checkpoints(finished=False)
            advance(sum(values) / size, (step + 1) // steps_per_epoch)
            if on_step is not None:
                on_step(step, values)

            signum = stop.get("signum", 0)
            if signum and step + 1 < total_steps:
                save_checkpoints(finished=False)
                raise TrainingInterrupted(
                    f"{signal.Signals(signum).name} received: stopped after step {step + 1} of "
                    f"{total_steps} and saved {size} encoders ({outs[0]}, ...); continue with "
                    "resume=True (lpla audit continues them itself)",
                    signum,
                )

    save_checkpoints(finished=True)
    if cfg.utility:
        for m, model in enumerate(models):
            final = describe(m, True)
            final["distributed"] = None  # as train_encoder writes it for a one-process run
            restore_rng(m)
            final["utility"] = _utility(cfgs[m], model.backbone, dataset, test_dataset, device)
            write_meta(outs[m], final)
