#!/usr/bin/env bash
# Installs the Python gRPC library (PyPI `grpcio`, which carries gRPC C-core's xDS client) into its own virtual
# environment, for the xDS peer test (integration-tests/tests/xds_peers.rs), and prints the venv's python on the
# last line.
#
#   integration-tests/scripts/install-grpcio.sh   # venv at ${LATERAL_GRPCIO_VENV:-$HOME/.cache/lateral/grpcio-venv}
#
# The test finds the interpreter through $LATERAL_GRPCIO_PYTHON, then this venv's default location.
set -euo pipefail

venv="${LATERAL_GRPCIO_VENV:-$HOME/.cache/lateral/grpcio-venv}"
version="${LATERAL_GRPCIO_VERSION:-1.*}"
python="${PYTHON:-python3}"

if ! command -v "$python" >/dev/null 2>&1; then
    echo "install-grpcio: $python not found (set PYTHON=..., or apt-get install -y python3 python3-venv)" >&2
    exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "grpcio==$version" >&2
"$venv/bin/python" -c 'import grpc; print("grpcio", grpc.__version__)' >&2
echo "$venv/bin/python"
