#!/usr/bin/env bash
# The whole test suite, exactly as the README and CI run it: install what the tests
# need, start a real Kafka broker and Redis on loopback (tests/infra), run pytest,
# and stop the services again. Extra arguments go to pytest.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
tests/infra/up.sh
# shellcheck disable=SC1091
source "${NPO_INFRA_DIR:-$REPO/.infra}/env.sh"
trap 'tests/infra/down.sh >/dev/null 2>&1 || true' EXIT
"${PYTHON:-python3}" -m pytest "$@"
