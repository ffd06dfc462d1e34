"""`brainscan export …`: ONNX with a parity check, the FP16 graphs, Triton model repositories
and TensorRT engines; and `brainscan doctor`, which checks a repository's engines against the
server that will load them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer

from brainscan import contract
from brainscan.console import ReportFormat, ReportFormatOption, fail, field_options, with_options
from brainscan.errors import EXIT_FAILED
from brainscan.export import limits
from brainscan.export.repository_spec import RepositorySpec

export_app = typer.Typer(
    rich_markup_mode="markdown", help="Export trained models and write Triton model repositories.", no_args_is_help=True
)


@export_app.command("onnx")
def onnx(
    run: Annotated[Path, typer.Argument(help="Training run folder (holds model.keras and run.json).")],
    out: Annotated[Path | None, typer.Option(help="ONNX file to write (default: RUN/model.onnx).")] = None,
    samples: Annotated[int, typer.Option(help="Validation slices to compare Keras and ONNX Runtime on.")] = 32,
    atol: Annotated[float, typer.Option(help="Largest absolute difference allowed.")] = limits.PARITY_ATOL,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = limits.OPSET,
) -> None:
    """Convert a trained Keras model to its served ONNX graph: the network (dynamic batch),
    checked against Keras on real validation slices (fails, writing nothing, if any output
    differs by more than --atol or any decision changes), with the preprocessing in front and
    the mask head behind, checked against the reference preprocessing on the same slices at
    256x256, 512x512, 240x240 and 150x220 (no decision may change, mean mask Dice >= 0.99).
    For the classifier, the pixel gate is fitted on the run's training slices and limited on
    its validation slices, and the models' intended use is written with it
    (`RUN/intended_use.json`, docs/intended-use.md)."""
    from brainscan.export.onnx import export_run

    target, (network, parity, use) = export_run(run, out, samples, atol=atol, opset=opset)
    for report in (network, parity):
        typer.echo(report.table())
    if use is not None:
        typer.echo("intended use:\n  " + "\n  ".join(use.describe()))
    typer.echo(f"wrote {target}")


def _instance_counts(given: list[str] | None) -> dict[str, int]:
    counts = {}
    for item in given or []:
        model, _, count = item.partition("=")
        if not count.isdigit():
            raise typer.BadParameter(f"{item!r}: write MODEL=N, e.g. preprocess=2", param_hint="--instances")
        counts[model] = int(count)
    return counts


def _spec_options(instances: list[str] | None = None, **options) -> dict:
    return {**options, "instances": _instance_counts(instances)}


@export_app.command("repository")
@with_options(field_options(RepositorySpec, instances=(list[str] | None, None)), "spec", _spec_options)
def repository(
    out: Annotated[Path, typer.Option("--repository", help="Repository folder to write.")] = contract.demo_repository(),
    old_out: Annotated[Path | None, typer.Option("--out", hidden=True, help="The old name of --repository.")] = None,
    classifier: Annotated[Path | None, typer.Option(help="Classifier ONNX (default: the demo's, if built).")] = None,
    segmenter: Annotated[Path | None, typer.Option(help="Segmenter ONNX (default: the demo's, if built).")] = None,
    spec: dict | None = None,
) -> None:
    """Write a Triton model repository whose `brainscan` ensemble runs preprocess (decode) ->
    classifier and segmenter (served graphs: resize, scaling and the mask inside). Configs
    are generated from the contract and checked against Triton's ModelConfig schema."""
    out = old_out or out
    from brainscan.export.repository import validate_repository, write_repository

    def default(given: Path | None, task: str) -> Path | None:
        if given is not None:
            if not given.exists():
                fail(f"{given} does not exist")
            return given
        candidate = contract.demo_run(task) / "model.onnx"
        return candidate if candidate.exists() else None

    options = dict(spec or {})
    flavour = options.pop("flavour")
    classifier_onnx, segmenter_onnx = default(classifier, "classifier"), default(segmenter, "segmenter")
    write_repository(out, flavour, classifier_onnx, segmenter_onnx, **options)
    validate_repository(out)
    missing = [name for name, path in (("classifier", classifier_onnx), ("segmenter", segmenter_onnx)) if path is None]
    typer.echo(f"wrote the {flavour} repository to {out}")
    if missing and flavour is not contract.Flavour.TENSORRT:
        typer.echo(f"note: no ONNX given for {', '.join(missing)}: add it before serving", err=True)


