"""report.md and plots from a benchmark's summary (``summary.BenchSummary``)."""

from __future__ import annotations

from pathlib import Path

from brainscan import contract
from brainscan.benchmarks.summary import BenchSummary
from brainscan.tables import markdown_table

# Targets on the 2-core CPU with the local flavour (issue: "make serving nearly free").
TARGET_SERVED_VS_IN_PROCESS = 0.9
TARGET_P50_GAP_MS = 3.0
TARGET_SERVED_VS_KERAS = 10.0
# H100 SXM, dense FP16 tensor-core peak (NVIDIA's datasheet: 989 TFLOP/s; 1979 with sparsity).
H100_FP16_DENSE_FLOPS = 989e12


def _ms(us: float) -> str:
    return f"{us / 1e3:.2f}"


def headline(summary: BenchSummary) -> dict:
    """The numbers the targets are about."""
    rows = summary.served[contract.ENSEMBLE]["rows"]
    best = max(rows, key=lambda r: r["Inferences/Second"])
    at_one = next((r for r in rows if r["Concurrency"] == 1), rows[0])
    keras = summary.keras
    out = {
        "served_best": best["Inferences/Second"],
        "served_best_concurrency": int(best["Concurrency"]),
        "served_p50_c1_ms": at_one["p50 latency"] / 1e3,
    }
    in_process = summary.in_process
    if not in_process:  # no ONNX of the served networks here: the load test alone
        return out
    best_in_process = max(in_process, key=lambda b: b["images_per_s"])
    batch_one = min((b for b in in_process if b["batch"] == 1), key=lambda b: b["p50_ms"])
    out["in_process_best"] = best_in_process["images_per_s"]
    out["in_process_best_setting"] = f"batch {best_in_process['batch']}, {best_in_process['threads']} thread(s)"
    out["in_process_p50_b1_ms"] = batch_one["p50_ms"]
    out["served_vs_in_process"] = out["served_best"] / out["in_process_best"]
    out["p50_gap_ms"] = out["served_p50_c1_ms"] - out["in_process_p50_b1_ms"]
    if keras:
        out["keras"] = keras["images_per_s"]
        out["served_vs_keras"] = out["served_best"] / keras["images_per_s"]
    return out


