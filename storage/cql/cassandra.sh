#!/usr/bin/env bash
# Runs real Apache Cassandra nodes on loopback addresses, from Maven Central's jars, for
# Switchboard's CQL tests and benchmarks. Needs a JDK (17) and Maven.
#
#   storage/cql/cassandra.sh fetch          download Cassandra's jars into the cache (once)
#   storage/cql/cassandra.sh start [N]      start N nodes (default 1) on 127.0.0.2..N+1,
#                                           wait until each serves CQL, print their
#                                           addresses (host:9042,...) on stdout
#   storage/cql/cassandra.sh kill K         kill -9 node K (1-based)
#   storage/cql/cassandra.sh restart K      start node K again (after kill), wait for CQL
#   storage/cql/cassandra.sh stop           stop every node and delete their data
#   storage/cql/cassandra.sh status         list the nodes and whether they run
#
# Environment: CASSANDRA_AUTH=password starts the nodes with password authentication
# (the superuser cassandra/cassandra); CASSANDRA_TLS=1 makes them accept TLS clients too
# (plain ones still work), with a certificate for their addresses signed by a CA whose
# certificate is written to $CASSANDRA_RUN/ca.pem; CASSANDRA_FIRST (2): node K listens on
# 127.0.0.(FIRST+K-1), so two clusters can run side by side with different run dirs; CASSANDRA_VERSION (5.0.6), CASSANDRA_CACHE (~/.cache/switchboard),
# CASSANDRA_RUN (/tmp/switchboard-cassandra: data, logs, pids), CASSANDRA_HEAP (1536m: each keyspace a test creates costs the node heap),
# CASSANDRA_DEADLINE (seconds to wait for CQL, 240).
set -euo pipefail

VERSION="${CASSANDRA_VERSION:-5.0.6}"
CACHE="${CASSANDRA_CACHE:-$HOME/.cache/switchboard}/cassandra-$VERSION"
RUN="${CASSANDRA_RUN:-/tmp/switchboard-cassandra}"
HEAP="${CASSANDRA_HEAP:-1536m}"
DEADLINE="${CASSANDRA_DEADLINE:-240}"

log() { echo "cassandra.sh: $*" >&2; }

fetch() {
    if [[ -f "$CACHE/lib/.complete" ]]; then
        return 0
    fi
    command -v mvn >/dev/null || { log "Maven (mvn) is needed to fetch Cassandra's jars"; exit 1; }
    mkdir -p "$CACHE"
    cat >"$CACHE/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>switchboard</groupId><artifactId>cassandra-node</artifactId><version>1</version>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId><artifactId>cassandra-all</artifactId>
      <version>$VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
    log "fetching cassandra-all $VERSION and its dependencies into $CACHE/lib"
    rm -rf "$CACHE/lib"
    (cd "$CACHE" && mvn -q -B dependency:copy-dependencies -DoutputDirectory="$CACHE/lib" >&2)
    touch "$CACHE/lib/.complete"
}

FIRST="${CASSANDRA_FIRST:-2}"
addr() { echo "127.0.0.$(($1 + FIRST - 1))"; }

# A CA and a certificate for every node's address, in a PKCS12 keystore for the nodes.
make_tls() {
    local n=$1 dir="$RUN/tls" san=""
    mkdir -p "$dir"
    for k in $(seq 1 "$n"); do san+="${san:+,}IP:$(addr "$k")"; done
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=switchboard test CA" \
        -keyout "$dir/ca.key" -out "$RUN/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=cassandra" -keyout "$dir/node.key" -out "$dir/node.csr" 2>/dev/null
    printf 'subjectAltName=%s\n' "$san" >"$dir/ext"
    openssl x509 -req -in "$dir/node.csr" -CA "$RUN/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial -days 2 \
        -extfile "$dir/ext" -out "$dir/node.pem" 2>/dev/null
    openssl pkcs12 -export -in "$dir/node.pem" -inkey "$dir/node.key" -certfile "$RUN/ca.pem" \
        -passout pass:switchboard -out "$dir/node.p12"
}

