#!/usr/bin/env bash
# HTTPS through TLS interception: greyproxy beside mitmproxy's mitmdump, same box, same run.
#   new connection each: proxybench --scenario mitm (tunnel + TLS handshake per request)
#   keep-alive:          bench/https_keepalive.py (one tunnel, requests back to back)
# Usage: GREYPROXY=.venv/bin/greyproxy MITMDUMP=/path/to/mitmdump bash bench/mitm_bench.sh
# Prints one JSON line per run and leaves raw output in $RESULTS (default /tmp/greyproxy-mitm-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
GREYPROXY=${GREYPROXY:-.venv/bin/greyproxy}
PYTHON=${PYTHON:-$(dirname "$GREYPROXY")/python}
PROXYBENCH=${PROXYBENCH:-}
MITMDUMP=${MITMDUMP:-mitmdump}
[ -n "$PROXYBENCH" ] && [ -f "$PROXYBENCH" ] || { echo "set PROXYBENCH to a load generator (see docs/benchmarks.md)" >&2; exit 2; }
DURATION=${DURATION:-5}
RESULTS=${RESULTS:-/tmp/greyproxy-mitm-bench}
WORK=$(mktemp -d /tmp/mitm-bench.XXXXXX)
mkdir -p "$RESULTS"
ulimit -n 20000 || true
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

# The origins' CA (proxybench's and the keep-alive origin's), which both proxies must trust.
timeout 60 "$PYTHON" "$PROXYBENCH" --certdir "$WORK/certs" --scenario connrate --direct --duration 1 --warmup 0 >/dev/null
mkdir -p "$WORK/ka"
timeout 30 "$PYTHON" -c "import sys; sys.path.insert(0, '.'); from pathlib import Path; \
from tests.integration.tlsutil import make_origin_pki; make_origin_pki(Path('$WORK/ka'))"
cat "$WORK/certs/origin-ca.pem" "$WORK/ka/origin-ca.pem" > "$WORK/trust.pem"

# greyproxy: its own CA, trusting the origins through mitm.extra_ca_bundle
printf 'log: {level: warning}\nmitm: {extra_ca_bundle: %s}\n' "$WORK/trust.pem" > "$WORK/gp.yml"
"$GREYPROXY" cert generate --data-dir "$WORK/gp" >/dev/null
"$GREYPROXY" serve -C "$WORK/gp.yml" --data-dir "$WORK/gp" --listen-http 127.0.0.1:0 --listen-socks5 127.0.0.1:0 \
  --listen-dns 127.0.0.1:0 --listen-api 127.0.0.1:0 > "$RESULTS/greyproxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -f "$WORK/gp/api-handshake.json" ] && break; sleep 0.1; done
GP_PORT=$("$PYTHON" -c "import json; print(json.load(open('$WORK/gp/api-handshake.json'))['ports']['http'])")
GP_PID=$("$PYTHON" -c "import json; print(json.load(open('$WORK/gp/api-handshake.json'))['pid'])")

# mitmdump: its own CA in a private confdir, trusting the same origins
"$MITMDUMP" -q --listen-host 127.0.0.1 -p 0 --set confdir="$WORK/mitm" --set ssl_verify_upstream_trusted_ca="$WORK/trust.pem" \
  > "$RESULTS/mitmdump.log" 2>&1 &
MITM_PID=$!
pids+=($MITM_PID)
for _ in $(seq 100); do
  MITM_PORT=$(ss -ltnp 2>/dev/null | awk -v pid="pid=$MITM_PID," '$0 ~ pid {split($4, a, ":"); print a[length(a)]; exit}')
  [ -n "$MITM_PORT" ] && [ -f "$WORK/mitm/mitmproxy-ca-cert.pem" ] && break; sleep 0.1
done

run() {  # name, proxy URL, pid, CA the client trusts
  local name=$1 url=$2 pid=$3 ca=$4
  timeout 300 "$PYTHON" "$PROXYBENCH" --proxy "$url" --proxy-pid "$pid" --scenario mitm --cafile "$ca" \
    --certdir "$WORK/certs" --duration "$DURATION" --warmup 1 --repeat 3 | tee "$RESULTS/$name-new-conn.jsonl" \
    | grep '"median"' | sed "s/^/{\"proxy_name\": \"$name\", \"case\": \"new connection\", \"line\": /; s/$/}/"
  timeout 120 "$PYTHON" bench/https_keepalive.py --proxy "$url" --cafile "$ca" --certdir "$WORK/ka" \
    --duration "$DURATION" | tee "$RESULTS/$name-keepalive.jsonl" \
    | sed "s/^/{\"proxy_name\": \"$name\", \"case\": \"keep-alive\", \"line\": /; s/$/}/"
}
run greyproxy "http://bench-client:x@127.0.0.1:$GP_PORT" "$GP_PID" "$WORK/gp/ca-cert.pem"
run mitmdump "http://127.0.0.1:$MITM_PORT" "$MITM_PID" "$WORK/mitm/mitmproxy-ca-cert.pem"
timeout 120 "$PYTHON" bench/https_keepalive.py --direct --certdir "$WORK/ka" --duration "$DURATION" \
  | sed 's/^/{"proxy_name": "direct", "case": "keep-alive", "line": /; s/$/}/'
