"""The served contract: every model name, tensor name, dtype, shape, port and default.

Everything that talks to Triton (the repository writer, the python models, the client, the
tests, the benchmarks) reads its names from here; nothing else spells a tensor name.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# Ensemble and composing models.
ENSEMBLE = "brainscan"
# The same answers for pixels a client already holds (the slices of a DICOM or NIfTI series):
# PIXELS in, many slices per request, no decoding and no Python step on the way.
PIXELS_ENSEMBLE = "brainscan_pixels"
ENSEMBLES = (ENSEMBLE, PIXELS_ENSEMBLE)
PREPROCESS = "preprocess"
CLASSIFIER = "classifier"
SEGMENTER = "segmenter"
NETWORKS = (CLASSIFIER, SEGMENTER)  # the two served networks, in this order everywhere
COMPOSING_MODELS = (PREPROCESS, *NETWORKS)

# Ensemble inputs / outputs (the public contract: never rename).
IMAGE = "IMAGE"  # TYPE_STRING [1]: encoded file bytes
TUMOR_PROBABILITY = "TUMOR_PROBABILITY"  # TYPE_FP32 [1]
MASK = "MASK"  # TYPE_UINT8 [-1, -1]: 0/1 at the input's own height x width
# TYPE_FP32 [1]: how unlike the training slices the image is, computed by the classifier's
# served graph (brainscan.export.pixel_gate); at most 1 is inside the models' intended use
# (brainscan.intended_use). Added after the others: clients that do not ask for it are unchanged.
OOD_SCORE = "OOD_SCORE"

# The one tensor between the steps of the ensemble: preprocess decodes the file, and both
# networks take its pixels at the image's own size (their graphs resize and scale them, and
# the segmenter's brings its mask back to that size: brainscan.preprocessing_graph). It is
# also PIXELS_ENSEMBLE's input: a batch of B slices of one size is one request [B, H, W, C].
PIXELS = "PIXELS"  # FP32 [H, W, C], C = 1 (grey) or 3 (colour), values as decoded (8 or 16 bit)

# Inside the networks' graphs: the Keras layer names, so the ONNX and TensorRT names agree.
CLASSIFIER_INPUT = "classifier_input"  # FP32 [h, w, 3], pixel values 0..255
SEGMENTER_INPUT = "segmenter_input"  # FP32 [h, w, 3], pixel values 0..255
CLASSIFIER_OUTPUT = TUMOR_PROBABILITY  # the classifier's output is the ensemble output directly
SEGMENTER_OUTPUT = "mask_probability"  # FP32 [h, w, 1], turned into MASK inside the segmenter's graph

CHANNELS = 3

# Triton's default ports; we bind loopback unless told otherwise.
DEFAULT_HOST = "127.0.0.1"
GRPC_PORT = 8001
HTTP_PORT = 8000
METRICS_PORT = 8002
DEFAULT_URL = f"{DEFAULT_HOST}:{GRPC_PORT}"

# Triton's administrative APIs: refused unless a request carries the admin header with the
# server's admin key (HTTP header ADMIN_HEADER, gRPC metadata GRPC_ADMIN_HEADER). Inference,
# health, metadata, model config and statistics stay open: perf_analyzer reads the last two in
# every measurement window, statistics are read-only counters that the metrics port publishes
# anyway, and a load test must work with the users' own tools and no key (docs/operations.md).
ADMIN_HEADER = "admin-key"
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"
ADMIN_APIS = ("shared-memory", "model-repository", "trace", "logging")
ADMIN_KEY_ENV = "BRAINSCAN_ADMIN_KEY_FILE"  # a file holding the key (never the key itself on a command line)

# Served behaviour.
# Images a request or a dynamic batch may hold (every model's max_batch_size). On the CPU
# nothing is allocated at the maximum, and a series' slices go 16 a request: half the
# per-request cost of 8 (gRPC, the ensemble, the python runners' copies), -20 % CPU per slice
# outside the networks (benchmarks/results/2026-12-04-series-batch16). On a GPU Triton and
# TensorRT allocate every input at the maximum batch and largest side, so it stays 8 there.
MAX_BATCH_SIZE = 16
GPU_MAX_BATCH_SIZE = 8
MASK_THRESHOLD = 0.5  # probability above which a pixel belongs to the mask
# A series' segmenter runs only on the slices the classifier does not rule out, and
# SEGMENTER_MARGIN slices on each side of them. The threshold is the classifier's own, which
# `export onnx` declares from the run's validation slices (half the lowest probability of one
# with a tumour, at most SEGMENTER_RULE_OUT_CAP) in the classifier's config parameter
# SEGMENTER_RULE_OUT_PARAMETER; a classifier that declares none has every slice segmented.
# `predict --segment-all` turns it off.
SEGMENTER_RULE_OUT_PARAMETER = "segmenter_rule_out"
SEGMENTER_RULE_OUT_CAP = 0.02
SEGMENTER_MARGIN = 1
DECISION_THRESHOLD = 0.5  # probability above which an image is "tumour"
# Larger inputs are refused from their header, before any pixel is decoded. MRI slices are
# rarely above 1024 x 1024; at the limit one image costs about 0.4 s and 250 MB to decode and
# resize on one core (40 MP cost 1.4 s and 590 MB), so a flood of huge images stays bounded.
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_IMAGE_SIDE = 8192
# A TensorRT engine (and ONNX Runtime's TensorRT provider) serves the shapes of its
# optimization profile, and Triton's tensorrt backend allocates every input and output at the
# profile's largest shape (instance_state.cc), so the GPU flavours take images up to this side:
# 8 x 1024 x 1024 x 3 FP32 is 100 MB per network instance. `export repository --max-side`.
GPU_MAX_IMAGE_SIDE = 1024
# The config parameter of preprocess and of the networks that holds the largest side a
# repository takes (preprocess refuses larger images by name, before the engines see them).
MAX_SIDE_PARAMETER = "max_image_side"
# The local flavour's networks' parameter saying who resizes: OpenCV in the python runner
# before the network (brainscan.opencv_path, the faster way on a CPU), or the served graph.
RESIZE_PARAMETER = "resize"
OPENCV_RESIZE, GRAPH_RESIZE = "opencv", "graph"
# Config parameters of the networks that say what answers, which clients read (model config
# is not an admin API) to name the served models in their results: the SHA-256 of the served
# ONNX graph (local, onnxruntime), and per GPU kind the engine's TensorRT version, GPU and
# source digest (tensorrt: engine_sm89 for compute capability 8.9).
MODEL_SHA256_PARAMETER = "model_sha256"
ENGINE_PARAMETER_PREFIX = "engine_sm"
# The classifier's config parameter holding the models' intended use (brainscan.intended_use,
# as JSON): what clients check before sending a series and against every OOD_SCORE.
INTENDED_USE_PARAMETER = "intended_use"
# The client reads a volume only if its header says it is at most this many voxels
# (512 x 512 x 512; about 0.25 GB as 16-bit, 1 GB while rescaled to floats), and inflates a
# deflated DICOM file only up to this many bytes: the header is checked before allocation.
MAX_VOLUME_VOXELS = 512**3
MAX_INFLATED_DICOM_BYTES = 512 * 2**20

# Every model's queue is bounded: past MAX_QUEUE_SIZE waiting requests a new one is refused
# at once (UNAVAILABLE, "Exceeds maximum queue size"; clients retry with back-off), and a
# request that waited QUEUE_TIMEOUT_MS is refused instead of run late. Clients may ask for
# a shorter wait: their own timeout travels with each request.
MAX_QUEUE_SIZE = 64
QUEUE_TIMEOUT_MS = 30_000

# Default square input sizes of the networks (training and the generated configs). The
# classifier sees more pixels: at 128 it missed small tumours on unseen phantom patients
# (accuracy 0.90-0.92 on two new seeds), at 160 it reached 0.93-0.95.
CLASSIFIER_SIZE = 160
SEGMENTER_SIZE = 128


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a model: Triton name, Triton data type and dims without the batch."""

    name: str
    triton_dtype: str
    dims: tuple[int, ...]


