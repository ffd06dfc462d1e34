"""What varies between generated repositories (RepositorySpec), the per-flavour defaults,
and the repository's error."""

from __future__ import annotations

from dataclasses import dataclass, field

from brainscan import contract
from brainscan.contract import PLAN_FILE, Flavour
from brainscan.errors import BrainscanError
from brainscan.export.profiles import OPT_IMAGE

FLAVOURS = tuple(f.value for f in Flavour)
VERSION = "1"
PLACEHOLDER = ".gitkeep"  # keeps a version folder whose weights are build outputs in git
# python-model sources in brainscan.export.triton_models -> model.py of these models
PYTHON_SOURCES = {contract.PREPROCESS: "preprocess.py"}
ONNX_RUNNER_SOURCE = "onnx_runner.py"
WEIGHT_FILES = {Flavour.LOCAL: "model.onnx", Flavour.ONNXRUNTIME: "model.onnx", Flavour.TENSORRT: PLAN_FILE}
DEVICES = ("cpu", "gpu")
# How long the dynamic batcher may hold a request to grow a batch: for the networks, per
# flavour; preprocess is the same python model in every flavour. With 0
# the batcher still batches whatever queued while a model was busy, and an idle server
# adds no wait: on 2 CPU cores, 500 µs on each of the steps cost 1.5 ms of p50 at
# concurrency 1 and no throughput (benchmarks/results/, tuning table).
QUEUE_DELAY_US = {"local": 0, "onnxruntime": 500, "tensorrt": 100}
PYTHON_QUEUE_DELAY_US = 0
# Model instances per flavour unless given. The segmenter is the local flavour's bottleneck
# (~4x the classifier's FLOPs); a second instance lets it run beside the other steps:
# +16 % throughput on 2 cores. More ONNX Runtime threads per instance oversubscribe the cores.
DEFAULT_INSTANCES = {"local": {contract.SEGMENTER: 2}, "onnxruntime": {}, "tensorrt": {}}
# On a GPU the networks are not the bound: the one python step, which decodes the file, is
# (benchmarks/results/*-ceiling: CPU ms per image of each step with free networks), while
# one GPU runs both networks at thousands of images/s. So the GPU flavours run 4 preprocess
# processes, which the Kubernetes GPU overlay gives the cores for; `--instances MODEL=N`
# sizes them otherwise.
GPU_PYTHON_INSTANCES = {contract.PREPROCESS: 4}
# Every model's queue is bounded (contract.MAX_QUEUE_SIZE, contract.QUEUE_TIMEOUT_MS): a flood
# then costs fast refusals, not unbounded memory and minutes of latency for everyone.
# Warm-up (model_warmup): Triton runs these samples on every instance before the model is
# ready, so the first real requests do not pay the cold path (ONNX Runtime's and TensorRT's
# first runs, CUDA graph capture, python imports). preprocess gets a real PNG slice (the
# watchdog's probe image) in Triton's serialized string form; the networks a zero 256 x 256
# grey image at batch 1 and the maximum. Triton runs none for ensembles. A failing sample
# stops the model from loading.
WARMUP_FOLDER = "warmup"  # Triton's name: <model>/warmup/<input_data_file>
WARMUP_IMAGE = "image"
WARMUP_SIZE = OPT_IMAGE[:2]
# Where the onnxruntime flavour's TensorRT execution provider keeps its engines inside the
# Triton container: docker/compose.yaml mounts a volume exactly here, and each model's
# cache is ONE level below it, because the provider creates only the last folder of its
# cache path (std::filesystem::create_directory), and a fresh volume is empty.
ORT_TRT_CACHE = "/var/cache/brainscan/ort-trt"


class RepositoryError(BrainscanError, ValueError):
    """A model repository is missing, incomplete or inconsistent; the message lists why."""


@dataclass
class RepositorySpec:
    """What varies between generated repositories."""

    flavour: str = "local"
    max_batch_size: int = contract.MAX_BATCH_SIZE
    queue_delay_us: int | None = None  # the networks'; None: the flavour's default (QUEUE_DELAY_US)
    python_queue_delay_us: int = PYTHON_QUEUE_DELAY_US  # preprocess
    max_queue_size: int = contract.MAX_QUEUE_SIZE  # per model
    queue_timeout_ms: int = contract.QUEUE_TIMEOUT_MS
    ort_threads: int = 1
    instances: dict[str, int] = field(default_factory=dict)
    device: str = "cpu"  # onnxruntime flavour only: cpu, or gpu (TensorRT execution provider, FP16)
    opt_batch: int | None = None  # optimum batch of the TensorRT profile (default: max_batch_size)
    workspace_mib: int = 1024  # TensorRT workspace of the onnxruntime flavour on GPU
    max_image_side: int | None = None  # None: contract.GPU_MAX_IMAGE_SIDE on a GPU, else contract.MAX_IMAGE_SIDE

    def __post_init__(self) -> None:
        if self.flavour not in FLAVOURS:
            raise RepositoryError(f"unknown flavour {self.flavour!r}: choose one of {', '.join(FLAVOURS)}")
        if self.max_batch_size < 1:
            raise RepositoryError("max_batch_size must be at least 1")
        if self.max_queue_size < 1 or self.queue_timeout_ms < 1:
            raise RepositoryError("the queue size and the queue timeout must be at least 1")
        if self.device not in DEVICES:
            raise RepositoryError(f"unknown device {self.device!r}: choose cpu or gpu")
        if self.device == "gpu" and self.flavour != "onnxruntime":
            raise RepositoryError(
                f"--device applies to the onnxruntime flavour; {self.flavour} always runs on "
                + ("the GPU" if self.flavour == "tensorrt" else "the CPU")
            )
        unknown = sorted(set(self.instances) - set(contract.COMPOSING_MODELS))
        if unknown:
            raise RepositoryError(
                f"instances given for unknown model(s) {unknown}: models are {', '.join(contract.COMPOSING_MODELS)}"
            )
        if any(int(n) < 1 for n in self.instances.values()):
            raise RepositoryError("instance counts must be at least 1")
        if self.queue_delay_us is None:
            self.queue_delay_us = QUEUE_DELAY_US[self.flavour]
        if self.max_image_side is None:
            self.max_image_side = contract.GPU_MAX_IMAGE_SIDE if self.on_gpu else contract.MAX_IMAGE_SIDE
        if not max(OPT_IMAGE[:2]) <= self.max_image_side <= contract.MAX_IMAGE_SIDE:
            raise RepositoryError(
                f"the largest image side must be between {max(OPT_IMAGE[:2])} and "
                f"{contract.MAX_IMAGE_SIDE}, got {self.max_image_side}"
            )

    @property
    def on_gpu(self) -> bool:
        return self.flavour == "tensorrt" or self.device == "gpu"

    def count(self, model: str) -> int:
        defaults = {**(GPU_PYTHON_INSTANCES if self.on_gpu else {}), **DEFAULT_INSTANCES[self.flavour]}
        return int(self.instances.get(model, defaults.get(model, 1)))
