"""Attacks at scale: statistics and fit/score streamed from embeddings files of growing N.

For each N (images) x K = 10 views x D = 512 float16, a fresh child process writes a synthetic
embeddings file with ``lpla.embeddings.EmbeddingsWriter`` chunk by chunk (members' embeddings
are 5% longer, so the attacks have a signal to find), then another fresh child opens it with
``open_embeddings`` (memory-mapped; the NaN/inf validation scan is the "open" stage), reduces it
with ``compute_stats`` and fits/scores ``lpla``, ``norm-threshold`` and ``encodermi-t`` (shadow =
first half of the images, target = second half, reference = 10% of each half). Each child
reports seconds per stage and its peak RSS (``ru_maxrss``): the embeddings are never held in
memory, so RSS grows only with the statistics (N x (K + K(K-1)/2) float64 = 440 bytes per
image), not with the 10 KB per image of embeddings. Files are deleted after each N.

Run: ``.venv/bin/python benchmarks/bench_attacks.py [--quick] [--out results.json]``
(``--sizes 10000,100000`` to choose N; the largest N is skipped when the disk is short).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import (
    CHILD_PEAK_RSS,
    RESULTS_DIR,
    machine_info,
    print_table,
    run_child,
    setup_threads,
    write_results,
)

K, D = 10, 512
ATTACKS = ("lpla", "norm-threshold", "encodermi-t")

WRITE_CHILD = r"""
import json, sys, time
import numpy as np
from lpla.embeddings import EmbeddingsWriter
PEAK_RSS
cfg = json.load(sys.stdin)
n, k, d, chunk = cfg["n"], cfg["k"], cfg["d"], cfg["chunk"]
g = np.random.default_rng(0)
member = (np.arange(n) % 2).astype(np.int8)
base = g.standard_normal((chunk, k, d), dtype=np.float32)
t0 = time.perf_counter()
with EmbeddingsWriter(cfg["path"], n, k, d, "float16", member, np.arange(n)) as w:
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        scale = (1.0 + 0.05 * member[start:stop]) * g.lognormal(0.0, 0.1, stop - start)
        rows = np.roll(base, start // chunk, axis=0)[: stop - start] * scale[:, None, None]
        w.write(rows.astype(np.float16))
    t_rows = time.perf_counter() - t0
    w.close()
print(json.dumps({"write_rows_s": t_rows, "write_total_s": time.perf_counter() - t0,
                  "peak_rss_mb": peak_rss_mb()}))
"""

ATTACK_CHILD = r"""
import json, sys, time
import numpy as np
PEAK_RSS
cfg = json.load(sys.stdin)
from lpla.attacks import AttackInput, compute_stats, create_attack
from lpla.embeddings import open_embeddings
from sklearn.metrics import roc_auc_score

rss = peak_rss_mb

out = {"baseline_rss_mb": rss(), "stages": {}}
def stage(name, t0):
    out["stages"][name] = {"s": time.perf_counter() - t0, "peak_rss_mb_so_far": rss()}

t0 = time.perf_counter()
emb = open_embeddings(cfg["path"])
stage("open+validate", t0)
out["is_memmap"] = bool(emb.is_memmap)
t0 = time.perf_counter()
stats = compute_stats(emb.embeddings, p=(2.0,), similarities=("cosine",))
stage("compute_stats", t0)
n = stats.n_images
half = n // 2
member = emb.member
def part(lo, hi):
    ref = stats.subset(np.arange(lo, lo + max(2, (hi - lo) // 10)))
    rows = np.arange(lo, hi)
    return AttackInput(stats.subset(rows), member[rows], emb.index[rows], ref)
shadow, target = part(0, half), part(half, n)
out["auc"] = {}
for name in cfg["attacks"]:
    t0 = time.perf_counter()
    scores = create_attack(name).fit(shadow).score(target)
    stage(f"fit+score {name}", t0)
    out["auc"][name] = float(roc_auc_score(target.member, scores))
out["peak_rss_mb"] = rss()
print(json.dumps(out))
"""
WRITE_CHILD = WRITE_CHILD.replace("PEAK_RSS", CHILD_PEAK_RSS)
ATTACK_CHILD = ATTACK_CHILD.replace("PEAK_RSS", CHILD_PEAK_RSS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "bench_attacks.json")
    parser.add_argument("--sizes", default=None, help="comma-separated N (images)")
    parser.add_argument("--workdir", default=None, help="where the temporary files go")
    parser.add_argument("--reps", type=int, default=None, help="(unused: one run per N)")
    args = parser.parse_args()
    threads = setup_threads()
    if args.sizes:
        sizes = [int(float(s)) for s in args.sizes.split(",")]
    else:
        sizes = [500, 2000] if args.quick else [10_000, 100_000, 1_000_000]
    chunk = 512 if args.quick else 8192
    workdir = Path(tempfile.mkdtemp(prefix="lpla-bench-attacks-", dir=args.workdir))
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    try:
        for n in sizes:
            file_gb = n * K * D * 2 / 1e9
            free_gb = shutil.disk_usage(workdir).free / 1e9
            need_gb = max(25.0, 2.5 * file_gb) if file_gb > 1 else 2.5 * file_gb
            if free_gb < need_gb:  # writer's .npy + the final .npz exist together for a moment
                reason = (
                    f"N={n:,}: needs ~{need_gb:.0f} GB free for a {file_gb:.1f} GB file, "
                    f"{free_gb:.0f} GB free in {workdir}"
                )
                print(f"skipping {reason}", file=sys.stderr)
                skipped.append({"n": n, "reason": reason})
                continue
            path = workdir / f"emb-{n}.npz"
            print(f"N={n:,}: writing {file_gb:.2f} GB ...", file=sys.stderr, flush=True)
            w = run_child(WRITE_CHILD, {"path": str(path), "n": n, "k": K, "d": D, "chunk": chunk})
            size = path.stat().st_size
            print(f"N={n:,}: attacking ...", file=sys.stderr, flush=True)
            a = run_child(ATTACK_CHILD, {"path": str(path), "attacks": list(ATTACKS)})
            path.unlink()
            rows.append(
                {
                    "n": n,
                    "k": K,
                    "d": D,
                    "dtype": "float16",
                    "file_bytes": size,
                    "stats_bytes": n * (K + K * (K - 1) // 2) * 8,
                    "write": w,
                    "attack": a,
                }
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    stage_names = list(rows[0]["attack"]["stages"]) if rows else []
    print_table(
        f"seconds per stage ({threads} torch/BLAS thread(s); K={K}, D={D}, float16 on disk)",
        ["N", "file GB", "write", *stage_names],
        [
            [
                f"{r['n']:,}",
                r["file_bytes"] / 1e9,
                r["write"]["write_total_s"],
                *(r["attack"]["stages"][s]["s"] for s in stage_names),
            ]
            for r in rows
        ],
    )
    print_table(
        "peak RSS of a fresh process per N (MB); statistics = N x 55 float64",
        [
            "N",
            "file MB",
            "writer peak",
            "attack peak",
            "stats MB",
            "interpreter+libs",
            *(f"AUC {a}" for a in ATTACKS),
        ],
        [
            [
                f"{r['n']:,}",
                r["file_bytes"] / 1e6,
                r["write"]["peak_rss_mb"],
                r["attack"]["peak_rss_mb"],
                r["stats_bytes"] / 1e6,
                r["attack"]["baseline_rss_mb"],
                *(r["attack"]["auc"][a] for a in ATTACKS),
            ]
            for r in rows
        ],
    )
    for s in skipped:
        print(f"skipped: {s['reason']}")
    plot = args.out.with_suffix(".png")
    if rows:
        save_plot(rows, stage_names, plot)
    write_results(
        args.out,
        {
            "benchmark": "attacks",
            "machine": machine_info(),
            "threads": threads,
            "quick": bool(args.quick),
            "attacks": list(ATTACKS),
            "sizes": rows,
            "skipped": skipped,
            "plot": plot.name if rows else None,
        },
    )


def save_plot(rows: list[dict[str, Any]], stage_names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lpla.io import atomic_path

    ns = [r["n"] for r in rows]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    ax_t.plot(ns, [r["write"]["write_total_s"] for r in rows], "o-", label="write (writer)")
    for s in stage_names:
        ax_t.plot(ns, [r["attack"]["stages"][s]["s"] for r in rows], "o-", label=s)
    ax_t.set(
        xscale="log",
        yscale="log",
        xlabel="N images (K=10, D=512, float16)",
        ylabel="seconds",
        title="time per stage",
    )
    ax_t.legend(fontsize=7)
    ax_m.plot(ns, [r["file_bytes"] / 1e6 for r in rows], "k--", label="embeddings file size")
    ax_m.plot(ns, [r["write"]["peak_rss_mb"] for r in rows], "o-", label="writer peak RSS")
    ax_m.plot(ns, [r["attack"]["peak_rss_mb"] for r in rows], "o-", label="attack peak RSS")
    ax_m.plot(ns, [r["stats_bytes"] / 1e6 for r in rows], ":", label="statistics size")
    ax_m.set(
        xscale="log",
        yscale="log",
        xlabel="N images",
        ylabel="MB",
        title="peak RSS of a fresh process",
    )
    ax_m.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
