#!/usr/bin/env bash
# Create ./.venv with recon installed (editable, with the dev extra) unless it is already there.
#
# torch: if the Python that creates the venv already has torch (e.g. a GPU user's CUDA build),
# the venv sees it through --system-site-packages and it is kept. Otherwise the CPU build
# torch==$TORCH_VERSION is installed first (from a local wheel when pip's find-links has one,
# else from PyTorch's CPU index), so no multi-GB CUDA build is ever pulled on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
VENV=.venv
STAMP=$VENV/.recon-installed

# open3d's native library needs libusb-1.0 from the system.
if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bootstrap: installing libusb-1.0-0 (needed by open3d)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0) >/dev/null
  else
    echo "bootstrap: open3d needs the system library libusb-1.0; install it (Debian/Ubuntu: sudo apt-get install libusb-1.0-0)" >&2
    exit 1
  fi
fi

if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ]; then exit 0; fi

if "$PYTHON" -c 'import torch' 2>/dev/null; then
  echo "bootstrap: keeping the torch of $PYTHON ($("$PYTHON" -c 'import torch; print(torch.__version__)'))"
  [ -d "$VENV" ] || "$PYTHON" -m venv --system-site-packages "$VENV"
else
  [ -d "$VENV" ] || "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
  echo "bootstrap: installing CPU torch==$TORCH_VERSION"
  if [ "$(uname -s)" = Darwin ]; then
    $PIP install -q "torch==$TORCH_VERSION"  # PyPI's macOS wheels are CPU/MPS builds
  elif ! $PIP install -q "torch==$TORCH_VERSION+cpu" 2>/dev/null; then  # a local CPU wheel or mirror
    $PIP install -q --retries 1 --timeout 30 "torch==$TORCH_VERSION+cpu" \
      --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple
  fi
fi
EXTRAS=dev,diffusion,colmap
if "$VENV/bin/python" -c 'import sys, torch; sys.exit(torch.version.cuda is not None)' 2>/dev/null; then
  EXTRAS=$EXTRAS,detect  # spconv's CPU build
else
  echo "bootstrap: CUDA torch: install the spconv-cu12x wheel matching your CUDA for 3D detection (pip install spconv-cu120, ...)"
fi
echo "bootstrap: installing recon and its dependencies ($EXTRAS) into $VENV"
$PIP install -q -e ".[$EXTRAS]" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c 'import recon, open3d, gsplat, nerfacc, diffusers, transformers' && touch "$STAMP"
