#!/usr/bin/env bash
# Creates .cache/venv with the Python packages the tests use (confluent-kafka for the publishing
# example) and prints the path of its python. A second run reuses it.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.cache/venv
requirements=docs/examples/requirements.txt
stamp=$venv/.installed-$(sha256sum "$requirements" | cut -c1-16)
if [[ ! -f $stamp ]]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2
  touch "$stamp"
fi
echo "$PWD/$venv/bin/python"
