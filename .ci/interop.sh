#!/usr/bin/env bash
# Interoperability: chargesite's OCPP-J endpoint driven by charge point implementations
# nobody here wrote, each validating every message against the official OCPP 1.6 and 2.0.1
# JSON schemas (see interop/README.md):
#   python   PyPI `ocpp` (mobilityhouse) + `websockets`, pytest     interop/python
#   node     npm `ocpp-rpc` RPCClient, strictMode, node --test      interop/node
#   ocppsim  crates.io `ocppsim` --strict, driven through a pty     interop/ocppsim
# Each suite runs once per version, each run with its own agent (temp dir, listen
# 127.0.0.1:0), which is stopped with SIGTERM afterwards and must exit 0. The 1.6 agents
# run free vend without an uplink; the 2.0.1 agents run `free_vend = false` with an uplink
# to a local mosquitto, through which the suites (playing the BPP) provision OTPs. None
# has a site power limit: the site power tests (SetChargingProfile) of python, python201,
# node and node201 start agents of their own with `[site] max_power_kw`, from the
# CHARGESITE_BIN each suite is given (the binary built here).
# The reservation tests (ReserveNow, CancelReservation) need an uplink: python201's start
# an agent and a mosquitto of their own (both versions), node201's use its suite's agent
# and BPP with a 1.6 and a 2.0.1 client.
# python_tls and node_tls run over wss:// (security profiles 2 and 3), 1.6 and 2.0.1 alike,
# each on a site interop/tls/make_site.sh makes with the agent's CLI (hash-password, tls
# init, tls issue, check-config): free vend, `tls_listen = "127.0.0.1:0"` beside `listen`.
#
# Runs as root on Debian bookworm in CI (CI=true, no stdin) from a clean clone; installs
# what it needs: python3-venv / nodejs+npm / mosquitto via apt when missing, the pinned
# Python packages into target/interop-venv, `npm ci` in interop/node, ocppsim into
# target/tools.
# INTEROP_SKIP_OCPPSIM=1 skips the ocppsim suites (its first build takes about 3 minutes);
# INTEROP_SUITES="python node ocppsim python201 node201 ocppsim201 python_tls node_tls" (any
# subset) runs only those.
# Exits non-zero if anything failed; the last line is `interop: N passed, M failed`.
set -euo pipefail

readonly OCPPSIM_VERSION="0.3.0"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"

export PATH="${HOME}/.cargo/bin:${PATH}"
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONDONTWRITEBYTECODE=1
export npm_config_fund=false npm_config_audit=false npm_config_update_notifier=false

workdir="$(mktemp -d -t chargesite-interop.XXXXXX)"
agent_pid=""
broker_pid=""
cleanup() {
    if [[ -n "${agent_pid}" ]] && kill -0 "${agent_pid}" 2>/dev/null; then
        kill -TERM "${agent_pid}" 2>/dev/null || true
        wait "${agent_pid}" 2>/dev/null || true
    fi
    if [[ -n "${broker_pid}" ]] && kill -0 "${broker_pid}" 2>/dev/null; then
        kill -TERM "${broker_pid}" 2>/dev/null || true
        wait "${broker_pid}" 2>/dev/null || true
    fi
    rm -rf "${workdir}"
}
trap cleanup EXIT

total_passed=0
total_failed=0
summary=()

note() { printf '\n=== %s\n' "$*"; }

record() { # suite passed failed [note]
    total_passed=$((total_passed + $2))
    total_failed=$((total_failed + $3))
    summary+=("$(printf '%-15s %3d passed, %3d failed%s' "$1" "$2" "$3" "${4:+  ($4)}")")
}

apt_updated=""
apt_install() {
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        echo "interop: cannot install $* (not root, or no apt-get); install it first" >&2
        return 1
    fi
    if [[ -z "${apt_updated}" ]]; then
        apt-get update -qq </dev/null
        apt_updated=1
    fi
    apt-get install -y -qq --no-install-recommends "$@" </dev/null
}

# ------------------------------------------------------------------------------- prerequisites

