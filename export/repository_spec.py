"""What varies between generated repositories (RepositorySpec), the per-flavour defaults,
and the repository's error."""

from __future__ import annotations

from dataclasses import dataclass, field

from brainscan import contract
from brainscan.contract import Device, Flavour
from brainscan.export.limits import WORKSPACE_MIB
from brainscan.export.profiles import OPT_IMAGE
from brainscan.repository import VERSION, WEIGHT_FILES, RepositoryError  # noqa: F401 (re-exported)

FLAVOURS = tuple(f.value for f in Flavour)
PLACEHOLDER = ".gitkeep"  # keeps a version folder whose weights are build outputs in git
# python-model sources in brainscan.export.triton_models -> model.py of these models
PYTHON_SOURCES = {contract.PREPROCESS: "preprocess.py"}
ONNX_RUNNER_SOURCE = "onnx_runner.py"
# How long the dynamic batcher may hold a request to grow a batch: for the networks, per
# flavour; preprocess is the same python model in every flavour. With 0
# the batcher still batches whatever queued while a model was busy, and an idle server
# adds no wait: on 2 CPU cores, 500 µs on each of the steps cost 1.5 ms of p50 at
# concurrency 1 and no throughput (benchmarks/results/, tuning table).
QUEUE_DELAY_US = {Flavour.LOCAL: 0, Flavour.ONNXRUNTIME: 500, Flavour.TENSORRT: 100}
PYTHON_QUEUE_DELAY_US = 0
# Model instances per flavour unless given. The segmenter is the local flavour's bottleneck
# (~4x the classifier's FLOPs); a second instance lets it run beside the other steps:
# +16 % throughput on 2 cores. More ONNX Runtime threads per instance oversubscribe the cores.
DEFAULT_INSTANCES = {Flavour.LOCAL: {contract.SEGMENTER: 2}, Flavour.ONNXRUNTIME: {}, Flavour.TENSORRT: {}}
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


def _option(help: str, **constraints) -> dict:
    """A field's metadata when it is also an option of `brainscan export repository`
    (console.field_options): its help, and limits the command line checks (min)."""
    return {"help": help, **constraints}


def _per_flavour(values: dict) -> str:
    return ", ".join(f"{value} {flavour}" for flavour, value in values.items())


@dataclass(kw_only=True)
class RepositorySpec:
    """What varies between generated repositories. The fields with help in their metadata
    are the options of `brainscan export repository` too, in this order."""

    flavour: Flavour = field(
        default=Flavour.LOCAL,  # a str of a flavour is taken too
        metadata=_option("local (python+ONNX Runtime, no GPU), onnxruntime, or tensorrt."),
    )
    max_batch_size: int | None = field(
        default=None,  # contract.GPU_MAX_BATCH_SIZE on a GPU, else contract.MAX_BATCH_SIZE
        metadata=_option(
            "max_batch_size of every model (and the TensorRT profile's maximum) (default: "
            f"{contract.GPU_MAX_BATCH_SIZE} on a GPU, {contract.MAX_BATCH_SIZE} on the CPU).",
            min=1,
        ),
    )
    ort_threads: int = field(default=1, metadata=_option("ONNX Runtime intra-op threads per model instance.", min=1))
    device: Device = field(
        default=Device.CPU,
        metadata=_option("onnxruntime flavour: cpu, or gpu (TensorRT execution provider, FP16, engine cache)."),
    )
    instances: dict[str, int] = field(
        default_factory=dict, metadata=_option("Instances of a model, MODEL=N (e.g. preprocess=2). Repeatable.")
    )
    queue_delay_us: int | None = field(
        default=None,  # the flavour's (QUEUE_DELAY_US)
        metadata=_option(
            f"The networks' dynamic-batching queue delay in µs (default: {_per_flavour(QUEUE_DELAY_US)}).", min=0
        ),
    )
    python_queue_delay_us: int = field(
        default=PYTHON_QUEUE_DELAY_US, metadata=_option("preprocess's queue delay in µs.", min=0)
    )
    opt_batch: int | None = field(
        default=None,  # max_batch_size
        metadata=_option("Optimum batch of the TensorRT profile (onnxruntime on gpu).", min=1),
    )
    max_queue_size: int = field(
        default=contract.MAX_QUEUE_SIZE,
        metadata=_option("Requests each model may hold waiting; more are refused at once (UNAVAILABLE).", min=1),
    )
    max_image_side: int | None = field(
        default=None,  # contract.GPU_MAX_IMAGE_SIDE on a GPU, else contract.MAX_IMAGE_SIDE
        metadata=_option(
            f"Largest image side served (default: {contract.GPU_MAX_IMAGE_SIDE} on a GPU, where TensorRT profiles "
            f"end and Triton allocates every input at it; {contract.MAX_IMAGE_SIDE} on the CPU).",
            flag="--max-side",
        ),
    )
    queue_timeout_ms: int = field(
        default=contract.QUEUE_TIMEOUT_MS,
        metadata=_option("A request waiting longer than this in a model's queue is refused.", min=1),
    )
    workspace_mib: int = WORKSPACE_MIB  # TensorRT workspace of the onnxruntime flavour on GPU
    local_resize: str = contract.OPENCV_RESIZE  # the local flavour's runners: OpenCV or the graph resizes

    def __post_init__(self) -> None:
        if self.flavour not in FLAVOURS:
            raise RepositoryError(f"unknown flavour {self.flavour!r}: choose one of {', '.join(FLAVOURS)}")
        if self.device not in tuple(Device):
            raise RepositoryError(f"unknown device {self.device!r}: choose cpu or gpu")
        self.flavour, self.device = Flavour(self.flavour), Device(self.device)
        if self.local_resize not in (contract.OPENCV_RESIZE, contract.GRAPH_RESIZE):
            raise RepositoryError(f"local_resize is {contract.OPENCV_RESIZE} or {contract.GRAPH_RESIZE}")
        if self.max_batch_size is None:
            self.max_batch_size = contract.GPU_MAX_BATCH_SIZE if self.on_gpu else contract.MAX_BATCH_SIZE
        if self.max_batch_size < 1:
            raise RepositoryError("max_batch_size must be at least 1")
        if self.max_queue_size < 1 or self.queue_timeout_ms < 1:
            raise RepositoryError("the queue size and the queue timeout must be at least 1")
        if self.device is Device.GPU and self.flavour is not Flavour.ONNXRUNTIME:
            raise RepositoryError(
                f"--device applies to the onnxruntime flavour; {self.flavour} always runs on "
                + ("the GPU" if self.flavour is Flavour.TENSORRT else "the CPU")
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
        return self.flavour is Flavour.TENSORRT or self.device is Device.GPU

    def count(self, model: str) -> int:
        defaults = {**(GPU_PYTHON_INSTANCES if self.on_gpu else {}), **DEFAULT_INSTANCES[self.flavour]}
        return int(self.instances.get(model, defaults.get(model, 1)))
