#!/usr/bin/env bash
# Install the Tandem device runtime on a Jetson (JetPack 6) or any Debian/Ubuntu box, as a systemd service.
#
#   sudo deploy/jetson/install.sh            # from a checkout of the project
#
# - a user `tandem` in the video and dialout groups
# - /opt/tandem/venv: a virtual environment with --system-site-packages, so JetPack's TensorRT
#   bindings (python3-libnvinfer) and its OpenCV with GStreamer are importable; the project and
#   its pinned dependencies on top (constraints.txt). On a Jetson, PyPI's opencv-python-headless is
#   left out so JetPack's OpenCV (with GStreamer, for nvarguscamerasrc) is the one imported.
# - /etc/tandem/edge.yaml from deploy/jetson/edge.example.yaml, if there is none yet
# - /etc/systemd/system/tandem-edge.service, enabled and started
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PREFIX=/opt/tandem
VENV="$PREFIX/venv"

if [[ $EUID -ne 0 ]]; then
  echo "install.sh: run as root (sudo)" >&2; exit 1
fi
PY="$(command -v python3)"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || { echo "install.sh: Python 3.10 or newer is needed" >&2; exit 1; }
"$PY" -c 'import venv' 2>/dev/null || apt-get install -y python3-venv

JETSON=0
if [[ -f /etc/nv_tegra_release ]]; then
  JETSON=1
  # TensorRT's Python bindings, pycuda's build needs and GStreamer's OpenCV come from JetPack's apt repository.
  apt-get install -y python3-libnvinfer python3-libnvinfer-dev python3-opencv cuda-nvcc-* libcudart-dev* || true
fi

id tandem >/dev/null 2>&1 || useradd --system --home /var/lib/tandem --shell /usr/sbin/nologin tandem
usermod -a -G video,dialout tandem

mkdir -p "$PREFIX"
"$PY" -m venv --system-site-packages "$VENV"
"$VENV/bin/pip" install --upgrade pip >/dev/null
if [[ $JETSON == 1 ]]; then
  # Keep JetPack's OpenCV: install everything else from the lock, then the project without its deps.
  # These are the base (common/, protocol/) and edge extras' packages, less OpenCV, plus pycuda;
  # the device runs edge/, common/ and protocol/ only, and nothing of the hub's is installed.
  grep -v '^opencv-python-headless==' "$ROOT/constraints.txt" > "$PREFIX/constraints.txt"
  "$VENV/bin/pip" install -c "$PREFIX/constraints.txt" numpy onnxruntime paho-mqtt Pillow grpcio sqlite-utils \
    prometheus-client pyserial protobuf pydantic PyYAML pycuda
  "$VENV/bin/pip" install --no-deps "$ROOT"
else
  "$VENV/bin/pip" install -c "$ROOT/constraints.txt" "$ROOT[edge]"
fi
"$VENV/bin/python" - <<'PY'
from common.inference import available
for name, why in available().items():
    print(f"backend {name}: {why}")
PY

install -d -o tandem -g tandem -m 0750 /var/lib/tandem /var/lib/tandem/models
install -d -m 0755 /etc/tandem
if [[ ! -f /etc/tandem/edge.yaml ]]; then
  install -m 0644 "$ROOT/deploy/jetson/edge.example.yaml" /etc/tandem/edge.yaml
  echo "wrote /etc/tandem/edge.yaml: set device_id, the source, the model and the hub before starting"
fi
install -m 0644 "$ROOT/deploy/jetson/tandem-edge.service" /etc/systemd/system/tandem-edge.service
systemctl daemon-reload
systemctl enable tandem-edge.service
if "$VENV/bin/tandem" edge check-config /etc/tandem/edge.yaml; then
  systemctl restart tandem-edge.service
  echo "tandem-edge running: systemctl status tandem-edge; curl -s localhost:9108/healthz"
else
  echo "fix /etc/tandem/edge.yaml, then: systemctl start tandem-edge"
fi