note "prerequisites"
command -v cargo >/dev/null || { echo "interop: cargo not found" >&2; exit 1; }
command -v python3 >/dev/null || apt_install python3
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "interop: Python >= 3.11 needed (ocpp 2.1.0); found $(python3 --version)" >&2
    exit 1
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt_install nodejs npm ca-certificates
fi
command -v mosquitto >/dev/null || apt_install mosquitto
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if (( node_major < 18 )); then
    echo "interop: Node >= 18 needed for node:test; found $(node --version)" >&2
    exit 1
fi
echo "cargo $(cargo --version | cut -d' ' -f2), $(python3 --version), node $(node --version), npm $(npm --version), $(mosquitto -h 2>/dev/null | head -n 1)"

venv="${repo_root}/target/interop-venv"
mkdir -p "${repo_root}/target"
if [[ ! -x "${venv}/bin/pip" ]]; then
    if ! python3 -m venv "${venv}" >/dev/null 2>&1; then
        # Debian ships ensurepip separately
        rm -rf "${venv}"
        apt_install python3-venv
        python3 -m venv "${venv}"
    fi
fi
"${venv}/bin/pip" install -q -r interop/python/requirements.txt </dev/null
"${venv}/bin/pip" check

(cd interop/node && npm ci --no-audit --no-fund --loglevel=error </dev/null)

ocppsim_bin="${repo_root}/target/tools/bin/ocppsim"
run_ocppsim=1
if [[ "${INTEROP_SKIP_OCPPSIM:-0}" == "1" ]]; then
    run_ocppsim=0
    echo "ocppsim: skipped (INTEROP_SKIP_OCPPSIM=1)"
elif [[ -x "${ocppsim_bin}" ]] && "${ocppsim_bin}" --version 2>/dev/null | grep -q "${OCPPSIM_VERSION}"; then
    echo "ocppsim ${OCPPSIM_VERSION}: already installed in target/tools"
else
    # --debug: a test driver needs no optimisation, and it halves the build (release: ~10
    # CPU-minutes for its ~375 crates; debug: ~4.5, i.e. ~3 minutes on 2 cores).
    echo "ocppsim ${OCPPSIM_VERSION}: cargo install --locked --debug (first time only; cached in target/tools)"
    start=${SECONDS}
    if cargo install ocppsim --version "${OCPPSIM_VERSION}" --locked --debug --root "${repo_root}/target/tools" --quiet </dev/null; then
        echo "ocppsim built in $((SECONDS - start)) s"
    else
        echo "FAIL: cargo install ocppsim ${OCPPSIM_VERSION} failed; its suite cannot run" >&2
        run_ocppsim=0
        record ocppsim-install 0 1
    fi
fi

note "cargo build"
if ! cargo build --quiet --bin chargesite </dev/null; then
    echo "FAIL: cargo build failed; no suite can run" >&2
    echo "interop: 0 passed, 1 failed"
    exit 1
fi
agent_bin="${CARGO_TARGET_DIR:-${repo_root}/target}/debug/chargesite"

# ------------------------------------------------------------------------------- agent control

