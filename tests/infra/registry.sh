#!/usr/bin/env bash
# Why this exists: the Schema Registry tests need a REAL Confluent-compatible registry, and CI /
# dev machines may have no Docker. This runs Apicurio Registry (its Confluent-compatible API under
# /apis/ccompat/v7) on 127.0.0.1 with in-memory storage, from its distribution on Maven Central,
# fetched once with Maven. Apicurio 3.0.x is the last line that runs on Java 17 (3.1+ need 21).
#   registry.sh start|stop|status|env
# Nothing persists: a restart is an empty registry.
# Env: NPO_INFRA_CACHE (download cache), NPO_INFRA_DIR (state), NPO_REGISTRY_PORT,
#      NPO_REGISTRY_START_TIMEOUT (s, default 90), NPO_REGISTRY_JVM_OPTS.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-python3}
VERSION=3.0.9
CACHE="${NPO_INFRA_CACHE:-$HOME/.cache/npo-stream}/apicurio-registry-$VERSION"
JAR="$CACHE/dist/apicurio-registry-app-$VERSION-runner.jar"
STATE="${NPO_INFRA_DIR:-$REPO/.infra}/registry"
PIDF="$STATE/registry.pid"
JVM_OPTS="-Xms64m -Xmx384m -XX:+UseSerialGC -XX:TieredStopAtLevel=1"  # NPO_REGISTRY_JVM_OPTS overrides

log() { echo "registry.sh: $*" >&2; }
port() { cat "$STATE/port" 2>/dev/null; }
url() { echo "http://127.0.0.1:$(port)/apis/ccompat/v7"; }

running() {  # pid alive AND it is our registry (guards against pid reuse)
  local pid; pid=$(cat "$PIDF" 2>/dev/null) || return 1
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-jar $JAR"
}

free_port() {
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
port_free() { "$PY" -c 'import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); s.bind(("127.0.0.1",int(sys.argv[1])))' "$1" 2>/dev/null; }

# Waits until the Confluent-compatible API lists subjects.
wait_ready() {  # $1 = timeout seconds
  "$PY" - "$(url)/subjects" "$(cat "$PIDF" 2>/dev/null || echo 0)" "$1" <<'PY'
import os, sys, time, urllib.request
url, pid, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    if pid:
        try: os.kill(pid, 0)
        except OSError: sys.exit("registry process %d died" % pid)
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except Exception:
        pass
    time.sleep(0.3)
sys.exit("timed out after %ss waiting for %s" % (timeout, url))
PY
}

fetch() {  # once per version
  [[ -f "$JAR" ]] && return
  log "fetching Apicurio Registry $VERSION with Maven into $CACHE (first run only)"
  local tmp="$CACHE/tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  mvn -q -B dependency:copy -Dartifact="io.apicurio:apicurio-registry-app:$VERSION:tar.gz:all" \
    -DoutputDirectory="$tmp" >"$CACHE/mvn.log" 2>&1 || { cat "$CACHE/mvn.log" >&2; rm -rf "$tmp"; return 1; }
  mkdir -p "$tmp/dist"; tar xzf "$tmp/apicurio-registry-app-$VERSION-all.tar.gz" -C "$tmp/dist"
  [[ -f "$tmp/dist/$(basename "$JAR")" ]] || { log "no $(basename "$JAR") in the distribution"; rm -rf "$tmp"; return 1; }
  rm -rf "$CACHE/dist"; mv "$tmp/dist" "$CACHE/dist"; rm -rf "$tmp"
}

start() {
  local timeout=${NPO_REGISTRY_START_TIMEOUT:-90}
  if running; then
    wait_ready "$timeout" >&2 && { print_env; return; }
    log "pid $(cat "$PIDF") alive but not answering; restarting"; stop
  fi
  fetch
  mkdir -p "$STATE/logs"
  local p; p=$(port || true)
  [[ -n "${NPO_REGISTRY_PORT:-}" ]] && p=$NPO_REGISTRY_PORT
  if [[ -n "$p" ]] && ! port_free "$p"; then
    [[ -n "${NPO_REGISTRY_PORT:-}" ]] && { log "port $p is in use"; return 1; }
    p=""
  fi
  p=${p:-$(free_port)}
  echo "$p" >"$STATE/port"
  # shellcheck disable=SC2086
  setsid java ${NPO_REGISTRY_JVM_OPTS:-$JVM_OPTS} -Djava.awt.headless=true \
    -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$p" \
    -Dapicurio.storage.kind=sql -Dapicurio.storage.sql.kind=h2 -Dapicurio.datasource.url=jdbc:h2:mem:npo_registry \
    -Dapicurio.import.work-dir="$STATE" -Dapicurio.storage.snapshot.location="$STATE" \
    -jar "$JAR" </dev/null >>"$STATE/logs/registry.log" 2>&1 9>&- &
  echo $! >"$PIDF"
  log "started pid $! ; waiting up to ${timeout}s for $(url) (log: $STATE/logs/registry.log)"
  if ! wait_ready "$timeout" >&2; then
    tail -n 30 "$STATE/logs/registry.log" >&2 || true
    stop
    return 1
  fi
  log "ready"; print_env
}

stop() {
  local pid
  if ! running; then rm -f "$PIDF"; log "not running"; return 0; fi
  pid=$(cat "$PIDF"); kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then log "SIGTERM timed out; SIGKILL $pid"; kill -KILL "$pid" 2>/dev/null || true; sleep 0.5; fi
  rm -f "$PIDF"; log "stopped pid $pid"
}

print_env() { [[ -n "$(port)" ]] || { log "no port file; run start first"; return 1; }
  echo "export NPO_SCHEMA_REGISTRY_URL=$(url)"; }

mkdir -p "$STATE"
exec 9>"$STATE/.lock"; flock 9   # serialise concurrent start/stop (e.g. pytest-xdist workers)
case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running; then echo "running pid $(cat "$PIDF") on $(url)"; else echo "stopped"; exit 1; fi ;;
  env) print_env ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
