#!/usr/bin/env bash
# The cost of credential substitution + reverse scrubbing on the MITM path: HTTPS keep-alive
# requests/s through greyproxy's interception, without and with a credential placeholder in
# every request (substituted upstream; the response then goes through the scrubber).
#   bash bench/scrub_bench.sh            # DURATION=5 ROUNDS=3 (alternating, medians printed)
set -euo pipefail
cd "$(dirname "$0")/.."
GREYPROXY=${GREYPROXY:-.venv/bin/greyproxy}
PYTHON=${PYTHON:-$(dirname "$GREYPROXY")/python}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
WORK=$(mktemp -d /tmp/scrub-bench.XXXXXX)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$WORK/ka"
"$PYTHON" -c "import sys; sys.path.insert(0, '.'); from pathlib import Path; \
from tests.integration.tlsutil import make_origin_pki; make_origin_pki(Path('$WORK/ka'))"
printf 'log: {level: warning}\nmitm: {extra_ca_bundle: %s}\n' "$WORK/ka/origin-ca.pem" > "$WORK/gp.yml"
"$GREYPROXY" cert generate --data-dir "$WORK/gp" >/dev/null
"$GREYPROXY" serve -C "$WORK/gp.yml" --data-dir "$WORK/gp" --listen-http 127.0.0.1:0 --listen-socks5 127.0.0.1:0 \
  --listen-dns 127.0.0.1:0 --listen-api 127.0.0.1:0 > "$WORK/serve.log" 2>&1 &
pid=$!
for _ in $(seq 100); do [ -f "$WORK/gp/api-handshake.json" ] && break; sleep 0.1; done
read -r PORT API TOKEN < <("$PYTHON" -c "import json; h=json.load(open('$WORK/gp/api-handshake.json')); \
print(h['ports']['http'], h['ports']['api'], h['token'])")
api() { curl -sS --noproxy '*' -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' "$@"; }
api -d '{"container_pattern": "bench", "destination_pattern": "localhost"}' "http://127.0.0.1:$API/api/rules" >/dev/null
PH=$(api -d '{"label": "bench", "value": "sk-bench-real-secret-0123456789abcdef"}' \
  "http://127.0.0.1:$API/api/credentials" | "$PYTHON" -c "import json,sys; print(json.load(sys.stdin)['placeholder'])")
run() {
  "$PYTHON" bench/https_keepalive.py --proxy "http://bench:x@127.0.0.1:$PORT" --cafile "$WORK/gp/ca-cert.pem" \
    --certdir "$WORK/ka" --duration "$DURATION" --warmup 1 "$@"
}
for _ in $(seq "$ROUNDS"); do
  run | sed 's/^/without: /'
  run --header "Authorization: Bearer $PH" | sed 's/^/with:    /'
done
