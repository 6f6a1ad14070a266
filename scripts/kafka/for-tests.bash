# shellcheck shell=bash
# Apache Kafka as the test suite's broker: sourced by .ci/run (through `scripts/dev test`) and
# `scripts/dev test`, which own the broker's process and stop it when the tests end.
#
#   . scripts/kafka/for-tests.bash
#   kafka_usable            # 0 when java 17+ and mvn (or jars fetched before) are here; else 1 and
#                           # KAFKA_UNUSABLE says why
#   kafka_start DIR         # scripts/kafka/start in the background, on a free port, with the test
#                           # settings below; its output goes to DIR/broker.log, its data to DIR/node.
#                           # Sets KAFKA_PID, KAFKA_BOOTSTRAP, KAFKA_LOG.
#   kafka_wait PYTHON [S]   # until the broker serves (at most S seconds, default 300: the first run
#                           # fetches the jars) and scripts/kafka/check.py passes (topics, the
#                           # idempotent producer, transactions, read_committed, group commits). Prints
#                           # the version line. On failure prints why and the log's tail, returns 1.
#   kafka_stop              # stops the broker (SIGTERM, then SIGKILL after 20 s)
#
# The test settings on top of scripts/kafka/start's own (which already has replication factors of 1,
# transaction.state.log.min.isr=1, group.initial.rebalance.delay.ms=0, num.partitions=4 and topic
# auto-creation, which only the tests' own helpers use: the worker never creates topics):
# - message.max.bytes=10485760: the oversize-record test sends a 2.5 MiB request and needs the broker
#   to take it (Apache Kafka's default is about 1 MiB), so the worker's own limit is what rejects it;
# - 4 partitions for __consumer_offsets and __transaction_state instead of 50, which a 2-core machine
#   would otherwise spend seconds creating on the first group join and the first transaction;
# - log.cleaner.backoff.ms=1000: the log cleaner looks for work every second, not every 15 s, so a
#   compacted topic is compacted within a test.
KAFKA_TEST_PROPERTIES='message.max.bytes=10485760
offsets.topic.num.partitions=4
transaction.state.log.num.partitions=4
log.cleaner.backoff.ms=1000'

_kafka_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# KAFKA_UNUSABLE is read by the scripts that source this file.
# shellcheck disable=SC2034
kafka_usable() {
    KAFKA_UNUSABLE=""
    if ! command -v java >/dev/null 2>&1; then
        KAFKA_UNUSABLE="no java on PATH"
        return 1
    fi
    local major
    # `java -version` prints e.g. 'openjdk version "17.0.15" 2025-04-15' (1.8.0_x for Java 8).
    major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\)[."].*/\1/p' | head -n 1)
    if [[ ! $major =~ ^[0-9]+$ ]] || ((major < 17)); then
        KAFKA_UNUSABLE="java ${major:-of unknown version} is too old (Apache Kafka 4 needs 17 or newer)"
        return 1
    fi
    if ! command -v mvn >/dev/null 2>&1; then
        local version cache
        version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$_kafka_here/pom.xml")
        cache=${KLEIN_EDIT_KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/klein-edit/kafka-$version}
        if [[ ! -f $cache/libs/kafka_2.13-$version.jar ]]; then
            KAFKA_UNUSABLE="no mvn on PATH to fetch Apache Kafka $version's jars (and none in $cache)"
            return 1
        fi
    fi
    return 0
}

kafka_start() {
    local dir=$1 port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    KAFKA_LOG=$dir/broker.log
    KAFKA_BOOTSTRAP=127.0.0.1:$port
    KAFKA_SERVER_PROPERTIES="$KAFKA_TEST_PROPERTIES${KAFKA_SERVER_PROPERTIES:+
$KAFKA_SERVER_PROPERTIES}" KAFKA_LOG_LEVEL=${KAFKA_LOG_LEVEL:-WARN} \
        "$_kafka_here/start" "$port" "$dir/node" </dev/null >"$KAFKA_LOG" 2>&1 &
    KAFKA_PID=$!
    _kafka_started=$SECONDS
}

kafka_wait() {
    local python=$1 limit=${2:-300} started=${_kafka_started:-$SECONDS}
    # The broker logs at WARN, so its one INFO line of interest is not there: its port is.
    until grep -q '^Apache Kafka .* on 127.0.0.1:' "$KAFKA_LOG" 2>/dev/null &&
        "$python" -c "import socket,sys; s=socket.socket(); s.settimeout(0.5); sys.exit(s.connect_ex(('${KAFKA_BOOTSTRAP%:*}', ${KAFKA_BOOTSTRAP##*:})))"; do
        if ! kill -0 "$KAFKA_PID" 2>/dev/null; then
            _kafka_failed "Apache Kafka exited before it served"
            return 1
        fi
        if ((SECONDS - started > limit)); then
            _kafka_failed "Apache Kafka did not open $KAFKA_BOOTSTRAP within $limit s"
            return 1
        fi
        sleep 0.2
    done
    grep '^scripts/kafka/start: \|^Apache Kafka ' "$KAFKA_LOG" >&2
    local check
    if ! check=$("$python" "$_kafka_here/check.py" "$KAFKA_BOOTSTRAP" 2>"$KAFKA_LOG.check"); then
        cat "$KAFKA_LOG.check" >&2
        _kafka_failed "Apache Kafka at $KAFKA_BOOTSTRAP failed scripts/kafka/check.py"
        return 1
    fi
    echo "Apache Kafka at $KAFKA_BOOTSTRAP serves, $((SECONDS - started)) s after its start: check.py $check" >&2
}

kafka_stop() {
    [[ -n ${KAFKA_PID:-} ]] || return 0
    if kill "$KAFKA_PID" 2>/dev/null; then
        local _
        for _ in $(seq 1 100); do
            kill -0 "$KAFKA_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -9 "$KAFKA_PID" 2>/dev/null || true
    fi
    wait "$KAFKA_PID" 2>/dev/null || true
    KAFKA_PID=""
}

_kafka_failed() {
    echo "$1; the last lines of its log ($KAFKA_LOG):" >&2
    tail -n 40 "$KAFKA_LOG" >&2 || true
}