S3Location = Annotated[
    str,
    typer.Argument(help="s3://bucket/path, or s3://http(s)://host:port/bucket/path for an S3-compatible server."),
]


@export_app.command("upload")
def upload(
    folder: Annotated[
        Path,
        typer.Argument(
            help=(
                "A model repository (checked first, weights included), or any folder, e.g. the ONNX and validation "
                "slices the engine-build Job reads."
            )
        ),
    ],
    destination: S3Location,
) -> None:
    """Copy a folder to S3-compatible object storage. A model repository (a folder holding
    the `brainscan` ensemble) is checked first and its configs written last; Triton then
    reads it with `brainscan serve --repository s3://…`. Credentials come from
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_DEFAULT_REGION for AWS itself), never
    from the command line."""
    from brainscan.export.repository import RepositoryError, flavour_of, validate_repository
    from brainscan.storage import upload as upload_folder

    if not folder.is_dir():
        fail(f"{folder} is not a folder")
    note = ""
    if (folder / contract.ENSEMBLE / "config.pbtxt").exists():
        try:
            validate_repository(folder, require_weights=True)
        except RepositoryError:
            # a tensorrt repository may go up without engines: the engine-build Job adds them there
            if flavour_of(validate_repository(folder)) is not contract.Flavour.TENSORRT:
                raise
            note = (
                f"; it has no engines yet: build them into the bucket with `brainscan export tensorrt "
                f"--repository {destination}` on each GPU kind (docs/fleet.md)"
            )
    keys = upload_folder(folder, destination)
    typer.echo(f"uploaded {len(keys)} files to {destination}{note}")


@export_app.command("download")
def download(
    source: S3Location,
    folder: Annotated[Path, typer.Argument(help="Folder to write (created; existing files are replaced).")],
) -> None:
    """Copy everything under an s3:// location into a folder (credentials as for upload)."""
    from brainscan.storage import download as download_folder

    download_folder(source, folder)
    typer.echo(f"downloaded {source} to {folder}")


GateProbDiff = Annotated[
    float, typer.Option("--max-prob-diff", help="Gate: largest tumour-probability difference FP16 vs FP32.")
]
GateMaskDice = Annotated[
    float, typer.Option("--min-mask-dice", help="Gate: smallest mean Dice of FP16 masks against FP32 masks.")
]
Samples = Annotated[int, typer.Option(help="Validation slices the FP16 gate runs on.")]
ValidationData = Annotated[
    Path | None,
    typer.Option("--data", help="Validation images for the FP16 gate (default: the run's validation patients)."),
]


def _tolerances(max_prob_diff: float, min_mask_dice: float):
    from brainscan.export.gate import Tolerances

    return Tolerances(classifier_max_abs_diff=max_prob_diff, segmenter_min_dice_vs_fp32=min_mask_dice)


