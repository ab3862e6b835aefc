#!/usr/bin/env bash
# Instructions the agent executes per acknowledged MeterValues, counted by
# `valgrind --tool=callgrind`: a figure without wall-clock noise, for comparing two builds.
#
#   bash benches/callgrind.sh                                   # ${CARGO_TARGET_DIR:-target}/release/chargesite
#   OCPP_LOAD_AGENT_BIN=/path/to/old/chargesite bash benches/callgrind.sh
#
# Each run starts the agent under callgrind on a temp config (no uplink,
# allow_unknown_chargers, free_vend, no pings) and a temp SQLite file under
# ${CARGO_TARGET_DIR:-target}/tmp, listening on 127.0.0.1 port 0, with 2 tokio workers.
# examples/callgrind_client.rs (built here, release) connects 20 chargers one at a time
# (Boot, StartTransaction), sends one warm-up MeterValues each, then
# `callgrind_control --zero`s the agent, sends 20 x 50 three-phase MeterValues
# round-robin with one CALL outstanding in the whole run (each group commit holds one
# MeterValues), and `callgrind_control --dump`s. A run's figure is the dump's Ir (all
# agent threads) over the 1,000 MeterValues: startup, connections and shutdown are outside
# the window. The script prints every run's figure and, last, their median.
#
# CALLGRIND_OCPP=2.0.1 measures the 2.0.1 path instead: the chargers connect with
# `ocpp2.0.1` (BootNotification, TransactionEvent Started) and send TransactionEvent(Updated)
# with the three-phase meterValue of the 2.0.1 phase of benches/ocpp_load.rs (11 numeric
# sampledValues); the last line is then `instructions_per_transaction_event=N`.
#
# CALLGRIND_RUNS (default 3) sets the number of runs. CALLGRIND_CHARGERS /
# CALLGRIND_METER_VALUES / CALLGRIND_WORKERS change the workload (then the figure is not
# comparable with the README's). CALLGRIND_KEEP=DIR keeps each run's dump there (for
# `callgrind_annotate`; a stripped binary shows no function names). A measurement script,
# not a CI step: ~7 s per run on a quiet box, plus building the client once.
set -euo pipefail

cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
agent_bin="${OCPP_LOAD_AGENT_BIN:-$target/release/chargesite}"
chargers="${CALLGRIND_CHARGERS:-20}"
per_charger="${CALLGRIND_METER_VALUES:-50}"
workers="${CALLGRIND_WORKERS:-2}"
runs="${CALLGRIND_RUNS:-3}"
ocpp="${CALLGRIND_OCPP:-1.6}"
case "$ocpp" in
1.6) what="MeterValues" key="meter_values" ;;
2.0.1) what="TransactionEvent" key="transaction_event" ;;
*)
	echo "callgrind: CALLGRIND_OCPP must be 1.6 or 2.0.1" >&2
	exit 1
	;;
esac
# Per run: the client's own bound (its CALLs time out after 60 s each anyway).
limit_secs=600

die() {
	echo "callgrind: $*" >&2
	exit 1
}

command -v valgrind >/dev/null || die "valgrind is not installed"
command -v callgrind_control >/dev/null || die "callgrind_control is not installed (comes with valgrind)"
[[ -x "$agent_bin" ]] || die "agent binary $agent_bin is missing; build it with \`cargo build --release --bin chargesite\` or set OCPP_LOAD_AGENT_BIN"
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || die "CALLGRIND_RUNS must be a positive integer"

echo "callgrind: building the client (cargo build --release --example callgrind_client)"
cargo build --release --quiet --example callgrind_client
client_bin="$target/release/examples/callgrind_client"