# start_broker: one mosquitto for the 2.0.1 agents, on a free port below the ephemeral
# range; sets broker_pid, broker_port.
start_broker() {
    local dir="${workdir}/mosquitto" port i try
    mkdir -p "${dir}"
    for ((try = 0; try < 20; try++)); do
        port=$((20000 + RANDOM % 10000))
        printf 'user root\nlistener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "${port}" >"${dir}/mosquitto.conf"
        mosquitto -c "${dir}/mosquitto.conf" >>"${dir}/mosquitto.log" 2>&1 </dev/null &
        broker_pid=$!
        for ((i = 0; i < 100; i++)); do
            kill -0 "${broker_pid}" 2>/dev/null || break
            if (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; then
                broker_port=${port}
                echo "mosquitto: pid ${broker_pid}, 127.0.0.1:${broker_port}"
                return 0
            fi
            sleep 0.05
        done
        kill -KILL "${broker_pid}" 2>/dev/null || true
        wait "${broker_pid}" 2>/dev/null || true
        broker_pid=""
    done
    echo "interop: mosquitto did not start; log:" >&2
    cat "${dir}/mosquitto.log" >&2 || true
    return 1
}

# start_agent NAME: a fresh agent in ${workdir}/NAME; sets agent_pid, agent_url, agent_db,
# agent_config (and agent_site). A NAME ending in 201 gets the 2.0.1 configuration:
# free_vend = false and an uplink to the broker, site id site-NAME; the others the local API
# on a Unix socket in that dir only (`[status] listen = ""`). A NAME ending in _tls gets the
# site interop/tls/make_site.sh makes there (chargers of security profiles 2 and 3) and
# also sets agent_tls_url (wss://) and agent_site_json.
start_agent() {
    local dir="${workdir}/$1" auth="free_vend = true" uplink="" status="" tls=""
    mkdir -p "${dir}"
    agent_db="${dir}/cs.db"
    agent_config="${dir}/chargesite.toml"
    agent_site="site-001"
    agent_tls_url=""
    agent_site_json=""
    if [[ "$1" == *_tls ]]; then
        tls=1
        local prefix
        case "$1" in # the charger ids: PYTLS-P3, NODETLS-P2, ... (what the standalone runs use)
            python_tls) prefix=PYTLS ;;
            node_tls) prefix=NODETLS ;;
            *) prefix="$(tr -cd 'A-Za-z0-9' <<<"${1^^}")" ;;
        esac
        if ! interop/tls/make_site.sh "${agent_bin}" "${dir}" "${prefix}" </dev/null; then
            echo "interop: could not make the TLS site for $1" >&2
            return 1
        fi
        agent_site_json="${dir}/site.json"
    elif [[ "$1" == *201 ]]; then
        agent_site="site-$1"
        auth="free_vend = false"
        uplink="$(printf '[uplink]\nurl = "mqtt://127.0.0.1:%s"\nkeepalive_secs = 5' "${broker_port}")"
    else
        # the local API on a socket only (no auth), for `chargesite charger ... test-session`
        status="$(printf '[status]\nlisten = ""\nsocket = "%s/api.sock"' "${dir}")"
    fi
    [[ -n "${tls}" ]] || cat >"${dir}/chargesite.toml" <<EOF
[site]
id = "${agent_site}"

[ocpp]
listen = "127.0.0.1:0"
allow_unknown_chargers = true

[auth]
${auth}

[store]
path = "${agent_db}"

${status}

${uplink}
EOF
    # Rust's stdout is line-buffered even into a file: poll it for the port line.
    "${agent_bin}" run --config "${dir}/chargesite.toml" >"${dir}/stdout" 2>"${dir}/agent.log" </dev/null &
    agent_pid=$!
    local port="" tls_port="" i
    for ((i = 0; i < 300; i++)); do
        port="$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "${dir}/stdout" 2>/dev/null | head -n 1)"
        # `tls listening on` comes right after `listening on`
        [[ -n "${tls}" ]] && tls_port="$(sed -n 's/^tls listening on 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "${dir}/stdout" 2>/dev/null | head -n 1)"
        [[ -n "${port}" && ( -z "${tls}" || -n "${tls_port}" ) ]] && break
        kill -0 "${agent_pid}" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -z "${port}" || ( -n "${tls}" && -z "${tls_port}" ) ]]; then
        echo "interop: agent for $1 did not report its port${tls:+s (listening on, tls listening on)}; log:" >&2
        cat "${dir}/stdout" "${dir}/agent.log" >&2 || true
        kill -KILL "${agent_pid}" 2>/dev/null || true
        wait "${agent_pid}" 2>/dev/null || true
        agent_pid=""
        return 1
    fi
    agent_url="ws://127.0.0.1:${port}/ocpp"
    if [[ -n "${tls}" ]]; then
        agent_tls_url="wss://127.0.0.1:${tls_port}/ocpp"
        echo "agent for $1: pid ${agent_pid}, ${agent_url} and ${agent_tls_url}"
    else
        echo "agent for $1: pid ${agent_pid}, ${agent_url}"
    fi
}

# stop_agent NAME: SIGTERM, must exit 0 within 30 s; counted as one check.
stop_agent() {
    local rc=0 i
    kill -TERM "${agent_pid}" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
        kill -0 "${agent_pid}" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "${agent_pid}" 2>/dev/null; then
        echo "FAIL: agent for $1 still running 30 s after SIGTERM" >&2
        kill -KILL "${agent_pid}" 2>/dev/null || true
    fi
    wait "${agent_pid}" || rc=$?
    agent_pid=""
    if [[ ${rc} -eq 0 ]]; then
        echo "ok   agent for $1 exited 0 on SIGTERM"
        record "$1-stop" 1 0
    else
        echo "FAIL agent for $1 exited ${rc} on SIGTERM; log tail:" >&2
        tail -n 30 "${workdir}/$1/agent.log" >&2 || true
        record "$1-stop" 0 1
    fi
}

