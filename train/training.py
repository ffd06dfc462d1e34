"""Training of the classifier and the segmenter: Adam, best checkpoint on validation,
metrics on the held-out test patients, curves as a PNG.

A run folder holds everything later steps need::

    RUN/model.keras    best checkpoint on validation loss
    RUN/run.json       task, input size, data folder, seed and the patient split
    RUN/metrics.json   metrics on the test split
    RUN/history.json   per-epoch losses and metrics
    RUN/curves.png     training curves
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from brainscan import contract
from brainscan.errors import DataError
from brainscan.metrics import classification_metrics, segmentation_metrics
from brainscan.train import datasets
from brainscan.train.choices import DEFAULTS, Architecture, Weights

TASKS = ("classifier", "segmenter")


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved to run.json."""

    task: str
    data: str
    out: str
    # None: the task's default (train/choices.py, DEFAULTS)
    size: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    weights: str = Weights.NONE.value
    alpha: float | None = None
    architecture: str = Architecture.MOBILENETV2_UNET.value
    head_stride: int = 8
    ema: bool | None = None
    seed: int = 0
    steps_per_epoch: int | None = None
    splits: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        defaults = DEFAULTS.get(self.task)
        if defaults is not None:
            for name in ("size", "epochs", "batch_size", "learning_rate", "alpha", "ema"):
                if getattr(self, name) is None:
                    setattr(self, name, getattr(defaults, name))

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.size, self.size)


def load_run(run_dir: Path) -> TrainConfig:
    """Read a run folder's run.json back."""
    path = Path(run_dir) / "run.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a training run folder?")
    return TrainConfig(**json.loads(path.read_text()))


def split_samples(config: TrainConfig) -> dict[str, list[datasets.Sample]]:
    """The run's samples per split (the split is by patient and stored in run.json)."""
    samples = datasets.find_samples(Path(config.data))
    if not config.splits:
        config.splits = datasets.split_patients([s.patient for s in samples], config.seed)
    return {name: datasets.select(samples, config.splits[name]) for name in datasets.SPLITS}


def build_model(config: TrainConfig):
    from brainscan.train import models

    shape = (config.size, config.size, contract.CHANNELS)
    if config.task == "classifier":
        return models.build_classifier(
            shape, weights=config.weights, alpha=config.alpha, head_stride=config.head_stride
        )
    if config.architecture == "unet":
        return models.build_unet(shape)
    return models.build_segmenter(shape, weights=config.weights, alpha=config.alpha)


def _uses_masks(config: TrainConfig, samples: list[datasets.Sample]) -> bool:
    """The segmenter always learns from masks; the classifier does too when the layout has
    them (its tumour map is then supervised per cell)."""
    return config.task == "segmenter" or all(s.mask is not None for s in samples)


def _arrays(config: TrainConfig, samples: list[datasets.Sample], masks: bool) -> tuple[np.ndarray, np.ndarray]:
    images = datasets.load_images(samples, config.image_size)
    if masks:
        return images, datasets.load_masks(samples, config.image_size)
    return images, datasets.load_labels(samples)[:, None]


def _classifier_targets(grid: int):
    """Batch of masks -> the classifier trainer's targets: the image label and the mask
    max-pooled to the tumour map's grid (a cell is positive if any of its pixels is)."""
    import tensorflow as tf

    from brainscan.train.models import TUMOUR_MAP

    def convert(x, mask):
        label = tf.reduce_max(mask, axis=[1, 2])
        cells = tf.nn.max_pool2d(mask, ksize=grid, strides=grid, padding="VALID")
        return x, {contract.CLASSIFIER_OUTPUT: label, TUMOUR_MAP: cells}

    return convert


