# Shared set-up for tools/demo, tools/test and tools/lock (sourced, not run).
# Creates .venv if it is missing and installs the project into it, pinned by constraints.txt;
# reinstalls only when pyproject.toml or constraints.txt changed. Sets ROOT and VENV.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${TANDEM_VENV:-$ROOT/.venv}

_tandem_python() {
  local candidate
  for candidate in ${PYTHON:-} python3 python3.13 python3.12 python3.11 python3.10; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "tandem: needs Python 3.10 or newer (Debian/Ubuntu: sudo apt-get install python3 python3-venv)" >&2
  return 1
}

_tandem_venv() {
  if [[ ! -x "$VENV/bin/python" ]]; then
    local python
    python=$(_tandem_python) || return 1
    echo "tandem: creating $VENV with $python" >&2
    "$python" -m venv "$VENV" || {
      echo "tandem: venv failed (Debian/Ubuntu: sudo apt-get install python3-venv)" >&2; return 1; }
  fi
  if [[ ${TANDEM_LOCKING:-} == 1 ]]; then
    # tools/lock needs only uv: installing the project first would fail whenever the lock it is
    # about to rewrite no longer matches pyproject.toml (a range just narrowed, a package just added).
    [[ -x "$VENV/bin/uv" ]] || "$VENV/bin/python" -m pip install --quiet uv >&2 || return 1
    return 0
  fi
  local want
  want=$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -d' ' -f1)
  if [[ "$(cat "$VENV/.tandem-installed" 2>/dev/null)" != "$want" ]]; then
    echo "tandem: installing the project and its pinned dependencies into $VENV (a few minutes the first time)" >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2 &&
    # llama-cpp-python (the orchestrator's embedded model) compiles llama.cpp here the first time; its multimodal
    # library is not needed, and leaving it out shortens the build. pip caches the wheel for the next venv.
    CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" \
      "$VENV/bin/python" -m pip install --quiet -c "$ROOT/constraints.txt" -e "$ROOT[dev]" >&2 || return 1
    echo "$want" > "$VENV/.tandem-installed"
  fi
}

# A Debian package the project runs (mosquitto, postgresql): installed with apt-get when we are root (or have
# password-less sudo); otherwise say how. With "optional", a missing package is only a notice.
_tandem_apt() {
  local package=$1 present=$2 why=$3 optional=${4:-}
  if eval "$present"; then return 0; fi
  local sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    if sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo="none"; fi
  fi
  if [[ $sudo != none ]] && command -v apt-get >/dev/null 2>&1; then
    echo "tandem: installing $package with apt-get" >&2
    { [[ -n ${_TANDEM_APT_UPDATED:-} ]] || $sudo apt-get update -qq >&2; } && _TANDEM_APT_UPDATED=1 &&
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$package" >&2 && return 0
  fi
  if [[ $optional == optional ]]; then
    echo "tandem: $package not installed; $why (to install: sudo apt-get install -y $package)" >&2
    return 0
  fi
  echo "tandem: $why: sudo apt-get install -y $package" >&2
  return 1
}

# Mosquitto; with "optional" (the demo), a missing broker means the embedded one.
_tandem_mosquitto() {
  local why="the tests need mosquitto"
  [[ ${1:-} == optional ]] && why="using the embedded broker"
  _tandem_apt mosquitto 'command -v mosquitto >/dev/null 2>&1 || [[ -x /usr/sbin/mosquitto ]]' "$why" "${1:-}"
}

# PostgreSQL, for the hub's shared stores (tests start throwaway servers with tandem.postgres; the package's
# own cluster is not used).
_tandem_postgres() {
  _tandem_apt postgresql 'compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null 2>&1' \
    "the tests of several hub replicas need PostgreSQL"
}

# Debian's chromium, for the console's browser tests (Playwright drives it; browser builds are never downloaded).
_tandem_chromium() {
  _tandem_apt chromium '[[ -x ${TANDEM_CHROMIUM:-/usr/bin/chromium} ]]' "the console's browser tests need chromium"
}

# PyTorch, for the tools that train models (tools.detection_models) and never on a device or the hub: the CPU
# build, from PyTorch's own index (PyPI's Linux wheel is the CUDA build, several GB). A machine whose pip finds
# the CPU wheel elsewhere (a local index or wheel folder) uses that.
TORCH_VERSION=2.13.0
_tandem_torch() {
  if "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    return 0
  fi
  echo "tandem: installing torch $TORCH_VERSION (CPU build) for the training tools" >&2
  "$VENV/bin/python" -m pip install --quiet --retries 1 -c "$ROOT/constraints.txt" "torch==$TORCH_VERSION" \
    --extra-index-url https://download.pytorch.org/whl/cpu >&2
}

_tandem_venv
