#!/usr/bin/env bash
# Why this exists: the "secured cluster" tests need a broker that only lets clients in over
# SASL/SCRAM on TLS. This runs a second single-node KRaft Kafka (same jars as kafka.sh) whose
# client listener is SASL_SSL with SCRAM-SHA-256; the controller and inter-broker listeners stay
# PLAINTEXT on loopback. On first start it makes, with the JDK's keytool, a test CA and a broker
# certificate (SAN IP:127.0.0.1) signed by it, and a SCRAM user with a random password that is
# written into the KRaft metadata when the storage is formatted (kafka-storage format --add-scram).
#   kafka_secure.sh start|stop|status|env|clean     (clean = stop and delete all state)
# `start`/`env` print the client settings as NPO_SECURE_<SETTING> (e.g.
# NPO_SECURE_KAFKA_SASL_PASSWORD): the application's NPO_<SETTING> names, prefixed.
# Env: NPO_INFRA_CACHE, NPO_INFRA_DIR (state: <dir>/kafka-secure), NPO_KAFKA_START_TIMEOUT.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-python3}
VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/pom.xml")
CACHE="${NPO_INFRA_CACHE:-$HOME/.cache/npo-stream}/kafka-$VERSION"
LIB="$CACHE/lib"
STATE="${NPO_INFRA_DIR:-$REPO/.infra}/kafka-secure"
PIDF="$STATE/kafka.pid"
USER_NAME=npo
MECH=SCRAM-SHA-256

log() { echo "kafka_secure.sh: $*" >&2; }
port() { cat "$STATE/port" 2>/dev/null; }
secret() { "$PY" -c 'import secrets; print(secrets.token_hex(16))'; }
running() {  # pid alive AND it is our broker (guards against pid reuse)
  local pid; pid=$(cat "$PIDF" 2>/dev/null) || return 1
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $STATE/server.properties"
}

print_env() {
  [[ -n "$(port)" && -s "$STATE/scram.password" ]] || { log "not set up; run start first"; return 1; }
  cat <<EOF
export NPO_SECURE_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$(port)
export NPO_SECURE_KAFKA_SECURITY_PROTOCOL=SASL_SSL
export NPO_SECURE_KAFKA_SASL_MECHANISM=$MECH
export NPO_SECURE_KAFKA_SASL_USERNAME=$USER_NAME
export NPO_SECURE_KAFKA_SASL_PASSWORD=$(cat "$STATE/scram.password")
export NPO_SECURE_KAFKA_SSL_CAFILE=$STATE/ca.pem
EOF
}

# The client's view of "ready": a Metadata answer over SASL_SSL with the generated credentials.
wait_ready() {  # $1 = timeout seconds
  "$PY" - "$(cat "$PIDF")" "$1" "127.0.0.1:$(port)" "$USER_NAME" "$STATE/scram.password" "$STATE/ca.pem" <<'PY'
import os, sys, time
from confluent_kafka.admin import AdminClient
pid, timeout, bs, user, pwfile, ca = int(sys.argv[1]), float(sys.argv[2]), *sys.argv[3:]
conf = {"bootstrap.servers": bs, "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": user, "sasl.password": open(pwfile).read().strip(), "ssl.ca.location": ca,
        "log_level": 0, "reconnect.backoff.max.ms": 500}
deadline, last = time.monotonic() + timeout, None
while time.monotonic() < deadline:
    try: os.kill(pid, 0)
    except OSError: sys.exit("broker process %d died" % pid)
    try:
        if AdminClient(conf).list_topics(timeout=3).brokers:
            sys.exit(0)
    except Exception as exc:
        last = exc
    time.sleep(0.3)
sys.exit("timed out after %ss waiting for SASL_SSL metadata from %s: %s" % (timeout, bs, last))
PY
}

fetch_jars() {  # the cache layout of kafka.sh's fetch_jars (normally it has run already: up.sh)
  [[ -f "$LIB/kafka_2.13-$VERSION.jar" ]] && return
  log "fetching Kafka $VERSION jars with Maven into $LIB"
  local tmp="$CACHE/lib.tmp.$$"; rm -rf "$tmp"; mkdir -p "$CACHE"
  mvn -q -B -f "$HERE/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$tmp" >"$CACHE/mvn.log" 2>&1 || { cat "$CACHE/mvn.log" >&2; return 1; }
  rm -rf "$LIB"; mv "$tmp" "$LIB"; cp "$HERE/pom.xml" "$CACHE/pom.xml"
}