@export_app.command("fp16")
def fp16(
    run: Annotated[Path, typer.Argument(help="Training run folder holding model.onnx, or an ONNX file.")],
    keep_fp32: Annotated[
        list[str] | None,
        typer.Option(help="Keep matching nodes in FP32: a node-name glob, or op:TYPE (e.g. op:Sigmoid). Repeatable."),
    ] = None,
    data: ValidationData = None,
    samples: Samples = 64,
    max_prob_diff: GateProbDiff = limits.FP16_MAX_PROB_DIFF,
    min_mask_dice: GateMaskDice = limits.FP16_MIN_MASK_DICE,
    out: Annotated[
        Path | None, typer.Option(help="FP16 ONNX to write (default: model.fp16.onnx beside the source).")
    ] = None,
    list_nodes: Annotated[
        bool, typer.Option("--list-nodes", help="Print the graph's nodes (name and op type, for --keep-fp32) and exit.")
    ] = False,
) -> None:
    """Write the FP16 graph of a served network: FP16 weights and compute, its inputs and
    outputs in their own types, the preprocessing and mask head and chosen nodes kept in
    FP32. The FP16 gate runs first, on CPU with ONNX Runtime, against the FP32 graph on real
    validation slices; nothing is written if it fails. TensorRT engines and ONNX Runtime's
    TensorRT provider are built from this graph."""
    import onnx

    from brainscan.export.fp16 import export_fp16, graph_nodes
    from brainscan.export.served_graph import network_of
    from brainscan.export.validation import validation_inputs

    source = run / "model.onnx" if run.is_dir() else run
    if not source.is_file():
        fail(f"{source} does not exist: export the run first with `brainscan export onnx {run}`")
    model = onnx.load(str(source))
    if list_nodes:
        for name, op in graph_nodes(model):
            typer.echo(f"{op:<16} {name}")
        return
    network = network_of(model)
    inputs = validation_inputs(network, source, data, samples)
    result = export_fp16(source, inputs, tuple(keep_fp32 or ()), _tolerances(max_prob_diff, min_mask_dice), out)
    typer.echo(result.report.table())
    typer.echo(result.summary())
    typer.echo(f"wrote {result.path}")


@export_app.command("tensorrt")
def tensorrt(
    repository: Annotated[
        str,
        typer.Option(
            help=(
                "tensorrt-flavour repository whose version folders get the engines of this GPU (model.smXY.plan): a "
                "folder, or s3://… (engines and configs are published there)."
            )
        ),
    ] = str(contract.PRODUCTION_REPOSITORY),
    classifier: Annotated[
        Path | None,
        typer.Option(help="Classifier FP32 ONNX; its model.fp16.onnx beside it is built (default: the demo's)."),
    ] = None,
    segmenter: Annotated[
        Path | None,
        typer.Option(help="Segmenter FP32 ONNX; its model.fp16.onnx beside it is built (default: the demo's)."),
    ] = None,
    data: ValidationData = None,
    samples: Samples = 64,
    workspace_mib: Annotated[
        int, typer.Option(help="TensorRT workspace memory-pool limit, MiB.")
    ] = limits.WORKSPACE_MIB,
    opt_batch: Annotated[
        int | None, typer.Option(help="Optimum batch of the profile (default: the config's max_batch_size).")
    ] = None,
    timing_cache: Annotated[
        Path | None, typer.Option(help="Timing cache reused across builds (one file per TensorRT version and GPU).")
    ] = None,
    max_prob_diff: GateProbDiff = limits.FP16_MAX_PROB_DIFF,
    min_mask_dice: GateMaskDice = limits.FP16_MIN_MASK_DICE,
) -> None:
    """Build strongly typed TensorRT engines (TensorRT 10.12+ or 11.x) from the FP16 ONNX
    graphs into a tensorrt-flavour repository, gate each engine on real validation slices
    against the FP32 ONNX, and write the plans named after this GPU's compute capability
    (listed in the configs' cc_model_filenames, beside other GPUs' engines) only when every
    gate passes. Needs a GPU and TensorRT: run it in the export container (docker compose -f
    docker/compose.yaml run --rm export)."""
    from brainscan.export.tensorrt import (
        BuildSettings,
        TensorRT,
        build_into_bucket,
        build_repository_engines,
    )
    from brainscan.export.validation import validation_inputs

    toolkit = TensorRT()
    onnx = {}
    for network, given in ((contract.CLASSIFIER, classifier), (contract.SEGMENTER, segmenter)):
        path = given or contract.demo_run(network) / "model.onnx"
        if not path.exists():
            fail(f"{path} does not exist: run `make demo` first or pass --{network} FILE")
        onnx[network] = path
    settings = BuildSettings(
        workspace_mib=workspace_mib, timing_cache=timing_cache or contract.artifacts_dir() / "tensorrt" / "timing.cache"
    )
    from brainscan.storage import is_s3

    def build(local: Path) -> None:
        build_repository_engines(
            local,
            inputs,
            settings,
            _tolerances(max_prob_diff, min_mask_dice),
            opt_batch,
            toolkit=toolkit,
            log=typer.echo,
        )

    inputs = {network: validation_inputs(network, path, data, samples) for network, path in onnx.items()}
    if is_s3(repository):
        build_into_bucket(repository, build, toolkit.gpu().compute_capability, log=typer.echo)
    else:
        build(Path(repository))
    typer.echo(f"engines ready in {repository}: serve them with `{contract.SERVE_ON_GPU}`")


