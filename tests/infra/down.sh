#!/usr/bin/env bash
# Why this exists: counterpart of up.sh - stops the test Kafka (and the secured one) and Redis (state/data are kept
# in <state>/kafka and <state>/redis; delete ${NPO_INFRA_DIR:-.infra} for a clean slate).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
rc=0
"$HERE/kafka.sh" stop || rc=1
"$HERE/kafka_secure.sh" stop || rc=1  # started by tests/integration/test_secured_cluster.py
"$HERE/redis.sh" stop || rc=1
exit $rc