IMAGE_SPEC = TensorSpec(IMAGE, "TYPE_STRING", (1,))
PIXELS_SPEC = TensorSpec(PIXELS, "TYPE_FP32", (-1, -1, -1))


def serialized_string(data: bytes) -> bytes:
    """One TYPE_STRING element (an IMAGE) as Triton serializes it: uint32 length (LE), then the
    bytes (what perf_analyzer's input data and the warm-up samples hold)."""
    import struct

    return struct.pack("<I", len(data)) + data


TUMOR_PROBABILITY_SPEC = TensorSpec(TUMOR_PROBABILITY, "TYPE_FP32", (1,))
MASK_SPEC = TensorSpec(MASK, "TYPE_UINT8", (-1, -1))
OOD_SCORE_SPEC = TensorSpec(OOD_SCORE, "TYPE_FP32", (1,))
# what each served network takes and gives: one input; its decision output first (the one
# the accuracy gates compare), then the classifier's out-of-distribution score
NETWORK_INPUT = {CLASSIFIER: CLASSIFIER_INPUT, SEGMENTER: SEGMENTER_INPUT}
NETWORK_OUTPUT_SPEC = {CLASSIFIER: TUMOR_PROBABILITY_SPEC, SEGMENTER: MASK_SPEC}
NETWORK_OUTPUTS = {CLASSIFIER: (TUMOR_PROBABILITY_SPEC, OOD_SCORE_SPEC), SEGMENTER: (MASK_SPEC,)}
ENSEMBLE_OUTPUTS = (TUMOR_PROBABILITY_SPEC, MASK_SPEC, OOD_SCORE_SPEC)