make_certs() {  # test CA + broker key pair signed by it, in PKCS12; the CA also as PEM for clients
  local pass; pass=$(secret)
  kt() { keytool -noprompt -storetype PKCS12 -storepass "$pass" -keystore "$STATE/$1" "${@:2}"; }
  rm -f "$STATE"/*.p12 "$STATE"/*.pem "$STATE/certs.ok" && echo "$pass" >"$STATE/keystore.password" &&
  kt ca.p12 -genkeypair -alias ca -keyalg RSA -keysize 2048 -validity 3650 -dname "CN=npo-stream test CA" \
    -ext bc:c &&
  kt ca.p12 -exportcert -rfc -alias ca -file "$STATE/ca.pem" &&
  kt broker.p12 -genkeypair -alias broker -keyalg RSA -keysize 2048 -validity 3650 -dname "CN=127.0.0.1" &&
  kt broker.p12 -certreq -alias broker -file "$STATE/broker.csr" &&
  kt ca.p12 -gencert -alias ca -rfc -validity 3650 -infile "$STATE/broker.csr" -outfile "$STATE/broker.pem" \
    -ext san=ip:127.0.0.1,dns:localhost -ext eku=serverAuth -ext ku:c=digitalSignature,keyEncipherment &&
  kt broker.p12 -importcert -alias ca -file "$STATE/ca.pem" &&        # the chain's root, then
  kt broker.p12 -importcert -alias broker -file "$STATE/broker.pem" && # the CA's reply to the request
  touch "$STATE/certs.ok"
}

write_config() {  # $1 = SASL_SSL port, $2 = inter-broker port, $3 = controller port
  local pass; pass=$(cat "$STATE/keystore.password")
  cat >"$STATE/server.properties" <<EOF
# generated by tests/infra/kafka_secure.sh - clients: SASL_SSL + SCRAM-SHA-256 only
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$3
listeners=SASL_SSL://127.0.0.1:$1,INTERNAL://127.0.0.1:$2,CONTROLLER://127.0.0.1:$3
advertised.listeners=SASL_SSL://127.0.0.1:$1,INTERNAL://127.0.0.1:$2
listener.security.protocol.map=SASL_SSL:SASL_SSL,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=INTERNAL
controller.listener.names=CONTROLLER
sasl.enabled.mechanisms=$MECH
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PKCS12
ssl.keystore.location=$STATE/broker.p12
ssl.keystore.password=$pass
ssl.key.password=$pass
ssl.client.auth=none
log.dirs=$STATE/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=2
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.segment.bytes=16777216
num.recovery.threads.per.data.dir=1
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=500
EOF
  cat >"$STATE/log4j2.properties" <<EOF
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $STATE/logs/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
EOF
  echo "$1" >"$STATE/port"
}

start() {
  local timeout=${NPO_KAFKA_START_TIMEOUT:-90}
  if running && wait_ready "$timeout" >&2; then print_env; return; fi
  running && stop
  fetch_jars
  command -v keytool >/dev/null || { log "keytool (JDK) not found"; return 1; }
  mkdir -p "$STATE/logs"
  [[ -s "$STATE/scram.password" ]] || { (umask 077; secret >"$STATE/scram.password"); rm -rf "$STATE/data"; }
  if [[ ! -f "$STATE/certs.ok" ]]; then
    log "making a test CA and broker certificate with keytool"
    make_certs >"$STATE/logs/keytool.log" 2>&1 || { cat "$STATE/logs/keytool.log" >&2; return 1; }
  fi
  local ports; ports=($("$PY" -c 'import socket
ss=[socket.socket() for _ in range(3)]; [s.bind(("127.0.0.1",0)) for s in ss]
print(" ".join(str(s.getsockname()[1]) for s in ss))'))
  write_config "${ports[@]}"
  if [[ ! -f "$STATE/data/meta.properties" ]]; then
    local cid; cid=$("$PY" "$HERE/kraft_cluster_id.py")
    log "formatting KRaft storage with SCRAM user '$USER_NAME'"
    java -Dlog4j2.configurationFile="$STATE/log4j2.properties" -cp "$LIB/*" kafka.tools.StorageTool format \
      -t "$cid" -c "$STATE/server.properties" --add-scram "$MECH=[name=$USER_NAME,password=$(cat "$STATE/scram.password")]" \
      >"$STATE/logs/format.log" 2>&1 || { cat "$STATE/logs/format.log" >&2; return 1; }
  fi
  local cds=""  # reuse kafka.sh's class-data-sharing archive when there is one (same class path)
  [[ -s "$CACHE/kafka.jsa" ]] && cds="-XX:SharedArchiveFile=$CACHE/kafka.jsa -Xshare:auto"
  # shellcheck disable=SC2086
  setsid java -Xms128m -Xmx384m -XX:+UseG1GC $cds -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$STATE/log4j2.properties" -Dkafka.logs.dir="$STATE/logs" \
    -cp "$LIB/*" kafka.Kafka "$STATE/server.properties" </dev/null >>"$STATE/logs/stdout.log" 2>&1 9>&- &
  echo $! >"$PIDF"
  log "started pid $! ; waiting up to ${timeout}s for SASL_SSL on 127.0.0.1:$(port)"
  if ! wait_ready "$timeout" >&2; then
    tail -n 30 "$STATE/logs/server.log" "$STATE/logs/stdout.log" >&2 || true
    return 1
  fi
  log "ready"; print_env
}

stop() {
  local pid
  if ! running; then rm -f "$PIDF"; log "not running"; return 0; fi
  pid=$(cat "$PIDF"); kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then log "SIGTERM timed out; SIGKILL $pid"; kill -KILL "$pid" 2>/dev/null || true; sleep 0.5; fi
  rm -f "$PIDF"; log "stopped pid $pid"
}

mkdir -p "$STATE"
exec 9>"$STATE/.lock"; flock 9   # serialise concurrent start/stop
case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running; then echo "running pid $(cat "$PIDF") on 127.0.0.1:$(port)"; else echo "stopped"; exit 1; fi ;;
  env) print_env ;;
  clean) stop; find "$STATE" -mindepth 1 -not -name .lock -delete ;;
  *) echo "usage: $0 start|stop|status|env|clean" >&2; exit 2 ;;
esac