def plots(folder: Path, summary: BenchSummary) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary.served[contract.ENSEMBLE]["rows"]
    conc = [r["Concurrency"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(conc, [r["Inferences/Second"] for r in rows], "o-", label=f"served ({contract.ENSEMBLE} ensemble)")
    if summary.in_process:
        best = max(b["images_per_s"] for b in summary.in_process)
        ax.axhline(best, color="grey", linestyle="--", label="in-process ONNX Runtime, best")
    ax.set(xlabel="concurrency (requests in flight)", ylabel="images / s", title="Throughput")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "throughput.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("p50 latency", "p90 latency", "p99 latency"):
        ax.plot(conc, [r[key] / 1e3 for r in rows], "o-", label=key.split()[0])
    ax.set(xlabel="concurrency (requests in flight)", ylabel="latency, ms", title="Latency of the ensemble")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "latency.png", dpi=110)
    plt.close(fig)
    return ["throughput.png", "latency.png"]


def _heading(summary: BenchSummary) -> list[str]:
    """What was measured, where, and against what."""
    served = ", ".join(f"{n} {p}" for n, p in summary.served_platforms.items()) or "unknown"
    parts = [
        f"# brainscan benchmark, {summary.date} on {summary.host}",
        f"Server `{summary.url}` (networks: {served}), repository `{summary.repository or 'not here'}`, "
        f"{summary.files} real image files. perf_analyzer over gRPC in count-windows mode; "
        + (
            "baselines in the same run, same files, same preprocessing function."
            if summary.in_process
            else "no in-process baselines (no ONNX of the served networks here)."
        ),
        "",
    ]
    return parts


def _under_load(summary: BenchSummary, images: list) -> list[str]:
    """The ensemble's sweep: throughput and latency per concurrency, and its plots."""
    ens = summary.served[contract.ENSEMBLE]
    parts = [
        "## The ensemble under load",
        "",
        markdown_table(
            ["concurrency", "images/s", "p50 ms", "p90 ms", "p99 ms"],
            [
                [
                    int(r["Concurrency"]),
                    f"{r['Inferences/Second']:.1f}",
                    _ms(r["p50 latency"]),
                    _ms(r["p90 latency"]),
                    _ms(r["p99 latency"]),
                ]
                for r in ens["rows"]
            ],
        ),
        "",
        *[f"![{i}]({i})" for i in images],
        "",
    ]
    return parts


def _where_time_goes(summary: BenchSummary) -> list[str]:
    """Triton's own statistics of each model during the ensemble's sweep."""
    ens = summary.served[contract.ENSEMBLE]
    parts = [
        "## Where the time goes (Triton's statistics during the ensemble sweep, µs per request)",
        "",
        markdown_table(
            ["model", "requests", "failed", "avg batch", "queue", "compute input", "compute infer", "compute output"],
            [
                [
                    m,
                    s["requests"],
                    s["failed"],
                    f"{s['avg_batch']:.2f}",
                    f"{s['queue_us']:.0f}",
                    f"{s['compute_input_us']:.0f}",
                    f"{s['compute_infer_us']:.0f}",
                    f"{s['compute_output_us']:.0f}",
                ]
                for m, s in ens["server"].items()
            ],
        ),
        "",
    ]
    return parts


def _composing_alone(summary: BenchSummary) -> list[str]:
    """Each composing model's best, swept alone."""
    parts: list[str] = []
    composing = [m for m in contract.COMPOSING_MODELS if m in summary.served]
    if composing:
        parts += [
            "## Each composing model alone (best over its sweep)",
            "",
            markdown_table(
                ["model", "images/s", "at concurrency", "p50 ms at concurrency 1"],
                [
                    [
                        m,
                        f"{max(r['Inferences/Second'] for r in summary.served[m]['rows']):.1f}",
                        int(max(summary.served[m]["rows"], key=lambda r: r["Inferences/Second"])["Concurrency"]),
                        _ms(summary.served[m]["rows"][0]["p50 latency"]),
                    ]
                    for m in composing
                ],
            ),
            "",
        ]
    return parts


def _against_in_process(summary: BenchSummary, numbers: dict) -> list[str]:
    """Baselines, ratios against their targets, FLOPs and a GPU on paper (needs the served
    networks' ONNX here)."""
    parts: list[str] = []
    base_rows = [
        [b["name"], b["batch"], b["threads"], f"{b['images_per_s']:.1f}", f"{b['p50_ms']:.2f}"]
        for b in summary.in_process
    ]
    if summary.keras:
        k = summary.keras
        base_rows.append([k["name"], 1, "TF default", f"{k['images_per_s']:.1f}", f"{k['p50_ms']:.2f}"])
    parts += [
        "## Baselines (same files, same preprocessing)",
        "",
        markdown_table(["baseline", "batch", "threads", "images/s", "p50 ms per call"], base_rows),
        "",
    ]
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    rows = [
        [
            "served / in-process throughput",
            f"{numbers['served_vs_in_process']:.2f}",
            f">= {TARGET_SERVED_VS_IN_PROCESS}",
            verdict(numbers["served_vs_in_process"] >= TARGET_SERVED_VS_IN_PROCESS),
        ],
        [
            "p50 at concurrency 1 minus in-process batch 1 (ms)",
            f"{numbers['p50_gap_ms']:.2f}",
            f"<= {TARGET_P50_GAP_MS}",
            verdict(numbers["p50_gap_ms"] <= TARGET_P50_GAP_MS),
        ],
    ]
    if "served_vs_keras" in numbers:
        rows.append(
            [
                "served / Keras predict throughput",
                f"{numbers['served_vs_keras']:.1f}",
                f">= {TARGET_SERVED_VS_KERAS}",
                verdict(numbers["served_vs_keras"] >= TARGET_SERVED_VS_KERAS),
            ]
        )
    parts += [
        "## Ratios and targets",
        "",
        f"Served best: {numbers['served_best']:.1f} images/s at concurrency {numbers['served_best_concurrency']}; "
        f"in-process best: {numbers['in_process_best']:.1f} images/s ({numbers['in_process_best_setting']}).",
        "",
        markdown_table(["ratio", "value", "target", "verdict"], rows),
        "",
        "Served can beat in-process: Triton runs the three steps in separate processes with their own "
        "queues, so one image's preprocessing overlaps another's segmentation on the other core, while the "
        "in-process loop runs the steps one after another (and more ONNX Runtime threads per session only "
        "oversubscribe 2 cores: see the 2-thread rows).",
        "",
    ]
    return parts


def _flops(summary: BenchSummary, numbers: dict) -> list[str]:
    """What the networks compute per image, what the served best achieved, and a GPU's bound."""
    flops = summary.flops_per_image
    total = sum(flops.values())
    parts = [
        "## FLOPs",
        "",
        markdown_table(
            ["network", "GFLOP per image", "achieved GFLOP/s served (best)"],
            [[n, f"{f / 1e9:.3f}", f"{f * numbers['served_best'] / 1e9:.1f}"] for n, f in flops.items()]
            + [["both", f"{total / 1e9:.3f}", f"{total * numbers['served_best'] / 1e9:.1f}"]],
        ),
        "",
        "## A GPU on paper",
        "",
        f"An H100 SXM peaks at {H100_FP16_DENSE_FLOPS / 1e12:.0f} TFLOP/s in dense FP16: at "
        f"{total / 1e9:.2f} GFLOP per image that bounds the two networks at "
        f"{H100_FP16_DENSE_FLOPS / total:,.0f} images/s. MobileNet's depthwise convolutions are memory-bound and "
        "reach a small fraction of the tensor-core peak, and the python preprocess (CPU decode) will bound the "
        "ensemble well before the engines do (`brainscan bench ceiling`); measure with the perf_analyzer commands "
        "of docs/benchmarks.md, 'A GPU server' (`-m classifier`, `-m segmenter` for the engines alone, "
        "`-m brainscan` for the whole ensemble):",
        "",
        "```bash",
        f"{contract.COMPOSE} run --rm sdk perf_analyzer -m brainscan -u triton:8001 -i grpc \\",
        "    --input-data artifacts/perf/input.json --concurrency-range 1:64:8 \\",
        "    --measurement-mode count_windows --measurement-request-count 2000 -f artifacts/perf/gpu.csv",
        "# the engines alone: input data for classifier/segmenter from `brainscan bench run`'s raw/ folder",
        f"{contract.COMPOSE} run --rm sdk perf_analyzer -m segmenter -u triton:8001 -i grpc \\",
        "    --input-data benchmarks/results/<run>/raw/input-segmenter.json -b 8 --concurrency-range 1:16:4",
        "```",
        "",
    ]
    return parts


def write_report(folder: Path, summary: BenchSummary) -> Path:
    numbers = headline(summary)
    parts = [
        *_heading(summary),
        *_under_load(summary, plots(folder, summary)),
        *_where_time_goes(summary),
        *_composing_alone(summary),
        *(_against_in_process(summary, numbers) if summary.in_process else []),
        *(_flops(summary, numbers) if summary.in_process else []),
    ]
    if summary.notes:
        parts += ["## Notes", "", *[f"- {n}" for n in summary.notes], ""]
    path = Path(folder) / "report.md"
    path.write_text("\n".join(parts))
    return path
