"""The ceiling benchmark's report (``ceiling.md``) from its summary."""

from __future__ import annotations

from brainscan import contract
from brainscan.benchmarks.series import series_table
from brainscan.tables import markdown_table

PREVIOUS_POSTPROCESS = "postprocess"  # the python-steps design's fourth model


def best(rows: list[dict]) -> dict:
    return max(rows, key=lambda r: r["Inferences/Second"])


def _introduction(summary: dict) -> list[str]:
    """The title, what ran, and the first section's heading."""
    free = summary.get("networks", "free") == "free"
    title = "The ensemble's ceiling with free networks" if free else "The designs with the trained networks"
    networks = (
        "the networks replaced by free ones (same tensors, a mean and a sigmoid or a threshold)"
        if free
        else f"the trained networks ({', '.join(summary['networks'].values())})"
    )
    lines = [
        f"# {title}, {summary['date']} on {summary['host']}",
        "",
        f"{summary['cores']} cores; {summary['files']} real image files; {networks}; "
        "local flavour served by the embedded Triton on loopback; perf_analyzer sweeps the ensemble over gRPC in "
        "count-windows mode. Designs: python-steps "
        "(python preprocess resizes and scales, python postprocess brings the mask back), in-graph "
        "(python preprocess only decodes; the networks' graphs do the rest, as a GPU runs them)"
        + (
            ""
            if free
            else " and local (the local flavour as written: in-graph, its python network runners resizing, "
            "stretching and making the mask with OpenCV)"
        )
        + ".",
        "",
        "## CPU ms per image outside the networks (tritonserver and the python steps)",
        "",
    ]
    return lines


def _outside_networks(summary: dict) -> list[str]:
    """CPU ms per image outside the networks, per design and number of python instances."""
    lines: list[str] = []
    designs = summary_designs(summary)
    outside = {(r["instances"], r["design"]): f"{r['outside_networks_ms']:.2f}" for r in summary["runs"]}
    counts = sorted({r["instances"] for r in summary["runs"]})
    lines.append(
        markdown_table(
            ["python instances", *designs], [[n, *(outside.get((n, d), "-") for d in designs)] for n in counts]
        )
    )
    return lines


def _throughput(summary: dict) -> list[str]:
    """Each run's best throughput and its latency at the lowest concurrency."""
    throughput = []
    for run in summary["runs"]:
        top, first = best(run["rows"]), run["rows"][0]
        throughput.append(
            [
                run["design"],
                run["instances"],
                f"{top['Inferences/Second']:.1f}",
                int(top["Concurrency"]),
                f"{first['p50 latency'] / 1e3:.2f}",
            ]
        )
    header = ["design", "python instances", "best images/s", "at concurrency", "p50 ms at the lowest concurrency"]
    lines = ["", "## Throughput", "", markdown_table(header, throughput)]
    return lines


def _cpu_by_process(summary: dict) -> list[str]:
    """CPU per image of every process, from /proc."""
    steps = ["tritonserver", contract.PREPROCESS, *contract.NETWORKS, PREVIOUS_POSTPROCESS]
    cpu_rows = []
    for run in summary["runs"]:
        cpu = run["cpu_ms_per_image"]
        cells = [f"{cpu[s]:.2f}" if s in cpu else "-" for s in steps]
        cpu_rows.append([run["design"], run["instances"], *cells, f"{sum(cpu.values()):.2f}"])
    lines = [
        "",
        "## CPU per image (ms) of every process, from /proc, over each sweep",
        "",
        markdown_table(["design", "python instances", *steps, "total"], cpu_rows),
    ]
    return lines


def _triton_statistics(summary: dict) -> list[str]:
    """Triton's statistics of each model during each sweep."""
    fields = ("queue_us", "compute_input_us", "compute_infer_us", "compute_output_us")
    stats_rows = []
    for run in summary["runs"]:
        for model in (*contract.COMPOSING_MODELS, PREVIOUS_POSTPROCESS):
            s = run["server"].get(model)
            if s:
                stats_rows.append(
                    [run["design"], run["instances"], model, f"{s['avg_batch']:.2f}", *(f"{s[f]:.0f}" for f in fields)]
                )
    header = ["design", "python instances", "model", "avg batch", "queue", "compute input", "compute infer"]
    lines = [
        "",
        "## Triton's statistics during each sweep (µs per request)",
        "",
        markdown_table([*header, "compute output"], stats_rows),
    ]
    return lines


def _series(summary: dict) -> list[str]:
    """A series' CPU per slice through the PNG path and the pixels path."""
    lines: list[str] = []
    if summary.get("series"):
        lines += [
            "",
            "## A series: CPU ms per slice, the PNG path and the pixels path",
            "",
            "One volume's slices sent as `brainscan predict` sends them (4 requests in flight): one 16-bit PNG per "
            "slice through `brainscan` (encoded by the client, decoded by `preprocess`), or raw through "
            "`brainscan_pixels`, the server's batch a request, over gRPC (pixels) or through system shared memory "
            "(pixels-shm, `--shared-memory`). The client's CPU is this process's, encoding and "
            "gRPC included; the networks are free ones, run in their python stubs here.",
            "",
        ]
        rows = series_table(summary["series"])
        lines.append(markdown_table(rows[0], rows[1:]))
    return lines


def report(summary: dict) -> str:
    sections = (_introduction, _outside_networks, _throughput, _cpu_by_process, _triton_statistics, _series)
    return "\n".join(line for section in sections for line in section(summary)) + "\n"


def summary_designs(summary: dict) -> list[str]:
    return list(dict.fromkeys(r["design"] for r in summary["runs"]))
