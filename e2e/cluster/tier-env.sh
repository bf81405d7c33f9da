# shellcheck shell=bash
# tier-env.sh: what every node-tier e2e script sets before its own variables. Sourced, after
#   E2E=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# it sets REPO (the checkout), CLUSTER (the cluster script), the pinned versions (versions.env), CACHE (the
# build cache of e2e/cluster/build.sh) and puts the cached binaries (kubectl, helm, ...) first on PATH.
# shellcheck disable=SC2034  # used by the scripts that source this file
REPO=$(cd "$E2E/.." && pwd)
# shellcheck disable=SC2034
CLUSTER=$E2E/cluster/cluster
# shellcheck source-path=SCRIPTDIR source=versions.env
. "$E2E/cluster/versions.env"
CACHE=${SIGIL_E2E_CACHE:-$HOME/.cache/sigil-e2e}
export PATH=$CACHE/bin:$PATH