def _dataset(images: np.ndarray, targets: np.ndarray, config: TrainConfig, training: bool, convert=None):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, targets))
    if training:
        ds = ds.shuffle(len(images), seed=config.seed, reshuffle_each_iteration=True).repeat()
    ds = ds.batch(config.batch_size)
    if training:
        ds = ds.map(_augmenter(config, joint=targets.ndim == 4), num_parallel_calls=tf.data.AUTOTUNE)
    if convert is not None:
        ds = ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _augmenter(config: TrainConfig, joint: bool):
    """Random flips, small rotations and zooms, applied to image and mask together.

    Geometry varies, labels do not: the networks must find the tumour itself rather than
    the anatomy that happens to go with it in a small training set."""
    import keras
    import tensorflow as tf

    augment = keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal_and_vertical", seed=config.seed),
            keras.layers.RandomRotation(0.08, fill_mode="constant", seed=config.seed),
            keras.layers.RandomZoom(0.12, fill_mode="constant", seed=config.seed),
        ],
        name="augment",
    )

    if not joint:
        return lambda x, y: (augment(x, training=True), y)

    def together(x, y):
        both = augment(tf.concat([x, y], axis=-1), training=True)
        return both[..., :-1], tf.cast(both[..., -1:] > 0.5, tf.float32)

    return together


def _save_best(model, path: Path, monitor: str):
    """Save ``model`` (the served network, not the multi-output trainer) whenever
    ``monitor`` reaches a new low."""
    import keras

    class SaveBest(keras.callbacks.Callback):
        best = float("inf")

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(monitor)
            if value is not None and value < self.best:
                self.best = value
                model.save(path)

    return SaveBest()


def load_model(path: Path):
    """A saved network for inference (no optimizer or custom loss needed)."""
    import keras

    return keras.models.load_model(path, compile=False)


def choose_threshold(probability: np.ndarray, labels: np.ndarray, tolerance: float = 0.01) -> float:
    """The decision threshold for unseen patients, chosen on validation patients: the median
    of every threshold whose accuracy is within ``tolerance`` of the best. A plateau's
    middle keeps a margin on both sides, where a single argmax is at the mercy of one
    slice."""
    probability = np.asarray(probability, float).ravel()
    labels = np.asarray(labels, bool).ravel()
    candidates = np.linspace(0.02, 0.98, 97)
    accuracy = np.array([np.mean((probability > t) == labels) for t in candidates])
    return float(np.median(candidates[accuracy >= accuracy.max() - tolerance]))


def calibrate_classifier(model, images: np.ndarray, labels: np.ndarray) -> float:
    """Move the classifier's decision threshold to the one chosen on validation patients,
    by shifting the bias of its cell scores, so the served 0.5 threshold is that one.

    On patients it has not seen, the highest cell score of tumour-free slices drifts up
    (validation and test alike) while tumour slices stay high: the operating point, not
    the ranking, is what moves. The image probability is sigmoid(max over cells of the
    cell logits), so lowering every cell logit by logit(t) turns "p > t" into "p > 0.5".
    Returns t.
    """
    threshold = choose_threshold(predict(model, images), labels)
    layer = model.get_layer("cell_logits")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel, bias - np.log(threshold / (1.0 - threshold))])
    return threshold


