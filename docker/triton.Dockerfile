# Triton Inference Server for the brainscan ensemble: the NGC tritonserver image plus the
# brainscan package, which the python model `preprocess` imports (the same decoding training
# uses). The model repository is mounted, not copied.
#
# Build through Compose (it passes the pinned release from docker/.env):
#   docker compose -f docker/compose.yaml build triton
ARG NGC_RELEASE
FROM nvcr.io/nvidia/tritonserver:${NGC_RELEASE}-py3
ARG NGC_TENSORRT

# Stop here, not at model load, if this release's TensorRT is not the pinned one. The
# version is that of the libnvinfer the loader uses: found through ldconfig's cache (no
# source says which folder the -py3 image puts it in), the real file's name after its links.
# It is recorded for `make gpu`, which refuses to build engines unless the export image
# holds the same TensorRT x.y.z (docker/same-tensorrt.sh).
RUN library=$(ldconfig -p | awk '$1 ~ /^libnvinfer\.so\.[0-9]+$/ {print $NF; exit}'); \
    version=$(readlink -f "$library" 2>/dev/null | sed -n 's/.*libnvinfer\.so\.\([0-9.]*\)$/\1/p'); \
    echo "TensorRT: ${version:-none} (${library:-no libnvinfer in ldconfig's cache})"; \
    case "$version" in "${NGC_TENSORRT}"|"${NGC_TENSORRT}".*) ;; \
      *) echo "expected TensorRT ${NGC_TENSORRT} in this image: fix NGC_TENSORRT in docker/.env" >&2; exit 1;; esac; \
    mkdir -p /opt/brainscan && echo "$version" > /opt/brainscan/tensorrt-version

ENV PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/brainscan
COPY pyproject.toml README.md ./
COPY brainscan brainscan
COPY train train
COPY export export
COPY client client
COPY benchmarks benchmarks
COPY docker/triton.lock docker/
# Every dependency pinned by version and hash (make docker-locks writes the lock), then the
# package itself without resolving anything again. numpy<2: the python backend's stub. The
# pacs extra too: the same image runs the DICOM node (`brainscan listen`, deploy/kubernetes/node).
RUN python3 -m pip install --require-hashes -r docker/triton.lock && python3 -m pip install --no-deps . \
 && python3 -c "import boto3, cv2, numpy, PIL, brainscan.preprocessing, pynetdicom, dicomweb_client"

# The onnxruntime flavour's TensorRT provider caches its engines one level below this
# folder (docker/compose.yaml mounts a volume here; a fresh volume starts with its content,
# so the server's user owns it).
RUN mkdir -p /var/cache/brainscan/ort-trt && chown -R 1000:1000 /var/cache/brainscan

# The image's own unprivileged user (uid 1000, made by NGC's Dockerfile); the root file
# system is mounted read-only by docker/compose.yaml, HOME and /tmp are tmpfs there.
USER triton-server
ENV HOME=/tmp PYTHONDONTWRITEBYTECODE=1
WORKDIR /models
EXPOSE 8000 8001 8002
# Check the engines against this image's TensorRT and this GPU first (a mismatch is said in
# one plain paragraph instead of a deserialization error per model); then serve under the
# watchdog, which restarts the server when real inferences keep failing (Triton restarts
# no dead python stub). TLS and the admin key come from BRAINSCAN_* variables (README).
CMD ["sh", "-c", "brainscan doctor --repository /models && exec brainscan serve --tritonserver /opt/tritonserver/bin/tritonserver --repository /models --host 0.0.0.0 --log-file /dev/stdout"]
