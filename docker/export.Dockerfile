# Builds FP16 TensorRT engines: the NGC TensorRT image of the SAME release as the server
# image (docker/.env), plus brainscan with its `export` extra (ONNX, ONNX Runtime for the
# FP32 reference of the accuracy gate). Run through Compose on a GPU host:
#   docker compose -f docker/compose.yaml run --rm --user "$(id -u):$(id -g)" export
ARG NGC_RELEASE
FROM nvcr.io/nvidia/tensorrt:${NGC_RELEASE}-py3
ARG NGC_TENSORRT

ENV PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Older TensorRT images ship the Python bindings as a setup script rather than installed.
RUN python3 -c "import tensorrt" 2>/dev/null || /opt/tensorrt/python/python_setup.sh
RUN python3 -c "import sys, tensorrt; v = tensorrt.__version__; \
sys.exit(0 if v.startswith('${NGC_TENSORRT}') else f'expected TensorRT ${NGC_TENSORRT}, image has {v}: fix NGC_TENSORRT in docker/.env')"

WORKDIR /opt/brainscan
COPY pyproject.toml README.md ./
COPY brainscan brainscan
COPY train train
COPY export export
COPY client client
COPY benchmarks benchmarks
RUN python3 -m pip install ".[export]"

# The source checkout is mounted here: engines go into ./model_repository, the ONNX and
# validation slices come from ./artifacts (what `make demo` built).
WORKDIR /workspace
ENV HOME=/tmp
CMD ["brainscan", "export", "tensorrt"]
