"""`brainscan export …`: ONNX with a parity check, and Triton model repositories."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from brainscan import contract
from brainscan.console import fail

export_app = typer.Typer(help="Export trained models and write Triton model repositories.", no_args_is_help=True)


@export_app.command("onnx")
def onnx(
    run: Annotated[Path, typer.Argument(help="Training run folder (holds model.keras and run.json).")],
    out: Annotated[Path | None, typer.Option(help="ONNX file to write (default: RUN/model.onnx).")] = None,
    samples: Annotated[int, typer.Option(help="Validation slices to compare Keras and ONNX Runtime on.")] = 32,
    atol: Annotated[float, typer.Option(help="Largest absolute difference allowed.")] = 1e-4,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 17,
) -> None:
    """Convert a trained Keras model to ONNX (dynamic batch) and check it against Keras on
    real validation slices; fails, writing nothing, if any output differs by more than
    --atol or any decision changes."""
    from brainscan.export.onnx import ParityError, export_onnx
    from brainscan.train import datasets
    from brainscan.train.training import load_model, load_run, split_samples

    try:
        config = load_run(run)
        validation = split_samples(config)["val"][:samples]
        images = datasets.load_images(validation, config.image_size)
        model = load_model(Path(run) / "model.keras")
        target = out or Path(run) / "model.onnx"
        report = export_onnx(model, target, images, atol=atol, opset=opset)
    except ParityError as exc:
        fail(str(exc))
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    typer.echo(report.table())
    typer.echo(f"wrote {target}")


@export_app.command("repository")
def repository(
    out: Annotated[Path, typer.Option(help="Repository folder to write.")] = contract.demo_repository(),
    flavour: Annotated[str, typer.Option(help="local (python+ONNX Runtime, no GPU), onnxruntime, or tensorrt.")] = "local",
    classifier: Annotated[Path | None, typer.Option(help="Classifier ONNX (default: the demo's, if built).")] = None,
    segmenter: Annotated[Path | None, typer.Option(help="Segmenter ONNX (default: the demo's, if built).")] = None,
    max_batch_size: Annotated[int, typer.Option(help="max_batch_size of every model.")] = contract.MAX_BATCH_SIZE,
    ort_threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads per model instance.")] = 1,
) -> None:
    """Write a Triton model repository whose `brainscan` ensemble runs preprocess ->
    classifier and segmenter -> postprocess. Configs are generated from the contract and
    checked against Triton's ModelConfig schema."""
    from brainscan.export.repository import RepositoryError, validate_repository, write_repository

    def default(given: Path | None, task: str) -> Path | None:
        if given is not None:
            if not given.exists():
                fail(f"{given} does not exist")
            return given
        candidate = contract.demo_run(task) / "model.onnx"
        return candidate if candidate.exists() else None

    classifier_onnx, segmenter_onnx = default(classifier, "classifier"), default(segmenter, "segmenter")
    try:
        write_repository(out, flavour, classifier_onnx, segmenter_onnx, max_batch_size=max_batch_size, ort_threads=ort_threads)
        validate_repository(out)
    except RepositoryError as exc:
        fail(str(exc))
    missing = [name for name, path in (("classifier", classifier_onnx), ("segmenter", segmenter_onnx)) if path is None]
    typer.echo(f"wrote the {flavour} repository to {out}")
    if missing and flavour != "tensorrt":
        typer.echo(f"note: no ONNX given for {', '.join(missing)}: add it before serving", err=True)
