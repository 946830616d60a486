#!/usr/bin/env bash
# HTTPS through TLS interception: greyproxy beside mitmproxy's mitmdump, same box, same run.
#   new connection each: proxyload --scenario mitm (tunnel + TLS handshake per request)
#   keep-alive:          proxyload --scenario mitm-keepalive (one tunnel per worker, requests back to back)
# Usage: MITMDUMP=/path/to/mitmdump bash bench/mitm_bench.sh      (GREYPROXY=.venv/bin/greyproxy by default)
# mitmdump comes from PyPI (python3 -m venv /tmp/mv && /tmp/mv/bin/pip install mitmproxy); without it
# only greyproxy and the direct ceiling are measured. One JSON line per run goes to stdout; raw output
# stays in $RESULTS (default /tmp/greyproxy-mitm-bench). bench/peers.py prints the same as a table.
set -euo pipefail
cd "$(dirname "$0")/.."
GREYPROXY=${GREYPROXY:-.venv/bin/greyproxy}
PYTHON=${PYTHON:-$(dirname "$GREYPROXY")/python}
MITMDUMP=${MITMDUMP:-$(command -v mitmdump || true)}
DURATION=${DURATION:-5}
RESULTS=${RESULTS:-/tmp/greyproxy-mitm-bench}
WORK=$(mktemp -d /tmp/mitm-bench.XXXXXX)
mkdir -p "$RESULTS"
ulimit -n 20000 || true
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

# The origins' CA, which both proxies must trust (proxyload makes it in --certdir and reuses it).
CERTS=$WORK/certs
"$PYTHON" -c "import sys; sys.path.insert(0, 'bench'); from pathlib import Path; import proxyload; \
proxyload.make_pki(Path('$CERTS'))"
BASE=$("$PYTHON" -c "import sys; sys.path.insert(0, 'bench'); import peers; print(peers.free_run(4))")
TLS_PORT=$((BASE + 3))

load() {  # name, CA the client trusts, proxyload proxy arguments...
  local name=$1 ca=$2
  shift 2
  timeout 300 "$PYTHON" bench/proxyload.py --label "$name" --scenario mitm,mitm-keepalive --cafile "$ca" \
    --certdir "$CERTS" --origin-base-port "$BASE" --duration "$DURATION" --warmup 1 --repeat 3 --timeout 280 "$@" \
    | tee "$RESULTS/$name.jsonl" | grep '"median"' || true
}

# greyproxy: its CA (generated on first start, or here), trusting the origins through mitm.extra_ca_bundle
printf 'log: {level: warning}\nmitm: {extra_ca_bundle: %s}\n' "$CERTS/origin-ca.pem" > "$WORK/gp.yml"
"$GREYPROXY" cert generate --data-dir "$WORK/gp" >/dev/null
"$GREYPROXY" serve -C "$WORK/gp.yml" --data-dir "$WORK/gp" --listen-http 127.0.0.1:0 --listen-socks5 127.0.0.1:0 \
  --listen-dns 127.0.0.1:0 --listen-api 127.0.0.1:0 > "$RESULTS/greyproxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -f "$WORK/gp/api-handshake.json" ] && break; sleep 0.1; done
hs() { "$PYTHON" -c "import json; print(json.load(open('$WORK/gp/api-handshake.json'))$1)"; }
GP_PORT=$(hs "['ports']['http']")
GP_PID=$(hs "['pid']")
# the origin is 127.0.0.1: one rule lets the benchmark identity through without a human
curl -fsS -o /dev/null -H "Authorization: Bearer $(hs "['token']")" -H 'Content-Type: application/json' \
  -d "{\"container_pattern\": \"bench-client\", \"destination_pattern\": \"127.0.0.1\", \"port_pattern\": \"$TLS_PORT\"}" \
  "http://127.0.0.1:$(hs "['port']")/api/rules"
load greyproxy "$WORK/gp/ca-cert.pem" --proxy "http://bench-client:x@127.0.0.1:$GP_PORT" --proxy-pid "$GP_PID"

# mitmdump: its own CA in a private confdir, trusting the same origins
if [ -n "$MITMDUMP" ]; then
  MITM_PORT=$("$PYTHON" -c "import sys; sys.path.insert(0, 'bench'); import peers; print(peers.free_port())")
  "$MITMDUMP" -q --listen-host 127.0.0.1 -p "$MITM_PORT" --set confdir="$WORK/mitm" \
    --set ssl_verify_upstream_trusted_ca="$CERTS/origin-ca.pem" > "$RESULTS/mitmdump.log" 2>&1 &
  MITM_PID=$!
  pids+=("$MITM_PID")
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$MITM_PORT") 2>/dev/null && [ -f "$WORK/mitm/mitmproxy-ca-cert.pem" ] && break
    sleep 0.1
  done
  load mitmdump "$WORK/mitm/mitmproxy-ca-cert.pem" --proxy "http://127.0.0.1:$MITM_PORT" --proxy-pid "$MITM_PID"
else
  echo '{"label": "mitmdump", "skipped": "mitmdump not installed (pip install mitmproxy; MITMDUMP=path)"}'
fi
load direct "$CERTS/origin-ca.pem" --direct
