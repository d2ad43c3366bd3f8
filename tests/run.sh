#!/usr/bin/env bash
# The whole test suite, exactly as the README and CI run it: install what the tests
# need, start a real Kafka broker and Redis on loopback (tests/infra), run pytest,
# and stop the services again. Extra arguments go to pytest.
#
# The tests run in two phases: first every test that leaves the broker and Redis
# running, spread over NPO_TEST_WORKERS pytest-xdist processes (default 3, one more
# than a small CI machine's 2 cores: an integration test spends most of its time
# waiting on the broker, a session timeout or a quiet period, so a third process
# fills those waits; 1 runs them in this process), then, one at a time, the few
# that stop or restart a service (marked `serial`). Each test file stays on one
# process (`--dist loadfile`), so a module's costly fixture (30 simulated days, a
# secured broker) is built once.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
tests/infra/up.sh
# shellcheck disable=SC1091
source "${NPO_INFRA_DIR:-$REPO/.infra}/env.sh"
trap 'tests/infra/down.sh >/dev/null 2>&1 || true' EXIT
PY="${PYTHON:-python3}"
WORKERS="${NPO_TEST_WORKERS:-3}"
[[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || { echo "NPO_TEST_WORKERS must be a positive integer, not '$WORKERS'" >&2; exit 2; }
parallel=()
[ "$WORKERS" -gt 1 ] && parallel=(-n "$WORKERS" --dist loadfile)

# the phase options go last, so that they win over the same options in the arguments
shared=0; "$PY" -m pytest "$@" ${parallel[@]+"${parallel[@]}"} --phase shared || shared=$?
case "$shared" in 2|3|4) exit "$shared" ;; esac  # interrupted, internal error, usage error
if [ "$shared" -eq 1 ]; then  # a failure: stop here if asked to stop at the first
    for arg in "$@"; do case "$arg" in -x*|--exitfirst|--maxfail*) exit 1 ;; esac; done
fi
serial=0; "$PY" -m pytest "$@" -n 0 --phase serial || serial=$?
# pytest exits 5 when a phase selects no test (say, arguments that name only serial tests)
for rc in "$shared" "$serial"; do
    [ "$rc" -eq 0 ] || [ "$rc" -eq 5 ] || exit "$rc"
done
[ "$shared" -eq 5 ] && [ "$serial" -eq 5 ] && exit 5
exit 0