# Writes node K's configuration for a cluster of N nodes.
configure() {
    local k=$1 n=$2 dir="$RUN/node$1" ip seeds
    ip=$(addr "$k")
    seeds=$(addr 1)
    mkdir -p "$dir"/{data,commitlog,saved_caches,hints,cdc}
    cat >"$dir/cassandra.yaml" <<EOF
cluster_name: switchboard-test
num_tokens: 16
allocate_tokens_for_local_replication_factor: $((n < 3 ? n : 3))
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
# A write is acknowledged only once the node's commit log is synced (the default,
# periodic, acknowledges first and syncs every 10 s: kill -9 loses those writes).
commitlog_sync: batch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "$seeds:7000"
listen_address: $ip
rpc_address: $ip
storage_port: 7000
native_transport_port: 9042
start_native_transport: true
endpoint_snitch: SimpleSnitch
auto_bootstrap: false
data_file_directories: [$dir/data]
commitlog_directory: $dir/commitlog
saved_caches_directory: $dir/saved_caches
hints_directory: $dir/hints
cdc_raw_directory: $dir/cdc
write_request_timeout: 5000ms
read_request_timeout: 5000ms
EOF
    if [[ -n "${CASSANDRA_TLS:-}" ]]; then
        cat >>"$dir/cassandra.yaml" <<EOF
client_encryption_options:
  enabled: true
  optional: true
  keystore: $RUN/tls/node.p12
  keystore_password: switchboard
  store_type: PKCS12
EOF
    fi
    if [[ "${CASSANDRA_AUTH:-}" == password ]]; then
        printf 'authenticator: PasswordAuthenticator\nauthorizer: CassandraAuthorizer\n' >>"$dir/cassandra.yaml"
    fi
    cat >"$dir/logback.xml" <<EOF
<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>$dir/system.log</file>
    <encoder><pattern>%d %-5level [%thread] %logger{20} - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
EOF
    echo "$n" >"$RUN/size"
}

# The JVM flags Cassandra 5.0 needs on Java 17 (module access), in $opens.
jvm_opens() {
    opens=()
    for m in java.base/jdk.internal.misc java.base/jdk.internal.ref java.base/sun.nio.ch \
        java.management.rmi/com.sun.jmx.remote.internal.rmi java.rmi/sun.rmi.registry \
        java.rmi/sun.rmi.server java.sql/java.sql java.base/java.lang.ref jdk.unsupported/sun.misc; do
        opens+=(--add-exports "$m=ALL-UNNAMED")
    done
    for m in java.base/java.lang.module java.base/jdk.internal.loader java.base/jdk.internal.ref \
        java.base/jdk.internal.reflect java.base/jdk.internal.math java.base/jdk.internal.module \
        java.base/jdk.internal.util.jar jdk.management/com.sun.management.internal java.base/sun.nio.ch \
        java.base/java.io java.base/java.nio java.base/java.util.concurrent.atomic java.base/java.lang \
        java.base/java.util java.base/jdk.internal.misc; do
        opens+=(--add-opens "$m=ALL-UNNAMED")
    done
}

