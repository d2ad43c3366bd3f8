#!/usr/bin/env bash
# Why this exists: integration and fault tests need a REAL Redis (latest-state store) without
# Docker. Runs a throw-away, non-persistent redis-server on 127.0.0.1 (apt-installs it if missing).
#   redis.sh start|stop|kill|status|env
# stop+start reuses the same port (fault tests stop/start Redis mid-run).
# Env: NPO_INFRA_DIR (state), NPO_REDIS_PORT, NPO_REDIS_PASSWORD (enables requirepass).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-python3}
STATE="${NPO_INFRA_DIR:-$REPO/.infra}/redis"
PIDF="$STATE/redis.pid"
PASS=${NPO_REDIS_PASSWORD:-}

log() { echo "redis.sh: $*" >&2; }
port() { cat "$STATE/port" 2>/dev/null; }
running() { local pid; pid=$(cat "$PIDF" 2>/dev/null) || return 1
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && grep -q redis-server "/proc/$pid/cmdline" 2>/dev/null; }
ping() { [[ "$(redis-cli -h 127.0.0.1 -p "$(port)" ${PASS:+-a "$PASS" --no-auth-warning} ping 2>/dev/null)" == PONG ]]; }

ensure_installed() {
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return
  log "redis-server missing; installing with apt-get"
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >&2
}

start() {
  ensure_installed
  mkdir -p "$STATE"
  if running && ping; then print_env; return; fi
  running && stop TERM
  local p=${NPO_REDIS_PORT:-$(port || true)}
  if [[ -n "$p" ]] && ! "$PY" -c 'import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); s.bind(("127.0.0.1",int(sys.argv[1])))' "$p" 2>/dev/null; then
    [[ -n "${NPO_REDIS_PORT:-}" ]] && { log "port $p is in use"; return 1; }
    log "WARNING: previous port $p is taken by another process; picking a new one"; p=""
  fi
  p=${p:-$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
  echo "$p" >"$STATE/port"
  redis-server --bind 127.0.0.1 --port "$p" --save "" --appendonly no --daemonize yes \
    --pidfile "$PIDF" --logfile "$STATE/redis.log" --dir "$STATE" ${PASS:+--requirepass "$PASS"} 9>&-
  log "waiting for PING on 127.0.0.1:$p"
  for _ in $(seq 1 100); do ping && { print_env; return; }; sleep 0.1; done
  tail -n 20 "$STATE/redis.log" >&2; log "redis did not answer PING"; return 1
}

stop() {  # $1 = first signal (TERM = clean shutdown, KILL = crash)
  local pid
  if ! running; then rm -f "$PIDF"; log "not running"; return 0; fi
  pid=$(cat "$PIDF"); kill "-${1:-TERM}" "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && { log "SIGKILL $pid"; kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; }
  rm -f "$PIDF"; log "stopped pid $pid"
}

print_env() { [[ -n "$(port)" ]] || { log "no port file; run start first"; return 1; }
  local auth=""
  [[ -n "$PASS" ]] && auth=":$("$PY" -c 'import sys,urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$PASS")@"
  echo "export NPO_REDIS_URL=redis://${auth}127.0.0.1:$(port)/0"; }

mkdir -p "$STATE"
exec 9>"$STATE/.lock"; flock 9   # serialise concurrent start/stop
case "${1:-}" in
  start) start ;;
  stop) stop TERM ;;
  kill) stop KILL ;;
  status) if running; then echo "running pid $(cat "$PIDF") on 127.0.0.1:$(port)"; else echo "stopped"; exit 1; fi ;;
  env) print_env ;;
  *) echo "usage: $0 start|stop|kill|status|env" >&2; exit 2 ;;
esac
