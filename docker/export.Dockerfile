# Builds strongly typed TensorRT engines from the FP16 ONNX graphs: the NGC TensorRT image
# of the SAME release as the server image (docker/.env), plus brainscan with its `export`
# extra (ONNX, the FP16 converter, Polygraphy, ONNX Runtime for the FP32 reference of the
# accuracy gate) and pytest for the GPU test. Run through Compose on a GPU host:
#   docker compose -f docker/compose.yaml run --rm --user "$(id -u):$(id -g)" export
ARG NGC_RELEASE
FROM nvcr.io/nvidia/tensorrt:${NGC_RELEASE}-py3
ARG NGC_TENSORRT

ENV PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Some TensorRT images ship the Python bindings as a setup script rather than installed.
RUN python3 -c "import tensorrt" 2>/dev/null || /opt/tensorrt/python/python_setup.sh
# The bindings' version, recorded for `make gpu` (docker/same-tensorrt.sh compares it with the
# server image's before any engine is built).
RUN python3 -c "import sys, tensorrt; v, pin = tensorrt.__version__, '${NGC_TENSORRT}'; print('TensorRT', v); \
sys.exit(0 if v == pin or v.startswith(pin + '.') else f'expected TensorRT {pin}, image has {v}: fix NGC_TENSORRT in docker/.env')" \
 && mkdir -p /opt/brainscan && python3 -c "import tensorrt; print(tensorrt.__version__)" > /opt/brainscan/tensorrt-version

WORKDIR /opt/brainscan
COPY pyproject.toml README.md ./
COPY brainscan brainscan
COPY train train
COPY export export
COPY client client
COPY benchmarks benchmarks
COPY docker/export.lock docker/
# Every dependency pinned by version and hash (make docker-locks), then the package alone.
RUN python3 -m pip install --require-hashes -r docker/export.lock && python3 -m pip install --no-deps . \
 && python3 -c "import boto3, onnx, onnxconverter_common, polygraphy, brainscan.export.tensorrt"

# The source checkout is mounted at /brainscan (not over the image's /workspace): engines go
# into ./model_repository, the ONNX graphs and validation slices come from ./artifacts.
WORKDIR /brainscan
ENV HOME=/tmp
CMD ["brainscan", "export", "tensorrt"]
