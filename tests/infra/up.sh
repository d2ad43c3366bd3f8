#!/usr/bin/env bash
# Why this exists: one command to get a dev/CI machine ready for the integration and fault
# tests without Docker: installs the Python test deps, starts real Kafka + Redis on loopback
# and writes <state>/env.sh (source it, or let tests/services.py find the services itself).
# NPO_SKIP_PIP=1 skips the pip step.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
STATE="${NPO_INFRA_DIR:-$REPO/.infra}"

if [[ -z "${NPO_SKIP_PIP:-}" ]]; then
  echo "up.sh: pip install -e \"$REPO[test]\"" >&2
  PIP_ROOT_USER_ACTION=ignore "${PYTHON:-python3}" -m pip install -q --disable-pip-version-check -e "$REPO[test]" >&2
fi
mkdir -p "$STATE"
kafka_env=$("$HERE/kafka.sh" start)
redis_env=$("$HERE/redis.sh" start)
printf '%s\n%s\n' "$kafka_env" "$redis_env" >"$STATE/env.sh.tmp" && mv "$STATE/env.sh.tmp" "$STATE/env.sh"
echo "up.sh: wrote $STATE/env.sh (source it):" >&2
cat "$STATE/env.sh"