# ------------------------------------------------------------------------------------ suites

# pytest_tests NAME FILE [VAR=VALUE...]: pytest on FILE with those variables set; counts
# passed, failed + errors (and notes xfailed: known agent bugs).
pytest_tests() {
    local name="$1" file="$2" out="${workdir}/$1.out" rc summary_line pass fail n xfail
    shift 2
    set +e
    env "$@" "${venv}/bin/python" -m pytest -p no:cacheprovider -q -rfE "${file}" </dev/null 2>&1 | tee "${out}"
    rc=${PIPESTATUS[0]}
    set -e
    summary_line="$(tail -n 1 "${out}")"
    pass="$(grep -oE '[0-9]+ passed' <<<"${summary_line}" | grep -oE '^[0-9]+' || true)"
    fail=0
    for n in $(grep -oE '[0-9]+ (failed|errors?)' <<<"${summary_line}" | grep -oE '^[0-9]+' || true); do
        fail=$((fail + n))
    done
    if [[ ${rc} -ne 0 && ${fail} -eq 0 ]]; then fail=1; fi
    xfail="$(grep -oE '[0-9]+ xfailed' <<<"${summary_line}" || true)"
    record "${name}" "${pass:-0}" "${fail}" "${xfail:+${xfail}: known agent bug, see interop/README.md}"
}

suite_python() {
    pytest_tests python interop/python/test_interop.py \
        CHARGESITE_WS_URL="${agent_url}" CHARGESITE_DB="${agent_db}" \
        CHARGESITE_CONFIG="${agent_config}" CHARGESITE_BIN="${agent_bin}"
}

suite_python201() {
    pytest_tests python201 interop/python/test_v201.py \
        CHARGESITE201_WS_URL="${agent_url}" CHARGESITE201_DB="${agent_db}" \
        CHARGESITE201_MQTT="127.0.0.1:${broker_port}" CHARGESITE201_SITE="${agent_site}" \
        CHARGESITE_BIN="${agent_bin}"
}

suite_python_tls() {
    pytest_tests python_tls interop/python/test_tls.py \
        CHARGESITE_TLS_SITE="${agent_site_json}" CHARGESITE_TLS_WSS_URL="${agent_tls_url}" \
        CHARGESITE_TLS_WS_URL="${agent_url}" CHARGESITE_BIN="${agent_bin}"
}

# node_tests NAME FILE: node --test on FILE with the agent in the environment.
node_tests() {
    local tap="${workdir}/$1.tap" rc pass fail
    set +e
    (cd interop/node && CHARGESITE_WS_URL="${agent_url}" CHARGESITE_DB="${agent_db}" \
        CHARGESITE201_WS_URL="${agent_url}" CHARGESITE201_DB="${agent_db}" \
        CHARGESITE201_MQTT="127.0.0.1:${broker_port:-0}" CHARGESITE201_SITE="${agent_site}" \
        CHARGESITE_TLS_SITE="${agent_site_json:-}" CHARGESITE_TLS_WSS_URL="${agent_tls_url:-}" \
        CHARGESITE_TLS_WS_URL="${agent_url}" CHARGESITE_BIN="${agent_bin}" \
        node --test --test-reporter=spec --test-reporter-destination=stdout \
        --test-reporter=tap --test-reporter-destination="${tap}" "$2" </dev/null)
    rc=$?
    set -e
    pass="$(sed -n 's/^# pass \([0-9]*\)$/\1/p' "${tap}" 2>/dev/null | tail -n 1)"
    fail="$(sed -n 's/^# fail \([0-9]*\)$/\1/p' "${tap}" 2>/dev/null | tail -n 1)"
    fail="${fail:-0}"
    if [[ ${rc} -ne 0 && ${fail} -eq 0 ]]; then fail=1; fi
    record "$1" "${pass:-0}" "${fail}"
}

suite_node() { node_tests node interop.test.mjs; }
suite_node201() { node_tests node201 v201.test.mjs; }
suite_node_tls() { node_tests node_tls tls.test.mjs; }

