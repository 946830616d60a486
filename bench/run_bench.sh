#!/usr/bin/env bash
# Loopback benchmark of greyproxy with 10,000 rules loaded, beside tinyproxy and the
# harness's own ceiling (--direct).  See bench/README.md.
#
#   bash bench/run_bench.sh                 # from the repository root
#
# Environment (all optional):
#   GREYPROXY    greyproxy executable            (default .venv/bin/greyproxy)
#   PROXYBENCH   load generator                  (default bench/proxyload.py, shipped here)
#   PYTHON       python for the load generator and helpers (default: greyproxy's venv python;
#                proxyload needs gevent, which greyproxy installs)
#   RESULTS_DIR  where raw JSONL goes            (default /tmp/greyproxy-bench; a stamped subdir per run)
#   RULES        rules to load                   (default 10000, the last one is the bench allow rule)
#   DURATION WARMUP REPEAT                       rate scenario window / warm-up (s) / repeats (5 / 1 / 3)
#   HOLD_CONNS HOLD_SECS                         hold scenario (1000 / 10)
#   BULK_BYTES                                   bytes per bulk run (536870912 = 512 MiB)
#   SKIP_TINYPROXY=1  SKIP_DIRECT=1  SKIP_DECISION=1
#   QUIET_WAIT QUIET_PCT                         before each load run wait up to QUIET_WAIT s (15) for the
#                                                box to be under QUIET_PCT % busy (25, of 100 x ncpu)
#   BUDGET       hard limit for the whole script, s (default 840)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
cd "$REPO"

GREYPROXY=${GREYPROXY:-.venv/bin/greyproxy}
PROXYBENCH=${PROXYBENCH:-$HERE/proxyload.py}
PYTHON=${PYTHON:-$(dirname "$GREYPROXY")/python}
RESULTS_DIR=${RESULTS_DIR:-/tmp/greyproxy-bench}
RULES=${RULES:-10000}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
REPEAT=${REPEAT:-3}
HOLD_CONNS=${HOLD_CONNS:-1000}
HOLD_SECS=${HOLD_SECS:-10}
BULK_BYTES=${BULK_BYTES:-536870912}
BUDGET=${BUDGET:-840}
ORIGIN_BASE=47000
BENCH_USER=bench-client

