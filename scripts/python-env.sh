#!/usr/bin/env bash
# Creates .cache/venv with the Python packages the tests use (confluent-kafka for the publishing
# example, jsonschema and openapi-spec-validator for the admin API's OpenAPI check, and the
# official Standard Webhooks library for the interoperability test) and the Kubernetes schemas
# that scripts/chart.sh validates the Helm chart against, and prints the path of its python. A
# second run reuses it.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.cache/venv
requirements=(docs/examples/requirements.txt tests/api/requirements.txt tests/interop/requirements.txt
  deploy/helm/requirements.txt)
stamp=$venv/.installed-$(cat "${requirements[@]}" | sha256sum | cut -c1-16)
if [[ ! -f $stamp ]]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${requirements[@]/#/-r}" >&2
  touch "$stamp"
fi
echo "$PWD/$venv/bin/python"
