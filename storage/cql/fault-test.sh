#!/usr/bin/env bash
# The three-node fault test: starts a Cassandra cluster of three nodes on 127.0.0.2-4
# (replication factor 3, LOCAL_QUORUM), runs tests/cql.rs's three-node test against it
# (one node killed: sends still acknowledged, history complete; two killed: sends refused
# retryably, nothing acknowledged; both back: every acknowledged message once, seqs
# dense), and always stops the cluster. Takes 2-4 minutes here; scripts/test runs it too.
set -euo pipefail
cd "$(dirname "$0")/../.."
cassandra=storage/cql/cassandra.sh
trap '"$cassandra" stop' EXIT
nodes=$(CASSANDRA_HEAP="${CASSANDRA_HEAP:-1g}" "$cassandra" start 3)
CQL_TEST_NODES="$nodes" cargo test --locked -p switchboard --test cql -- --ignored three_nodes