DEADLINE=$((SECONDS + BUDGET))
log() { printf '[bench %3ds] %s\n' "$SECONDS" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

[[ -f $PROXYBENCH ]] || die "no load generator at $PROXYBENCH (bench/proxyload.py is the shipped one)"
[[ -x $PYTHON ]] || PYTHON=python3
[[ -x $GREYPROXY ]] || die "greyproxy not found at $GREYPROXY (set GREYPROXY, e.g. a venv with 'pip install -e .')"
PROXYBENCH=$(cd "$(dirname "$PROXYBENCH")" && pwd)/$(basename "$PROXYBENCH")

# greyproxy's own interpreter imports greyproxy.policy for the micro-benchmark
GP_PYTHON=$(dirname "$GREYPROXY")/python
[[ -x $GP_PYTHON ]] || GP_PYTHON=$PYTHON

# fd limit for the hold scenario (1000 tunnels = 2000+ fds in the proxy); children inherit it
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
log "ulimit -n $(ulimit -n)"

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$RESULTS_DIR/$STAMP
mkdir -p "$OUT"
ln -sfn "$OUT" "$RESULTS_DIR/latest"
WORK=$(mktemp -d /tmp/greyproxy-bench-work.XXXXXX)

GP_PROC=""   # pid of the greyproxy we started
TP_PROC=""   # pid of the tinyproxy we started

stop_pid() {  # stop_pid PID NAME: TERM, wait up to 5 s, then KILL
    local pid=$1 name=$2 i
    [[ -n $pid ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) ignored SIGTERM for 5 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$GP_PROC" greyproxy
    stop_pid "$TP_PROC" tinyproxy
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

left() { echo $((DEADLINE - SECONDS)); }

# "busy total" jiffies of the whole box (all CPUs) from /proc/stat
cpu_jiffies() {
    local _c user nice sys idle iowait irq softirq steal _rest
    read -r _c user nice sys idle iowait irq softirq steal _rest </proc/stat
    echo "$((user + nice + sys + irq + softirq + steal)) $((user + nice + sys + idle + iowait + irq + softirq + steal))"
}

# box_line NAME LABEL "BUSY0 TOTAL0" LOAD0 T0: how busy the whole machine was during a proxybench
# call (% of one core, so 200 = both cores of a 2-core box), to spot load from other processes.
box_line() {
    local b0 t0 b1 t1 ncpu
    read -r b0 t0 <<<"$3"
    read -r b1 t1 <<<"$(cpu_jiffies)"
    ncpu=$(nproc)
    printf '{"box_for": "%s", "label": "%s", "box_busy_pct": %s, "ncpu": %s, "wall_s": %s, "loadavg_before": "%s", "loadavg_after": "%s"}\n' \
        "$1" "$2" "$(( (t1 > t0) ? 100 * ncpu * (b1 - b0) / (t1 - t0) : 0 ))" "$ncpu" \
        "$(awk -v a="$5" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')" "$4" "$(cut -d' ' -f1-3 /proc/loadavg)"
}

# Other processes on the box skew every figure.  Before each load generator call wait, at most
# QUIET_WAIT s, until the whole box was under QUIET_PCT % busy (of 100 x ncpu) for 1 s.
wait_quiet() {
    local i b0 t0 b1 t1 busy=0 max=${QUIET_WAIT:-15}
    ((max > 0)) || return 0
    for ((i = 0; i < max; i++)); do
        read -r b0 t0 <<<"$(cpu_jiffies)"
        sleep 1
        read -r b1 t1 <<<"$(cpu_jiffies)"
        busy=$(( (t1 > t0) ? 100 * $(nproc) * (b1 - b0) / (t1 - t0) : 0 ))
        ((busy < ${QUIET_PCT:-25})) && return 0
    done
    log "box still ${busy} % busy after ${max} s of waiting: other processes are competing for CPU"
}

# run_pb NAME LABEL LIMIT_S load-generator-args...  -> $OUT/NAME.jsonl (+ .err)
# the load generator's own --timeout is the limit; coreutils timeout is the backstop.
run_pb() {
    local name=$1 label=$2 limit=$3 rem rc=0
    shift 3
    rem=$(left)
    if ((rem < 30)); then
        log "SKIP $name: time budget exhausted"
        printf '{"label": "%s", "scenario": "%s", "error": "not run: time budget exhausted"}\n' "$label" "$name" >>"$OUT/$name.jsonl"
        return 0
    fi
    ((limit > rem - 20)) && limit=$((rem - 20))
    wait_quiet
    log "run $name ($label, limit ${limit}s)"
    local box0 load0 t0
    box0=$(cpu_jiffies)
    t0=$(date +%s.%N)
    load0=$(cut -d' ' -f1-3 /proc/loadavg)
    timeout -k 5 $((limit + 15)) "$PYTHON" "$PROXYBENCH" --label "$label" --timeout "$limit" --no-tls \
        --origin-base-port "$ORIGIN_BASE" --bulk-bytes "$BULK_BYTES" "$@" \
        >"$OUT/$name.jsonl" 2>"$OUT/$name.err" || rc=$?
    ((rc == 0)) || log "proxyload $name exited $rc (see $OUT/$name.err)"
    box_line "$name" "$label" "$box0" "$load0" "$t0" >>"$OUT/$name.jsonl"
    "$PYTHON" "$HERE/summarize.py" --brief "$OUT/$name.jsonl" >&2 || true
}

free_port() {
    "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() {  # wait_port PORT PID SECONDS
    local port=$1 pid=$2 n=$(($3 * 10)) i
    for i in $(seq 1 "$n"); do
        kill -0 "$pid" 2>/dev/null || return 1
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

RATE=(--scenario connrate,plainhttp --duration "$DURATION" --warmup "$WARMUP" --repeat "$REPEAT")
BULK=(--scenario bulk --repeat 1)
RATE_LIMIT=$((2 * REPEAT * (DURATION + WARMUP + 15) + 30))

# which code is measured: the tree may hold uncommitted changes, so fingerprint the sources
{
    printf '{"meta": "code", "git_head": "%s", "uncommitted_paths": %s, "greyproxy_src_sha256": "%s", "greyproxy": "%s", "started_utc": "%s"}\n' \
        "$(git rev-parse --short HEAD 2>/dev/null || echo none)" \
        "$(git status --porcelain 2>/dev/null | wc -l)" \
        "$(find greyproxy -name '*.py' -type f 2>/dev/null | LC_ALL=C sort | xargs cat 2>/dev/null | sha256sum | cut -c1-16)" \
        "$GREYPROXY" "$STAMP"
} >"$OUT/meta.jsonl"
log "code: $(cat "$OUT/meta.jsonl")"

# ------------------------------------------------------------ 1. decision micro-benchmark
if [[ ${SKIP_DECISION:-0} != 1 ]]; then
    wait_quiet
    log "decision micro-benchmark ($RULES rules)"
    DB_BOX0=$(cpu_jiffies)
    DB_LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
    DB_T0=$(date +%s.%N)
    timeout -k 5 180 "$GP_PYTHON" "$HERE/decision_bench.py" --rules "$RULES" >"$OUT/decision.jsonl" 2>"$OUT/decision.err" \
        || log "decision_bench failed ($?): $(tail -3 "$OUT/decision.err")"
    box_line decision decision "$DB_BOX0" "$DB_LOAD0" "$DB_T0" >>"$OUT/decision.jsonl"
    log "decision: $(tail -1 "$OUT/decision.jsonl")"
fi

# ------------------------------------------------------------ 2. ceiling: no proxy
if [[ ${SKIP_DIRECT:-0} != 1 ]]; then
    run_pb direct-rate "direct -" "$RATE_LIMIT" --direct "${RATE[@]}"
    run_pb direct-bulk "direct -" 120 --direct "${BULK[@]}"
fi

# ------------------------------------------------------------ 3. greyproxy
GP_DIR=$WORK/greyproxy
mkdir -p "$GP_DIR/data"
cat >"$GP_DIR/config.yaml" <<'EOF'
log:
  level: warning
limits:
  requests_per_second: 0   # one benchmark container at thousands of req/s: the per-container rate limit is off
EOF
log "starting $GREYPROXY serve"
"$GREYPROXY" serve -C "$GP_DIR/config.yaml" --data-dir "$GP_DIR/data" \
    --listen-http 127.0.0.1:0 --listen-socks5 127.0.0.1:0 --listen-dns 127.0.0.1:0 --listen-api 127.0.0.1:0 \
    >"$OUT/greyproxy.log" 2>&1 &
GP_PROC=$!
HS=$("$PYTHON" "$HERE/gp_api.py" handshake "$GP_DIR/data" --wait 30 --pid "$GP_PROC") \
    || die "greyproxy did not start; last log lines: $(tail -20 "$OUT/greyproxy.log")"
eval "$HS"  # GP_API_PORT GP_TOKEN GP_PID GP_HTTP_PORT GP_SOCKS_PORT
log "greyproxy pid $GP_PID: http $GP_HTTP_PORT, socks5 $GP_SOCKS_PORT, api $GP_API_PORT"
"$PYTHON" "$HERE/gp_api.py" health "$GP_DIR/data" --wait 30 >"$OUT/greyproxy-health.json" \
    || die "greyproxy /api/health failed"

"$GP_PYTHON" "$HERE/decision_bench.py" --rules "$RULES" --emit-rules "$WORK/rules.json" \
    --allow "$BENCH_USER,127.0.0.1,$ORIGIN_BASE-$((ORIGIN_BASE + 3))" >&2
log "ingesting $RULES rules"
"$PYTHON" "$HERE/gp_api.py" ingest "$GP_DIR/data" "$WORK/rules.json" --timeout 300 >"$OUT/ingest.jsonl" \
    || die "rule ingest failed: $(cat "$OUT/ingest.jsonl")"
log "ingest: $(cat "$OUT/ingest.jsonl")"
kill -0 "$GP_PROC" 2>/dev/null || die "greyproxy exited after the ingest"

SOCKS=socks5://$BENCH_USER:x@127.0.0.1:$GP_SOCKS_PORT
HTTP=http://$BENCH_USER:x@127.0.0.1:$GP_HTTP_PORT
# hold first, while the proxy is fresh, so proxy_rss_kb.before is the idle footprint with the rules
run_pb greyproxy-socks5-hold "greyproxy socks5" $((HOLD_SECS + 120)) --proxy "$SOCKS" --proxy-pid "$GP_PID" \
    --scenario hold --hold-conns "$HOLD_CONNS" --hold-secs "$HOLD_SECS"
run_pb greyproxy-socks5-rate "greyproxy socks5" "$RATE_LIMIT" --proxy "$SOCKS" --proxy-pid "$GP_PID" "${RATE[@]}"
run_pb greyproxy-http-rate "greyproxy http" "$RATE_LIMIT" --proxy "$HTTP" --proxy-pid "$GP_PID" "${RATE[@]}"
run_pb greyproxy-socks5-bulk "greyproxy socks5" 120 --proxy "$SOCKS" --proxy-pid "$GP_PID" "${BULK[@]}"
run_pb greyproxy-http-bulk "greyproxy http" 120 --proxy "$HTTP" --proxy-pid "$GP_PID" "${BULK[@]}"
kill -0 "$GP_PROC" 2>/dev/null || log "WARNING: greyproxy is no longer running (see $OUT/greyproxy.log)"
stop_pid "$GP_PROC" greyproxy
GP_PROC=""
if [[ -s $OUT/greyproxy.log ]]; then
    log "greyproxy log: $(wc -l <"$OUT/greyproxy.log") lines, $(grep -c -E 'ERROR|Traceback' "$OUT/greyproxy.log" || true) ERROR/Traceback"
    # the most frequent exception lines, e.g. "495 ValueError: filedescriptor out of range in select()"
    grep -E '^[A-Za-z_.]*(Error|Exception)[A-Za-z_]*: ' "$OUT/greyproxy.log" | sort | uniq -c | sort -rn | head -5 |
        while read -r line; do log "  greyproxy raised: $line"; done || true
fi

# ------------------------------------------------------------ 4. tinyproxy (same scenarios)
if [[ ${SKIP_TINYPROXY:-0} != 1 ]]; then
    if ! command -v tinyproxy >/dev/null 2>&1 && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing tinyproxy (apt-get)"
        { timeout 300 env DEBIAN_FRONTEND=noninteractive apt-get install -y -q tinyproxy \
            || { timeout 300 apt-get update -q && timeout 300 env DEBIAN_FRONTEND=noninteractive apt-get install -y -q tinyproxy; }; } \
            >"$OUT/tinyproxy-install.log" 2>&1 || log "tinyproxy install failed (see $OUT/tinyproxy-install.log)"
    fi
    TINYPROXY=$(command -v tinyproxy || true)
    if [[ -z $TINYPROXY ]]; then
        log "tinyproxy not available: skipped"
    else
        TP_PORT=$(free_port)
        TP_DIR=$WORK/tinyproxy
        mkdir -p "$TP_DIR"
        {
            if [[ $(id -u) == 0 ]]; then
                echo "User nobody"
                echo "Group $(id -gn nobody 2>/dev/null || echo nogroup)"
            fi
            echo "Port $TP_PORT"
            echo "Listen 127.0.0.1"
            echo "Timeout 600"
            echo "MaxClients 4096"
            echo "Allow 127.0.0.1"
            echo "LogLevel Critical"
            echo "DisableViaHeader Yes"
        } >"$TP_DIR/tinyproxy.conf"
        log "starting $TINYPROXY on 127.0.0.1:$TP_PORT ($("$TINYPROXY" -v 2>&1 | head -1))"
        "$TINYPROXY" -d -c "$TP_DIR/tinyproxy.conf" >"$OUT/tinyproxy.log" 2>&1 &
        TP_PROC=$!
        if wait_port "$TP_PORT" "$TP_PROC" 15; then
            TP=http://127.0.0.1:$TP_PORT
            run_pb tinyproxy-rate "tinyproxy http" "$RATE_LIMIT" --proxy "$TP" --proxy-pid "$TP_PROC" "${RATE[@]}"
            run_pb tinyproxy-bulk "tinyproxy http" 120 --proxy "$TP" --proxy-pid "$TP_PROC" "${BULK[@]}"
        else
            log "tinyproxy did not listen on $TP_PORT: $(tail -5 "$OUT/tinyproxy.log")"
        fi
        stop_pid "$TP_PROC" tinyproxy
        TP_PROC=""
    fi
fi

# ------------------------------------------------------------ 5. summary
log "done; raw JSONL in $OUT"
echo
echo "## greyproxy benchmark ($STAMP, $RULES rules loaded; medians of $REPEAT × ${DURATION}s windows)"
echo
"$PYTHON" "$HERE/summarize.py" "$OUT"
