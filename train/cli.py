"""`brainscan data …` and `brainscan train …`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from brainscan import contract
from brainscan.client.options import with_connection
from brainscan.console import DataDir, Seed, with_options
from brainscan.train.choices import DEFAULTS, Architecture, Look, Split, Weights

data_app = typer.Typer(rich_markup_mode="markdown", help="Make and inspect datasets.", no_args_is_help=True)
train_app = typer.Typer(
    rich_markup_mode="markdown", help="Train the classifier or the segmenter.", no_args_is_help=True
)

Size = Annotated[int, typer.Option(help="Square input size of the network, in pixels.")]
Epochs = Annotated[int, typer.Option(help="Training epochs.")]
BatchSize = Annotated[int, typer.Option(help="Images per training step.")]
LearningRate = Annotated[float, typer.Option(help="Adam learning rate.")]
WeightsOption = Annotated[Weights, typer.Option(help="Backbone initialisation (imagenet downloads).")]
Alpha = Annotated[float, typer.Option(help="MobileNet width multiplier (0.35, 0.5, 0.75, 1.0).")]
Ema = Annotated[bool, typer.Option(help="Validate and keep an exponential moving average of the weights.")]
RunDir = Annotated[Path, typer.Option("--out", help="Run folder: model.keras, metrics.json, curves.png, run.json.")]


@data_app.command("phantom")
def phantom(
    out: Annotated[Path, typer.Option(help="Folder to write `<patient>/<patient>_<k>.tif` and `_mask.tif` into.")],
    patients: Annotated[int, typer.Option(help="Number of synthetic patients.")] = 120,
    seed: Seed = 0,
    slices_per_patient: Annotated[int, typer.Option(help="Axial slices per patient.")] = 10,
    tumour_fraction: Annotated[float, typer.Option(help="Share of patients with a tumour.")] = 0.8,
    look: Annotated[
        Look, typer.Option(help="mr (T1-weighted MR), or ct: the same anatomy as a head CT in a brain window.")
    ] = Look.MR,
) -> None:
    """Write a synthetic brain-MRI dataset (kaggle_3m layout) from the MNI152 T1 volume, and
    `dataset.json` beside it: what the slices are, which the models' intended use is declared from."""
    from brainscan.train.phantom import write_phantom_dataset

    files = write_phantom_dataset(out, patients, seed, slices_per_patient, tumour_fraction, str(look))
    typer.echo(f"wrote {len(files)} slices of {patients} patients to {out}")


@data_app.command("dicom")
def dicom(
    patient: Annotated[Path, typer.Argument(help="A phantom patient's folder (`<patient>_<k>.tif` slices).")],
    out: Annotated[Path, typer.Option(help="Folder to write the series into (NNNN.dcm).")],
) -> None:
    """Write one phantom patient as an MR DICOM series (to try the SEG/SR output and a PACS)."""
    from brainscan.train.phantom_dicom import write_phantom_series

    files = write_phantom_series(patient, out)
    typer.echo(f"wrote an MR series of {len(files)} slices to {out}")


@data_app.command("split")
def split(
    data: DataDir,
    part: Annotated[Split, typer.Option(help="Which split to list.")] = Split.TEST,
    seed: Seed = 0,
) -> None:
    """Print the patient folders of one split (by patient, 75/15/10), one per line."""
    from brainscan.train import datasets

    samples = datasets.find_samples(data)
    splits = datasets.split_patients([s.patient for s in samples], seed)
    folders = sorted({str(s.image.parent) for s in datasets.select(samples, splits[part])})
    typer.echo("\n".join(folders))


def _train(task: str, **options) -> None:
    from brainscan.train.training import TrainConfig, train

    config = TrainConfig(task=task, **{k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()})
    metrics = train(config)
    summary = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
    typer.echo(f"test split: {summary}")
    typer.echo(f"saved {Path(config.out) / 'model.keras'}")


def training_options(task: str) -> tuple:
    """The options both `train` commands take, with ``task``'s defaults (train/choices.py)."""
    defaults = DEFAULTS[task]
    return (
        ("size", Size, defaults.size),
        ("epochs", Epochs, defaults.epochs),
        ("batch_size", BatchSize, defaults.batch_size),
        ("learning_rate", LearningRate, defaults.learning_rate),
        ("weights", WeightsOption, Weights.NONE),
        ("alpha", Alpha, defaults.alpha),
        ("ema", Ema, defaults.ema),
        ("seed", Seed, 0),
    )


@train_app.command("classifier")
@with_options(training_options(contract.CLASSIFIER), "training")
def classifier(
    data: DataDir,
    out: RunDir = contract.demo_run(contract.CLASSIFIER),
    head_stride: Annotated[int, typer.Option(help="Stride of the MobileNet stage the head scores: 8, 16 or 32.")] = 8,
    training: dict | None = None,
) -> None:
    """Train the MobileNet classifier (tumour / no tumour) with binary cross-entropy."""
    _train(contract.CLASSIFIER, data=data, out=out, head_stride=head_stride, **training)


@train_app.command("segmenter")
@with_options(training_options(contract.SEGMENTER), "training")
def segmenter(
    data: DataDir,
    out: RunDir = contract.demo_run(contract.SEGMENTER),
    architecture: Annotated[
        Architecture, typer.Option(help="mobilenetv2-unet (MobileNetV2 encoder), or unet (the plain U-Net).")
    ] = Architecture.MOBILENETV2_UNET,
    training: dict | None = None,
) -> None:
    """Train the U-Net segmenter (MobileNetV2 encoder) with BCE + Dice loss."""
    _train(contract.SEGMENTER, data=data, out=out, architecture=architecture, **training)


@with_connection
def evaluate(
    data: DataDir,
    seed: Seed = 0,
    out: Annotated[
        Path | None, typer.Option(help="Folder for report.md and report.json (default: `artifacts/evaluation`).")
    ] = None,
    set_size: Annotated[int, typer.Option(min=4, help="Images per out-of-distribution and encoding set.")] = 48,
    new_patients: Annotated[int, typer.Option(min=1, help="Patients of the phantom cohort with a new seed.")] = 20,
    connect=None,  # the connection options (client.options.with_connection)
) -> None:
    """Judge the served models through a running server: the intended-use gate's acceptance
    of the test patients (split by --seed, as training did) and of a phantom cohort with a
    new seed, its refusal of out-of-distribution sets (photographs, noise, blank, inverted,
    quarter-turned, CT-like, chest) with their AUROC, its acceptance of other encodings
    (16-bit PNG, JPEG, resized), and accuracy and Dice on all test slices and on those it
    accepts. Prints the figures and writes them to --out (docs/intended-use.md)."""
    from brainscan.train.evaluation import collect, figures, table, write_report

    answered, use = collect(connect(60.0, 2), data, seed, set_size, new_patients)
    result = figures(answered, use.threshold)
    typer.echo(table(result))
    paths = write_report(result, use, out or contract.artifacts_dir() / "evaluation")
    typer.echo(f"wrote {paths[0]}")
