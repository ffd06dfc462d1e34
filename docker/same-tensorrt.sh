#!/bin/sh
# A TensorRT plan loads only on the TensorRT release that built it, so the export image,
# which builds the engines, and the Triton image, which loads them, must hold the same
# TensorRT x.y.z. No source gives the exact version of an NGC release before its images are
# pulled, so none is pinned: each image build records the version it found
# (/opt/brainscan/tensorrt-version), and `make gpu` runs this before any engine is built.
set -eu
compose=${COMPOSE:-docker compose -f docker/compose.yaml}

recorded() {
	# shellcheck disable=SC2086  # $compose is a command line
	$compose run --rm --no-deps --entrypoint cat "$1" /opt/brainscan/tensorrt-version | tr -d ' \r\n'
}

release() { echo "$1" | cut -d. -f1-3; }

export_version=$(recorded export)
triton_version=$(recorded triton)
if [ -z "$export_version" ] || [ -z "$triton_version" ]; then
	echo "could not read the TensorRT version recorded in the images (export: '${export_version}', triton: '${triton_version}'): build them again with \`$compose --profile tools build\`" >&2
	exit 1
fi
if [ "$(release "$export_version")" != "$(release "$triton_version")" ]; then
	echo "the export image holds TensorRT ${export_version} and the Triton image ${triton_version}: engines built in one would not load in the other. Build both from the same NGC release (docker/.env) and run \`$compose --profile tools build\` again" >&2
	exit 1
fi
echo "TensorRT $(release "$export_version") in both images"