def predict(model, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    return np.asarray(model.predict(images, batch_size=batch_size, verbose=0))


def evaluate(task: str, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    if task == "classifier":
        return classification_metrics(outputs.ravel(), targets.ravel() > 0.5, contract.DECISION_THRESHOLD)
    return segmentation_metrics(outputs[..., 0] > contract.MASK_THRESHOLD, targets[..., 0] > 0.5)


def plot_curves(history: dict[str, list[float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({k.removeprefix("val_") for k in history})
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        for key, label in ((name, "train"), (f"val_{name}", "validation")):
            if key in history:
                ax.plot(range(1, len(history[key]) + 1), history[key], marker="o", label=label)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fit(config: TrainConfig, model, checkpoint: Path, train_set, val_set, masks: bool) -> dict:
    """Compile and fit (the classifier with its tumour-map head when there are masks), keeping
    the best epoch on validation at ``checkpoint``; Keras's history."""
    import keras

    from brainscan.train.losses import bce_dice_loss, dice_coefficient

    (x_train, y_train), (x_val, y_val) = train_set, val_set
    trainer, convert = model, None
    if config.task == "classifier":
        metrics = {contract.CLASSIFIER_OUTPUT: ["accuracy", keras.metrics.AUC(name="auc")]}
        loss = {contract.CLASSIFIER_OUTPUT: "binary_crossentropy"}
        if masks:
            from brainscan.train.models import TUMOUR_MAP, classifier_trainer

            trainer = classifier_trainer(model)
            loss[TUMOUR_MAP] = "binary_crossentropy"
            convert = _classifier_targets(config.size // trainer.output[TUMOUR_MAP].shape[1])
    else:
        loss, metrics = bce_dice_loss, [dice_coefficient]
    steps = config.steps_per_epoch or max(1, int(np.ceil(len(x_train) / config.batch_size)))
    # Cosine decay to 5 % of the rate: the last epochs settle instead of jumping between
    # operating points, which matters when the best one is picked on a few patients.
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, steps * config.epochs, alpha=0.05)
    optimizer = keras.optimizers.Adam(schedule, use_ema=config.ema, ema_momentum=0.98)
    trainer.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    callbacks = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if config.ema else []
    callbacks.append(_save_best(model, checkpoint, "val_loss"))
    history = trainer.fit(
        _dataset(x_train, y_train, config, training=True, convert=convert),
        validation_data=_dataset(x_val, y_val, config, training=False, convert=convert),
        epochs=config.epochs,
        shuffle=False,  # the tf.data pipeline shuffles
        steps_per_epoch=steps,
        callbacks=callbacks,
        verbose=1 if sys.stdout.isatty() else 2,
    ).history
    return history


def _test(config: TrainConfig, best, checkpoint: Path, test: list, val_set) -> tuple[dict, dict]:
    """The classifier calibrated on validation (and saved so), then the test split's metrics;
    the metrics, and what the calibration found."""
    x_val, y_val = val_set
    calibration = {}
    if config.task == "classifier":
        labels_val = y_val.reshape(len(y_val), -1).max(axis=1)
        calibration["decision_threshold_before_calibration"] = calibrate_classifier(best, x_val, labels_val)
        best.save(checkpoint)
    x_test = datasets.load_images(test, config.image_size)
    y_test = datasets.load_masks(test, config.image_size) if config.task == "segmenter" else datasets.load_labels(test)
    return evaluate(config.task, predict(best, x_test), y_test), calibration


def train(config: TrainConfig) -> dict[str, float]:
    """Train one network, keep the best epoch on validation, evaluate it on the test split."""
    if config.task not in TASKS:
        raise DataError(f"task must be one of {TASKS}")
    import keras

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()  # else threaded CPU kernels differ run to run
    parts = split_samples(config)
    for name in datasets.SPLITS:
        if not parts[name]:
            raise DataError(f"the {name} split is empty")
    (out / "run.json").write_text(json.dumps(asdict(config), indent=2))
    print(
        f"{config.task}: {len(parts['train'])} train / {len(parts['val'])} val / "
        f"{len(parts['test'])} test slices ({len(config.splits['train'])}/"
        f"{len(config.splits['val'])}/{len(config.splits['test'])} patients), {config.size}px",
        flush=True,
    )
    masks = _uses_masks(config, parts["train"] + parts["val"])
    x_train, y_train = _arrays(config, parts["train"], masks)
    x_val, y_val = _arrays(config, parts["val"], masks)

    model = build_model(config)
    checkpoint = out / "model.keras"
    history = _fit(config, model, checkpoint, (x_train, y_train), (x_val, y_val), masks)
    history = {k: [float(v) for v in vals] for k, vals in history.items()}
    (out / "history.json").write_text(json.dumps(history, indent=2))
    plot_curves(history, out / "curves.png", f"{config.task} ({config.size}px)")

    metrics_test, calibration = _test(config, load_model(checkpoint), checkpoint, parts["test"], (x_val, y_val))
    metrics_test["best_epoch"] = int(np.argmin(history["val_loss"]) + 1)
    metrics_test.update(calibration)
    (out / "metrics.json").write_text(json.dumps(metrics_test, indent=2))
    return metrics_test
