#!/usr/bin/env bash
# apiguard over real HTTP: uvicorn (one process each, loopback) serving bare Starlette,
# apiguard (default policy) and slowapi, each driven by wrk with 1,000 distinct x-api-keys.
#
#   benchmarks/http.sh                       # 10 s per app in 2 interleaved rounds (+2 s warm-up)
#   ROUNDS=4 benchmarks/http.sh              # same time per app, interleaved in 4 rounds
#   DURATION=4 WARMUP=1 APPS="bare apiguard" benchmarks/http.sh
#   APPS="bare apiguard apiguard-quiet" benchmarks/http.sh   # quiet: no RateLimit fields
#   HTTP=h11 benchmarks/http.sh              # uvicorn's HTTP parser: auto (default), h11, httptools
#   APPS="bare apiguard apiguard-redis-2w slowapi-redis-2w" benchmarks/http.sh
#       # on Redis (a redis-server of its own unless REDIS_URL is set); "-2w": uvicorn
#       # --workers 2 sharing it (server CPU then sums the workers)
#
# Env: PY (python with uvicorn + apiguard), DURATION (seconds per app, split over ROUNDS),
# ROUNDS, WARMUP (seconds), THREADS, CONNECTIONS, KEYS, APPS, HTTP.
# Prints a markdown table: app | req/s | p99 latency | ratio of req/s to bare | the server's
# CPU time per request (from /proc: steadier than req/s on a shared machine) | wrk's socket
# errors + non-2xx responses (must be 0: nothing is ever refused, this measures overhead).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PY:-/work/venv/bin/python}"
DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-2}"
WARMUP="${WARMUP:-2}"
THREADS="${THREADS:-2}"
CONNECTIONS="${CONNECTIONS:-50}"
KEYS="${KEYS:-1000}"
APPS="${APPS:-bare apiguard slowapi}"
HTTP="${HTTP:-auto}"
export KEYS ROUTES=10 APIGUARD_BENCH_ROUTES=10

command -v wrk >/dev/null || { echo "wrk not found: apt-get install -y wrk" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl not found" >&2; exit 1; }

WORK="$(mktemp -d)"
declare -A PID PORT
WRK_PID=""
REDIS_PID=""

cleanup() {
  local app pid
  if [[ -n "$WRK_PID" ]]; then kill "$WRK_PID" 2>/dev/null || true; fi
  for app in "${!PID[@]}"; do
    pid="${PID[$app]}"
    kill "$pid" 2>/dev/null || true
  done
  for app in "${!PID[@]}"; do
    pid="${PID[$app]}"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n "$REDIS_PID" ]]; then kill "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

if [[ "$APPS" == *redis* && -z "${REDIS_URL:-}" ]]; then
  command -v redis-server >/dev/null || { echo "redis-server not found (or set REDIS_URL)" >&2; exit 1; }
  rport="$(free_port)"
  redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" \
    >"$WORK/redis.log" 2>&1 &
  REDIS_PID=$!
  REDIS_URL="redis://127.0.0.1:$rport/0"
  sleep 0.5
fi
export APIGUARD_BENCH_REDIS="${REDIS_URL:-}"

start_server() { # app
  local app="$1" port workers=1
  port="$(free_port)"
  if [[ "$app" == *-2w ]]; then workers=2; fi
  APIGUARD_BENCH_APP="$app" "$PY" -m uvicorn --app-dir "$HERE" http_apps:app --workers "$workers" \
    --host 127.0.0.1 --port "$port" --http "$HTTP" --no-access-log --no-proxy-headers --log-level warning \
    >"$WORK/$app.log" 2>&1 &
  PID[$app]=$!
  PORT[$app]=$port
}

wait_up() { # app: until it answers 200, or fail loudly
  local app="$1"
  for _ in $(seq 300); do # up to 30 s
    if ! kill -0 "${PID[$app]}" 2>/dev/null; then
      echo "uvicorn ($app) exited early:" >&2; cat "$WORK/$app.log" >&2; exit 1
    fi
    if curl -fsS -o /dev/null -H 'x-api-key: probe' \
      "http://127.0.0.1:${PORT[$app]}/r0/items/1" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "uvicorn ($app) did not answer on port ${PORT[$app]}:" >&2
  cat "$WORK/$app.log" >&2
  exit 1
}