# ocppsim_run NAME PROTOCOL
ocppsim_run() {
    local out="${workdir}/$1.out" rc line pass fail
    set +e
    PYTHON="${venv}/bin/python" OCPPSIM_PROTOCOL="$2" \
        CHARGESITE201_MQTT="127.0.0.1:${broker_port:-0}" CHARGESITE201_SITE="${agent_site}" \
        interop/ocppsim/run.sh "${ocppsim_bin}" "${agent_url}" "${agent_db}" "${workdir}/$1-run" </dev/null 2>&1 | tee "${out}"
    rc=${PIPESTATUS[0]}
    set -e
    line="$(grep -E '^ocppsim: [0-9]+ passed, [0-9]+ failed$' "${out}" | tail -n 1 || true)"
    pass="$(sed -n 's/^ocppsim: \([0-9]*\) passed.*/\1/p' <<<"${line}")"
    fail="$(sed -n 's/.* \([0-9]*\) failed$/\1/p' <<<"${line}")"
    fail="${fail:-0}"
    if [[ ${rc} -ne 0 && ${fail} -eq 0 ]]; then fail=1; fi
    record "$1" "${pass:-0}" "${fail}"
}

suite_ocppsim() { ocppsim_run ocppsim 1.6; }
suite_ocppsim201() { ocppsim_run ocppsim201 2.0.1; }

# run_suite NAME: one agent, the suite, SIGTERM. INTEROP_SUITES="node201 ocppsim201" runs only
# the suites it names.
run_suite() {
    local failed_before=${total_failed}
    if [[ -n "${INTEROP_SUITES:-}" && " ${INTEROP_SUITES} " != *" $1 "* ]]; then
        echo "$1: skipped (not in INTEROP_SUITES)"
        return 0
    fi
    if start_agent "$1"; then
        "suite_$1"
        if ((total_failed > failed_before)); then
            if grep -q 'panicked at' "${workdir}/$1/agent.log"; then
                echo "--- the agent for $1 panicked ---"
                grep -A 2 'panicked at' "${workdir}/$1/agent.log" || true
            fi
            echo "--- agent log for $1 (last 40 lines) ---"
            tail -n 40 "${workdir}/$1/agent.log" || true
        fi
        stop_agent "$1"
    else
        record "$1" 0 1
    fi
}

note "python: PyPI ocpp $(sed -n 's/^ocpp==//p' interop/python/requirements.txt) (mobilityhouse)"
run_suite python

note "node: npm ocpp-rpc $(node -p 'require("./interop/node/node_modules/ocpp-rpc/package.json").version') (strictMode)"
run_suite node

if [[ ${run_ocppsim} -eq 1 ]]; then
    note "ocppsim: crates.io $("${ocppsim_bin}" --version 2>/dev/null | head -n 1) (--strict)"
    run_suite ocppsim
fi

note "OCPP 2.0.1: a broker for the agents' uplinks"
if start_broker; then
    note "python201: PyPI ocpp $(sed -n 's/^ocpp==//p' interop/python/requirements.txt) ocpp.v201, paho-mqtt $(sed -n 's/^paho-mqtt==//p' interop/python/requirements.txt) as the BPP"
    run_suite python201

    note "node201: npm ocpp-rpc (ocpp2.0.1, strictMode), mqtt $(node -p 'require("./interop/node/node_modules/mqtt/package.json").version') as the BPP"
    run_suite node201

    if [[ ${run_ocppsim} -eq 1 ]]; then
        note "ocppsim201: crates.io $("${ocppsim_bin}" --version 2>/dev/null | head -n 1) (--protocol 2.0.1 --strict)"
        run_suite ocppsim201
    fi
    kill -TERM "${broker_pid}" 2>/dev/null || true
    wait "${broker_pid}" 2>/dev/null || true
    broker_pid=""
else
    record broker 0 1
fi

note "python_tls: PyPI ocpp (1.6 and 2.0.1) on websockets over wss://, ssl.SSLContext (security profiles 2 and 3)"
run_suite python_tls

note "node_tls: npm ocpp-rpc (1.6 and 2.0.1, strictMode) over wss://, wsOpts ca/cert/key (security profiles 2 and 3)"
run_suite node_tls

note "summary"
printf '%s\n' "${summary[@]}"
echo "interop: ${total_passed} passed, ${total_failed} failed"
[[ ${total_failed} -eq 0 ]]
