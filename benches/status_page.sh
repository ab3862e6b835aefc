#!/usr/bin/env bash
# The status page's figures (issue 11): bytes of `/` over the wire on load, and the
# agent's RSS with the page open on five browsers, against the same agent with none.
#
#   bash benches/status_page.sh      # ${CARGO_TARGET_DIR:-target}/release/chargesite
#   STATUS_PAGE_AGENT_BIN=/path/to/chargesite bash benches/status_page.sh
#
# The release agent runs on a temp config (allow_unknown_chargers, free vend, the status
# page on 127.0.0.1 port 0) with `chargesite simulate` feeding it 10 chargers (mixed 1.6
# and 2.0.1, one long session each, MeterValues every second). After 15 s it reads the
# agent's VmRSS (no page open); then five headless Debian chromium instances (fresh
# profiles, background networking off) keep the page open for 30 s, each polling
# /api/v1/status every 2 s, and VmRSS and VmHWM are read again. A measurement script,
# not a CI step (about a minute).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
bin="${STATUS_PAGE_AGENT_BIN:-$target/release/chargesite}"
[[ -x "$bin" ]] || { echo "status_page: build the agent first: cargo build --release --bin chargesite" >&2; exit 1; }
command -v chromium >/dev/null || { echo "status_page: needs Debian's chromium" >&2; exit 1; }
command -v curl >/dev/null || { echo "status_page: needs curl" >&2; exit 1; }

dir="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT

cat >"$dir/chargesite.toml" <<EOF
[site]
id = "page-bench"

[ocpp]
listen = "127.0.0.1:0"
allow_unknown_chargers = true

[auth]
free_vend = true

[status]
listen = "127.0.0.1:0"

[store]
path = "$dir/cs.db"
EOF
"$bin" run --config "$dir/chargesite.toml" >"$dir/agent.out" 2>"$dir/agent.log" </dev/null &
agent=$!
pids+=("$agent")
ocpp="" page=""
for _ in $(seq 100); do
    ocpp="$(sed -n 's/^listening on \(127\.0\.0\.1:[0-9]*\)$/\1/p' "$dir/agent.out" | head -n1)"
    page="$(sed -n 's#.*status page listening on http://\([0-9.:]*\)/.*#\1#p' "$dir/agent.log" | head -n1)"
    [[ -n "$ocpp" && -n "$page" ]] && break
    sleep 0.1
done
[[ -n "$ocpp" && -n "$page" ]] || { cat "$dir/agent.log" >&2; echo "status_page: the agent did not start" >&2; exit 1; }

setsid "$bin" simulate --url "ws://$ocpp/ocpp" --chargers 10 --ocpp mixed --sessions 1 \
    --session-secs 120 --meter-interval-ms 1000 --duration-secs 150 >"$dir/sim.out" 2>&1 &
pids+=("$!")
sleep 15

rss() { awk -v k="$1" '$1 == k":" { print $2 }' "/proc/$agent/status"; }
read -r body head < <(curl -s -o /dev/null -w '%{size_download} %{size_header}\n' "http://$page/")
read -r api < <(curl -s -o /dev/null -w '%{size_download}\n' "http://$page/api/v1/status")
before="$(rss VmRSS)"

for i in 1 2 3 4 5; do
    setsid chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$dir/profile$i" "http://$page/" >"$dir/chromium$i.log" 2>&1 &
    pids+=("$!")
done
sleep 30
after="$(rss VmRSS)"
hwm="$(rss VmHWM)"
# the browsers keep their connections to the page's port open between polls
conns="$(ss -Htn state established "( sport = :${page##*:} )" | wc -l)"

echo "status_page: GET / = $((body + head)) bytes over the wire ($body body + $head headers), GET /api/v1/status = $api bytes (10 chargers, 10 sessions)"
echo "status_page: agent VmRSS $before kB with no page open, $after kB with the page open on 5 browsers for 30 s (+$((after - before)) kB); VmHWM $hwm kB; $conns browser connections open"