server_cpu_ticks() { # app: utime + stime of its server process and its workers, in clock ticks
  local pid total=0 t
  for pid in "${PID[$1]}" $(pgrep -P "${PID[$1]}" || true); do
    t="$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0)"
    total=$((total + t))
  done
  echo "$total"
}

run_wrk() { # app seconds (in the background + wait, so a signal stops the run at once)
  wrk -t "$THREADS" -c "$CONNECTIONS" -d "${2}s" --timeout 5s -s "$HERE/wrk_keys.lua" \
    "http://127.0.0.1:${PORT[$1]}" &
  WRK_PID=$!
  wait "$WRK_PID"
  WRK_PID=""
}

for app in $APPS; do start_server "$app"; done
for app in $APPS; do wait_up "$app"; done
if [[ "$WARMUP" != 0 ]]; then
  for app in $APPS; do
    run_wrk "$app" "$WARMUP" >"$WORK/warmup.wrk" || { cat "$WORK/warmup.wrk" >&2; exit 1; }
  done
fi

slice=$(( DURATION / ROUNDS )) # wrk takes whole seconds
if ((slice < 1)); then echo "DURATION must be at least ROUNDS seconds" >&2; exit 1; fi
declare -A REQ DUR TICKS ERRS P99S
for round in $(seq "$ROUNDS"); do
  for app in $APPS; do
    cpu0="$(server_cpu_ticks "$app")"
    run_wrk "$app" "$slice" >"$WORK/$app.$round.wrk" || { cat "$WORK/$app.$round.wrk" >&2; exit 1; }
    cpu1="$(server_cpu_ticks "$app")"
    line="$(grep '^RESULT ' "$WORK/$app.$round.wrk")" || { cat "$WORK/$app.$round.wrk" >&2; exit 1; }
    declare -A r=()
    for kv in ${line#RESULT }; do r[${kv%%=*}]=${kv#*=}; done
    REQ[$app]=$(( ${REQ[$app]:-0} + r[requests] ))
    DUR[$app]=$(( ${DUR[$app]:-0} + r[duration_us] ))
    TICKS[$app]=$(( ${TICKS[$app]:-0} + cpu1 - cpu0 ))
    ERRS[$app]=$(( ${ERRS[$app]:-0} + r[errors] + r[non2xx] ))
    P99S[$app]="${P99S[$app]:-} ${r[p99_us]}"
    echo "round $round $app: ${r[requests]} requests, p99 ${r[p99_us]} µs" >&2
  done
done

impl="$("$PY" -c 'import importlib.util as u, sys; h = sys.argv[1]; print(("uvloop" if u.find_spec("uvloop") else "asyncio") + " + " + (h if h != "auto" else "httptools" if u.find_spec("httptools") else "h11"))' "$HTTP")"
hz="$(getconf CLK_TCK)"
where="$("$PY" -c 'import apiguard, os; print(os.path.dirname(apiguard.__file__))')"
echo
echo "uvicorn ($impl, 1 process per app), wrk -t$THREADS -c$CONNECTIONS, $((slice * ROUNDS)) s per app" \
  "in $ROUNDS round(s), $KEYS x-api-keys, 10 routes, nproc $(nproc); apiguard from $where"
echo
echo "| app | req/s | p99 latency | ratio of req/s to bare | server CPU µs/req | errors + non-2xx |"
echo "|---|---:|---:|---:|---:|---:|"
for app in $APPS; do
  rps="$(awk -v n="${REQ[$app]}" -v d="${DUR[$app]}" 'BEGIN { printf "%.0f", n / (d / 1e6) }')"
  p99="$(echo "${P99S[$app]}" | tr ' ' '\n' | grep . | sort -n |
    awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2;
                            printf "%.1f ms", m / 1000 }')"
  cpu="$(awk -v t="${TICKS[$app]}" -v hz="$hz" -v n="${REQ[$app]}" 'BEGIN { printf "%.0f", t / hz * 1e6 / n }')"
  if [[ -n "${REQ[bare]:-}" ]]; then
    ratio="$(awk -v a="${REQ[$app]}" -v da="${DUR[$app]}" -v b="${REQ[bare]}" -v db="${DUR[bare]}" \
      'BEGIN { printf "%.2fx", (a / da) / (b / db) }')"
  else
    ratio="n/a"
  fi
  echo "| $app | $rps | $p99 | $ratio | $cpu | ${ERRS[$app]} |"
done
if ((ROUNDS > 1)); then echo; echo "p99: median over rounds; req/s and CPU: over all rounds"; fi
