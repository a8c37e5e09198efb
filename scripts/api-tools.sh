#!/usr/bin/env bash
# The OpenAPI tools of tests/integration/openapi.rs, from PyPI into a virtualenv (Debian's
# python3-venv; nothing installed system-wide): openapi-spec-validator validates
# docs/openapi.yaml, schemathesis fuzzes a running agent from it. Idempotent: a venv holding
# the pinned versions is reused. Prints the venv's bin directory.
#
#   "$(scripts/api-tools.sh)/openapi-spec-validator" docs/openapi.yaml
#
# Environment: KPULSE_TEST_SCHEMATHESIS_VERSION, KPULSE_TEST_OPENAPI_VALIDATOR_VERSION.
set -euo pipefail
cd "$(dirname "$0")/.."
schemathesis="${KPULSE_TEST_SCHEMATHESIS_VERSION:-4.32.5}"
validator="${KPULSE_TEST_OPENAPI_VALIDATOR_VERSION:-0.9.0}"
venv="$PWD/target/tools/api-venv"
wanted="schemathesis==$schemathesis openapi-spec-validator==$validator"
stamp="$venv/kpulse.versions"
if [ -x "$venv/bin/schemathesis" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ]; then
    echo "$venv/bin"
    exit 0
fi
# Debian's interpreter, not whatever python3 comes first on PATH (pyenv shims and the like).
python=/usr/bin/python3
[ -x "$python" ] || { echo "$python not found: apt-get install python3 python3-venv" >&2; exit 1; }
mkdir -p "$(dirname "$venv")"
log="$(dirname "$venv")/api-venv.log"
echo "installing $wanted from PyPI into $venv (once)" >&2
# shellcheck disable=SC2086
if ! { "$python" -m venv --clear "$venv" && "$venv/bin/pip" install --quiet --disable-pip-version-check $wanted; } \
        >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "installing $wanted failed" >&2
    exit 1
fi
echo "$wanted" >"$stamp"
echo "$venv/bin"