# Where `make demo` puts what it builds (override with BRAINSCAN_ARTIFACTS); `brainscan
# serve` without --repository serves DEMO_REPOSITORY.
ARTIFACTS_ENV = "BRAINSCAN_ARTIFACTS"
DEFAULT_ARTIFACTS = "artifacts"


class Choice(str, enum.Enum):
    """A fixed set of values, shown by --help (Typer lists an Enum's values) and printed as
    its value."""

    def __str__(self) -> str:
        return self.value


class Flavour(Choice):
    """The three model-repository flavours (README, "The ensemble and the repository"; docs/gpu.md)."""

    LOCAL = "local"  # the ONNX networks in the python backend: the embedded CPU server
    ONNXRUNTIME = "onnxruntime"  # Triton's onnxruntime backend (CPU, or GPU with the TensorRT EP)
    TENSORRT = "tensorrt"  # FP16 TensorRT engines: a GPU host


class Device(Choice):
    """Where the onnxruntime flavour runs its networks."""

    CPU = "cpu"
    GPU = "gpu"  # TensorRT execution provider, FP16


class Protocol(Choice):
    """How clients talk to Triton."""

    GRPC = "grpc"
    HTTP = "http"


class SlicePath(Choice):
    """How a volume's slices reach the server."""

    PIXELS = "pixels"  # raw, many a request, to PIXELS_ENSEMBLE (when the server serves it)
    PNG = "png"  # one 16-bit PNG each, through ENSEMBLE (an earlier kit's way)


# The ONNX opset of the networks (tf2onnx) and of the served graphs around them; ReduceMin/Max
# take their axes as an input from 18 on (brainscan.preprocessing_graph)
ONNX_OPSET = 17
PLAN_FILE = "model.plan"  # what Triton's tensorrt backend loads when a config names no engine


def cache_dir():
    """brainscan's cache: BRAINSCAN_CACHE, else $XDG_CACHE_HOME/brainscan (~/.cache/brainscan)."""
    import os
    from pathlib import Path

    return Path(
        os.environ.get("BRAINSCAN_CACHE")
        or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "brainscan")
    )


def artifacts_dir():
    import os
    from pathlib import Path

    return Path(os.environ.get(ARTIFACTS_ENV, DEFAULT_ARTIFACTS))


# The committed production (tensorrt-flavour) repository, relative to the source checkout;
# The GPU host's containers (docker/compose.yaml): the command that runs them, and the one that
# serves a repository of engines
COMPOSE = "docker compose -f docker/compose.yaml"
SERVE_ON_GPU = f"{COMPOSE} up -d triton"
# `brainscan export tensorrt` writes its engines there and docker/compose.yaml serves it.
PRODUCTION_REPOSITORY = "model_repository"


def demo_repository():
    return artifacts_dir() / "model_repository"


def demo_run(task: str):
    return artifacts_dir() / "runs" / task
