#!/usr/bin/env bash
# helm for the deployment tests, built once from the Go module proxy (helm is not packaged in
# Debian): GOBIN=target/tools/bin go install helm.sh/helm/v3/cmd/helm@$KPULSE_TEST_HELM_VERSION.
# Idempotent: a binary of the wanted version is reused. Prints the binary's path.
#
#   scripts/helm.sh                    # -> /work/main/target/tools/bin/helm
#   "$(scripts/helm.sh)" lint deploy/helm/kpulse
#
# Environment: GO (the go binary, default `go`; Go >= 1.22, which helm 3.16 needs; an older
# go downloads a newer toolchain itself through GOTOOLCHAIN=auto), KPULSE_TEST_HELM_VERSION.
set -euo pipefail
cd "$(dirname "$0")/.."
version="${KPULSE_TEST_HELM_VERSION:-v3.16.4}"
bin_dir="$PWD/target/tools/bin"
helm="$bin_dir/helm"
stamp="$bin_dir/helm.version"
if [ -x "$helm" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$version" ]; then
    echo "$helm"
    exit 0
fi
go="${GO:-go}"
command -v "$go" >/dev/null || { echo "go not found (needed once to build helm): set GO=" >&2; exit 1; }
mkdir -p "$bin_dir"
log="$bin_dir/helm-build.log"
echo "building helm $version from the Go module proxy (once; a few minutes)" >&2
if ! GOBIN="$bin_dir" GOTOOLCHAIN=auto nice -n 10 "$go" install "helm.sh/helm/v3/cmd/helm@$version" \
        >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "go install helm.sh/helm/v3/cmd/helm@$version failed" >&2
    exit 1
fi
echo "$version" >"$stamp"
echo "$helm"