mkdir -p "$target/tmp"
dir=""
agent_pid=""
stop_agent() {
	if [[ -n "$agent_pid" ]] && kill -0 "$agent_pid" 2>/dev/null; then
		# The dump is taken; nothing after it is needed.
		kill -KILL "$agent_pid" 2>/dev/null || true
		wait "$agent_pid" 2>/dev/null || true
	fi
	agent_pid=""
}
cleanup() {
	stop_agent
	if [[ -n "$dir" ]]; then rm -rf "$dir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# One run: sets `total` to the measured window's Ir.
measure() {
	local run="$1" addr="" start=$SECONDS
	dir="$(mktemp -d "$target/tmp/callgrind-XXXXXX")"
	dir="$(cd "$dir" && pwd)"
	cat >"$dir/chargesite.toml" <<EOF
[site]
id = "callgrind-site"

[ocpp]
listen = "127.0.0.1:0"
allow_unknown_chargers = true
# No pings in the measured window: their number would depend on how long the run takes.
ping_interval_secs = 86400

[auth]
free_vend = true

[store]
path = "$dir/cs.db"
EOF
	TOKIO_WORKER_THREADS="$workers" CHARGESITE_LOG=info \
		valgrind --tool=callgrind --trace-children=no \
		--callgrind-out-file="$dir/callgrind.out" --log-file="$dir/valgrind.log" \
		"$agent_bin" run --config "$dir/chargesite.toml" \
		>"$dir/agent.out" 2>"$dir/agent.log" </dev/null &
	agent_pid=$!
	for _ in $(seq 600); do
		addr="$(sed -n 's/^listening on \(127\.0\.0\.1:[0-9]*\)$/\1/p' "$dir/agent.out" | head -n1)"
		[[ -n "$addr" ]] && break
		if ! kill -0 "$agent_pid" 2>/dev/null; then
			cat "$dir/agent.log" "$dir/valgrind.log" >&2
			die "the agent exited during startup"
		fi
		sleep 0.1
	done
	[[ -n "$addr" ]] || die "the agent did not report its address within 60 s"
	if ! timeout "$limit_secs" "$client_bin" --addr "$addr" --pid "$agent_pid" \
		--chargers "$chargers" --meter-values "$per_charger" --ocpp "$ocpp" >"$dir/client.out"; then
		echo "callgrind: agent log tail:" >&2
		tail -n 20 "$dir/agent.log" >&2
		die "the client failed"
	fi
	stop_agent
	local dump="$dir/callgrind.out.1"
	[[ -s "$dump" ]] || die "no dump at $dump"
	total="$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$dump")"
	[[ -n "$total" ]] || die "no summary line in $dump"
	if [[ -n "${CALLGRIND_KEEP:-}" ]]; then
		mkdir -p "$CALLGRIND_KEEP"
		cp "$dump" "$CALLGRIND_KEEP/callgrind.out.$key.$run"
	fi
	# A warning in the agent's log (a flagged reading, a slow commit) means the run was
	# not the standard one.
	if grep -q ' WARN \| ERROR ' "$dir/agent.log"; then
		echo "callgrind: run $run: warnings in the agent log:"
		grep ' WARN \| ERROR ' "$dir/agent.log" | tail -n 5
	fi
	local window
	window="$(sed -n 's/.*measured window (\(.*\))$/\1/p' "$dir/client.out")"
	echo "callgrind: run $run: total_instructions=$total over $count $what = $(((total + count / 2) / count)) per $what (window $window, run $((SECONDS - start)) s, load average $(cut -d' ' -f1 /proc/loadavg))"
	rm -rf "$dir"
	dir=""
}

count=$((chargers * per_charger))
if [[ "$ocpp" == 1.6 ]]; then
	echo "callgrind: agent $agent_bin; $runs runs of $chargers chargers x $per_charger MeterValues (1.6, 9 sampledValues each), $workers tokio workers"
else
	echo "callgrind: agent $agent_bin; $runs runs of $chargers chargers x $per_charger TransactionEvent(Updated) (2.0.1, 11 sampledValues each), $workers tokio workers"
fi
figures=()
for run in $(seq "$runs"); do
	measure "$run"
	figures+=($(((total + count / 2) / count)))
done
sorted=($(printf '%s\n' "${figures[@]}" | sort -n))
median="${sorted[$((runs / 2))]}"
if ((runs % 2 == 0)); then
	median=$(((sorted[runs / 2 - 1] + sorted[runs / 2] + 1) / 2))
fi
spread="$(awk -v lo="${sorted[0]}" -v hi="${sorted[runs - 1]}" -v m="$median" 'BEGIN { printf "%.2f", (hi - lo) * 100 / m }')"
echo "callgrind: $key=$count per run; per $what min ${sorted[0]}, max ${sorted[runs - 1]} (spread $spread %)"
echo "callgrind: instructions_per_$key=$median"
