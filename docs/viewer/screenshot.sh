#!/usr/bin/env bash
# Draws a DICOM SEG over its MR series in dwv (https://github.com/ivmartel/dwv), a DICOM viewer
# that runs in the browser, and saves a screenshot: headless Chromium, the page served on
# 127.0.0.1 only, the server ended by its process id.
#   docs/viewer/screenshot.sh SERIES_DIR SEG.dcm OUT.png [WORK_DIR]
# Needs npm (to fetch dwv 0.36.4) and chromium. `make viewer-shot` runs it on the demo's series.
set -euo pipefail
series_dir=$1 seg=$2 out=$3 work=${4:-artifacts/viewer}
here=$(cd "$(dirname "$0")" && pwd)
for tool in npm chromium python3; do
	command -v "$tool" >/dev/null || { echo "viewer-shot needs $tool (Debian: apt install npm chromium)" >&2; exit 1; }
done

mkdir -p "$work/dicom"
[ -d "$work/node_modules/dwv" ] || npm install --prefix "$work" --no-audit --no-fund --silent dwv@0.36.4
cp "$here/index.html" "$work/" && cp -r "$here/globals" "$work/"
rm -f "$work"/dicom/*.dcm
cp "$series_dir"/*.dcm "$work/dicom/" && cp "$seg" "$work/seg.dcm"
python3 - "$work" <<'PY'
import json, pathlib, sys
work = pathlib.Path(sys.argv[1])
series = sorted(f"dicom/{p.name}" for p in (work / "dicom").glob("*.dcm"))
(work / "files.json").write_text(json.dumps({"series": series, "seg": "seg.dcm"}))
PY

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$work" >"$work/http.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null' EXIT
for _ in $(seq 50); do python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null && break; sleep 0.1; done

url="http://127.0.0.1:$port/index.html"
browser=(chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --virtual-time-budget=20000)
page=$("${browser[@]}" --dump-dom "$url" 2>/dev/null)
line=$(printf '%s' "$page" | sed -n 's:.*<div id="status">\([^<]*\)</div>.*:\1:p')
case "$page" in
	*"<title>done</title>"*) ;;
	*) echo "dwv did not draw the SEG: ${line:-no status}" >&2; exit 1 ;;
esac
"${browser[@]}" --window-size=512,540 --screenshot="$(realpath -m "$out")" "$url" 2>/dev/null
echo "$line"
echo "screenshot: $out"
