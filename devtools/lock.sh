#!/usr/bin/env bash
# make lock: pyproject.toml's dependencies (and its dev group) locked with hashes, for Python 3.11:
#   requirements/runtime.txt  what the services, the client and the CLI need (the container installs it)
#   requirements/dev.txt      that and the dev group (make installs it)
# uv keeps every version already in a file unless asked to --upgrade; pip installs them with --require-hashes.
set -euo pipefail
uv="$1"; shift
cd "$(dirname "$0")/.."
common=(--python-version 3.11 --generate-hashes --quiet --custom-compile-command "make lock" "$@")
"$uv" pip compile pyproject.toml "${common[@]}" -o requirements/runtime.txt
"$uv" pip compile pyproject.toml --group pyproject.toml:dev "${common[@]}" -o requirements/dev.txt
echo "lock: $(grep -c '==' requirements/runtime.txt) runtime and $(grep -c '==' requirements/dev.txt) dev pins"
