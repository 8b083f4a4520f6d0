#!/usr/bin/env bash
# One server under the independent fanout probe (the measuring stick beside the checkout, in
# ../shared/tools/fanout-probe), without compare.sh's nats-server run: for A/B runs of two
# ringcast builds, alternating. Loopback only; the server is started under `timeout`.
#
# usage: benches/probe-one.sh SERVER_BIN SUBS RATE [server flags...]
#   PROBE=/tmp/sticks/release/fanout-probe  the probe binary (build it as ../shared/tools/README.md says)
#   MEASURE=8 WARMUP=3 PORT=18090
#   PROBE_ARGS="--subjects 1000"           extra probe flags (the price-feed shape)
set -euo pipefail
BIN=${1:?usage: probe-one.sh SERVER_BIN SUBS RATE [flags]}; SUBS=${2:?}; RATE=${3:?}; shift 3
PROBE=${PROBE:-/tmp/sticks/release/fanout-probe}
PORT=${PORT:-18090}
ulimit -n "$(( SUBS + 4096 ))" 2>/dev/null || true
timeout 90 "$BIN" --listen "127.0.0.1:$PORT" --cores 2 "$@" > /tmp/probe-one.server.log 2>&1 &
TP=$!
trap 'kill $TP 2>/dev/null || true; wait $TP 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -s "127.0.0.1:$PORT/healthz" > /dev/null && break; sleep 0.1; done
PID=$(pgrep -P $TP | head -1); PID=${PID:-$TP}
# shellcheck disable=SC2086
timeout 80 "$PROBE" --proto ringcast --url "ws://127.0.0.1:$PORT/ws" --subs "$SUBS" --rate "$RATE" \
    --warmup "${WARMUP:-3}" --measure "${MEASURE:-8}" --server-pid "$PID" ${PROBE_ARGS:-} 2> /dev/null | grep RESULT