# Waits until node 1 (or, when K is 1, node 2) sees the given nodes (default: all) Up and
# Normal in the ring: a node that serves CQL may not own its tokens in the others' view
# yet.
wait_ring() {
    local n start ok want=("$@") ask=1
    n=$(cat "$RUN/size")
    ((n > 1)) || return 0
    ((${#want[@]})) || want=($(seq 1 "$n"))
    [[ ${#want[@]} -eq 1 && ${want[0]} -eq 1 ]] && ask=2
    jvm_opens
    start=$(date +%s)
    while :; do
        status=$(java "${opens[@]}" -Dlogback.configurationFile=/dev/null -cp "$CACHE/lib/*" \
            org.apache.cassandra.tools.NodeTool -h 127.0.0.1 -p $((7198 + FIRST + ask)) status 2>/dev/null || true)
        ok=0
        for k in "${want[@]}"; do
            grep -q "^UN  $(addr "$k") " <<<"$status" && ok=$((ok + 1))
        done
        if ((ok == ${#want[@]})); then
            log "node(s) ${want[*]} up and normal in the ring"
            return 0
        fi
        if (($(date +%s) - start > DEADLINE)); then
            log "node(s) ${want[*]} not all up and normal after $DEADLINE s; node $ask sees:"
            echo "$status" >&2
            return 1
        fi
        sleep 0.5
    done
}

# Starts node K in the background (its data, if any, is kept).
launch() {
    local k=$1 dir="$RUN/node$1"
    jvm_opens
    # setsid: the node survives the shell that started it; stop/kill find it by its pid.
    setsid java -Xms"$HEAP" -Xmx"$HEAP" -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError -Xss512k \
        -Dcassandra.config="file://$dir/cassandra.yaml" -Dlogback.configurationFile="$dir/logback.xml" \
        -Dcassandra-foreground=yes -Dcassandra.storagedir="$dir" -Dcassandra.jmx.local.port=$((7198 + FIRST + k)) \
        -Dcassandra.skip_wait_for_gossip_to_settle=0 -Dcassandra.ring_delay_ms=1000 \
        -Dcassandra.superuser_setup_delay_ms=0 \
        -Djdk.attach.allowAttachSelf=true "${opens[@]}" \
        -cp "$CACHE/lib/*" org.apache.cassandra.service.CassandraDaemon >"$dir/stdout.log" 2>&1 </dev/null &
    echo $! >"$dir/pid"
}

# Waits until node K accepts CQL connections, or fails with the tail of its log.
wait_cql() {
    local k=$1 ip start
    ip=$(addr "$k")
    start=$(date +%s)
    while :; do
        # With password authentication the superuser is created just after CQL starts.
        if grep -q "Starting listening for CQL clients" "$RUN/node$k/system.log" 2>/dev/null &&
            { [[ "${CASSANDRA_AUTH:-}" != password ]] || ((k > 1)) ||
                grep -q "Created default superuser role" "$RUN/node$k/system.log"; } &&
            (exec 3<>"/dev/tcp/$ip/9042") 2>/dev/null; then
            log "node $k serves CQL on $ip:9042 after $(($(date +%s) - start)) s"
            return 0
        fi
        if ! kill -0 "$(cat "$RUN/node$k/pid")" 2>/dev/null; then
            log "node $k exited before serving CQL; its log ends:"
            tail -n 30 "$RUN/node$k/system.log" "$RUN/node$k/stdout.log" >&2 || true
            return 1
        fi
        if (($(date +%s) - start > DEADLINE)); then
            log "node $k did not serve CQL within $DEADLINE s; its log ends:"
            tail -n 30 "$RUN/node$k/system.log" >&2 || true
            return 1
        fi
        sleep 0.5
    done
}

nodes() {
    local n out=""
    n=$(cat "$RUN/size")
    for k in $(seq 1 "$n"); do out+="${out:+,}$(addr "$k"):9042"; done
    echo "$out"
}

stop_all() {
    [[ -d "$RUN" ]] || return 0
    for p in "$RUN"/node*/pid; do
        [[ -f "$p" ]] || continue
        kill -TERM "$(cat "$p")" 2>/dev/null || true
    done
    for p in "$RUN"/node*/pid; do
        [[ -f "$p" ]] || continue
        for _ in $(seq 1 40); do kill -0 "$(cat "$p")" 2>/dev/null || break; sleep 0.25; done
        kill -KILL "$(cat "$p")" 2>/dev/null || true
    done
    rm -rf "$RUN"
}

case "${1:-}" in
fetch) fetch ;;
start)
    n="${2:-1}"
    fetch
    stop_all
    mkdir -p "$RUN"
    [[ -z "${CASSANDRA_TLS:-}" ]] || make_tls "$n"
    for k in $(seq 1 "$n"); do configure "$k" "$n"; done
    # The seed first; the others join one at a time (Cassandra refuses concurrent joins).
    for k in $(seq 1 "$n"); do
        launch "$k"
        wait_cql "$k" || { stop_all; exit 1; }
    done
    wait_ring || { stop_all; exit 1; }
    nodes
    ;;
kill)
    kill -KILL "$(cat "$RUN/node$2/pid")"
    while kill -0 "$(cat "$RUN/node$2/pid")" 2>/dev/null; do sleep 0.1; done
    ;;
restart)
    : >"$RUN/node$2/system.log"
    launch "$2"
    wait_cql "$2"
    wait_ring "$2"
    ;;
stop) stop_all ;;
status)
    [[ -f "$RUN/size" ]] || { echo "no nodes"; exit 0; }
    for k in $(seq 1 "$(cat "$RUN/size")"); do
        if kill -0 "$(cat "$RUN/node$k/pid" 2>/dev/null || echo 0)" 2>/dev/null; then s=up; else s=down; fi
        echo "node $k $(addr "$k"):9042 $s"
    done
    ;;
*)
    sed -n '2,/^set -euo/p' "$0" | sed '$d'
    exit 2
    ;;
esac