def doctor(
    repository: Annotated[
        str,
        typer.Option(
            envvar="BRAINSCAN_REPOSITORY",
            help="Model repository to check: a folder or s3://… (configs and engine records are read, no weights).",
        ),
    ] = str(contract.PRODUCTION_REPOSITORY),
    tensorrt_version: Annotated[
        str | None,
        typer.Option(
            help="TensorRT version of the target server (default: found here, else the pinned NGC release's)."
        ),
    ] = None,
    compute_capability: Annotated[
        str | None, typer.Option(help="Compute capability of the target GPU, e.g. 9.0 (default: nvidia-smi here).")
    ] = None,
    sources: Annotated[
        list[Path] | None,
        typer.Option(
            "--sources",
            envvar="BRAINSCAN_SOURCES",
            help=(
                "Folder of training runs (`<network>/model.fp16.onnx`) to compare the engines' source ONNX with when "
                "the path their record holds is not here, e.g. the runs mounted into the server container; "
                "repeatable."
            ),
        ),
    ] = None,
    fmt: ReportFormatOption = ReportFormat.TEXT,
) -> None:
    """Check that a repository's TensorRT engines fit the server that will load them: same
    TensorRT version, same GPU compute capability, optimization profile equal to the config, built
    from the current ONNX. Says what to rebuild; exits 1 on any mismatch. Shows the intended use
    the served classifier declares to clients."""
    from brainscan.export.doctor import Status, advice, declared_use, detect_target, diagnose, table
    from brainscan.storage import local_view

    target = detect_target(tensorrt_version, compute_capability)
    with local_view(repository) as local:
        findings = diagnose(local, target, sources=sources or [])
        use = declared_use(local)
    if str(local) != repository:  # name the bucket, not the skeleton the checks ran on
        for finding in findings:
            finding.detail = finding.detail.replace(str(local), repository)
    verdict = advice(findings, repository) or "the repository is not servable (see above)"
    if fmt is ReportFormat.JSON:
        bad = any(f.bad for f in findings)
        typer.echo(
            json.dumps(
                {
                    "repository": repository,
                    "servable": not bad,
                    "advice": verdict if bad else None,
                    "findings": [dataclasses.asdict(f) for f in findings],
                    "intended_use": use.as_dict() if use else None,
                }
            )
        )
        if bad:
            raise typer.Exit(EXIT_FAILED)
        return
    typer.echo(table(findings))
    typer.echo(
        "intended use the classifier declares:\n  " + "\n  ".join(use.describe())
        if use
        else "intended use: none declared yet (written with the classifier's graph: `brainscan export repository`, "
        "or `export tensorrt` for a tensorrt repository)"
    )
    if any(f.bad for f in findings):
        fail(verdict)
    skipped = [f for f in findings if f.status == Status.NOT_CHECKED]
    typer.echo(
        f"{repository}: no mismatch found"
        + (f" ({len(skipped)} checks skipped: nothing to compare with here)" if skipped else "")
    )
