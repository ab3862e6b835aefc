#!/usr/bin/env bash
# Builds the gateway binary for aarch64 with Debian's own toolchain (no Docker: for Docker
# users, Cross.toml does the same with `cross`), checks what it links, and runs it under
# qemu-user for a whole charging story with an uplink outage:
#
#   1. toolchain: Debian's rustc-web with the arm64 std (libstd-rust-web-dev:arm64), the
#      aarch64 gcc (SQLite's C from rusqlite `bundled`, ring's C/asm for rustls), qemu-user,
#      and the host's mosquitto as the "BPP" broker;
#   2. cargo build --release --locked --no-default-features --target aarch64-unknown-linux-gnu
#      (no `embedded-broker`: the gateway talks to the operator's broker, it runs none);
#      with `--profile gateway` instead of `--release` if Cargo.toml defines that profile;
#   3. size of the stripped binary (target: <= 8 MB; a miss is reported, not fatal);
#   4. linkage: fails if the binary links OpenSSL or aws-lc (NEEDED entries, symbols and
#      strings, build-script link directives, and `cargo tree -i aws-lc-sys/openssl-sys`);
#   5. story under qemu-aarch64: the agent with host mosquitto as its uplink; the aarch64
#      `chargesite simulate --ocpp mixed` drives 3 chargers (1.6 and 2.0.1) through a session each; mosquitto is killed
#      ~5 s in and restarted ~10 s later on the same port; afterwards an `events.replay`
#      from seq 1 must bring back every seq 1..last and 3 `session.stopped` events; SIGTERM
#      must end the agent with exit 0 and leave the retained state `{"online":false,...}`.
#
# Runs as root on Debian bookworm (CI=true, no stdin) from a clean clone; only 127.0.0.1 is
# used. The release build dominates the run time (see the timing summary at the end).
# CARGO_TARGET_DIR is honoured (default: target/ in the repo; the aarch64 output goes to
# target/aarch64-unknown-linux-gnu/, apart from host builds).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo_root="$(pwd)"
export PATH="${HOME}/.cargo/bin:${PATH}:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive
export CARGO_TERM_COLOR=never

readonly TARGET="aarch64-unknown-linux-gnu"
readonly SIZE_TARGET_BYTES=8000000 # 8 MB
readonly SITE="site-001"
readonly ROOT_TOPIC="chargesite/v1/${SITE}"
readonly GNU_PREFIX="aarch64-linux-gnu"

script_start=${SECONDS}
step_name=""
step_start=${SECONDS}
timings=()
step() {
    end_step
    step_name="$*"
    step_start=${SECONDS}
    printf '\n=== cross-aarch64: %s\n' "$*"
}
end_step() {
    if [[ -n "${step_name}" ]]; then
        timings+=("$(printf '%5ds  %s' "$((SECONDS - step_start))" "${step_name}")")
    fi
    step_name=""
}
note() { printf 'cross-aarch64: %s\n' "$*"; }

# ---------------------------------------------------------------------------------------
# Processes started here, and cleanup.
work="$(mktemp -d /tmp/chargesite-cross-aarch64.XXXXXX)"
pids=()
cleanup() {
    local rc=$?
    local p
    for p in "${pids[@]}"; do
        kill -KILL "${p}" 2>/dev/null || true
    done
    for p in "${pids[@]}"; do
        wait "${p}" 2>/dev/null || true
    done
    if [[ ${rc} -ne 0 ]]; then
        local f
        for f in agent.err agent.out sim.out sim.err mosquitto-1.log mosquitto-2.log; do
            if [[ -s "${work}/${f}" ]]; then
                printf '\n--- last lines of %s\n' "${f}" >&2
                tail -n 40 "${work}/${f}" >&2
            fi
        done
    fi
    rm -rf "${work}"
    exit "${rc}"
}
trap cleanup EXIT

forget() { # $1: a pid this script has reaped; never signal it again
    local keep=() p
    for p in "${pids[@]}"; do
        [[ "${p}" == "$1" ]] || keep+=("${p}")
    done
    pids=("${keep[@]}")
}
fail() {
    printf '\ncross-aarch64: FAIL: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------
step "install the Debian toolchain (rustc-web + arm64 std, aarch64 gcc, qemu-user, mosquitto)"
packages=(rustc-web "libstd-rust-web-dev:arm64" gcc-aarch64-linux-gnu libc6-dev-arm64-cross
    "libc6:arm64" qemu-user-static mosquitto mosquitto-clients)
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
fi
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}\n' "${p}" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("${p}")
    fi
done
if [[ ${#missing[@]} -gt 0 ]]; then
    note "installing: ${missing[*]}"
    # A mirror caught mid-sync fails one index now and then: retry, then try the install
    # with what was fetched (it fails clearly if a package is then missing or mismatched).
    for attempt in 1 2 3; do
        apt-get update -qq </dev/null >"${work}/apt.log" 2>&1 && break
        tail -n 5 "${work}/apt.log" >&2
        note "apt-get update failed (attempt ${attempt} of 3)"
        if [[ ${attempt} -lt 3 ]]; then sleep 15; fi
    done
    apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >"${work}/apt.log" 2>&1 \
        || { tail -n 40 "${work}/apt.log" >&2; fail "apt-get install failed"; }
else
    note "all packages already installed"
fi

# rustc-web installs its compiler as /usr/bin/rustc (found with dpkg -L, not assumed).
debian_rustc="$(dpkg -L rustc-web | grep -E '/bin/rustc(-web)?$' | head -n 1)"
[[ -n "${debian_rustc}" && -x "${debian_rustc}" ]] || fail "rustc-web installed no rustc binary"
"${debian_rustc}" --version
arm64_libdir="$("${debian_rustc}" --print target-libdir --target "${TARGET}")"
compgen -G "${arm64_libdir}/libstd-*.rlib" >/dev/null \
    || fail "no ${TARGET} std in ${arm64_libdir} (libstd-rust-web-dev:arm64)"
note "arm64 std: ${arm64_libdir}"
# The machine's cargo (rustup's) drives Debian's rustc; Debian's cargo-web only as a fallback.
if ! command -v cargo >/dev/null 2>&1; then
    apt-get install -y -qq --no-install-recommends cargo-web </dev/null >"${work}/apt.log" 2>&1 \
        || { tail -n 40 "${work}/apt.log" >&2; fail "apt-get install cargo-web failed"; }
    PATH="$(dirname "$(dpkg -L cargo-web | grep -E '/bin/cargo(-web)?$' | head -n 1)"):${PATH}"
fi
cargo --version
qemu-aarch64-static --version | head -n 1
mosquitto -h 2>/dev/null | head -n 1 || true

export RUSTC="${debian_rustc}"
export "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=${GNU_PREFIX}-gcc"
export "CC_aarch64_unknown_linux_gnu=${GNU_PREFIX}-gcc"
export "AR_aarch64_unknown_linux_gnu=${GNU_PREFIX}-ar"
target_dir="${CARGO_TARGET_DIR:-${repo_root}/target}"
# A size-tuned [profile.gateway] in Cargo.toml, when there is one, is what gateways get.
profile="release"
if grep -q '^\[profile\.gateway\]' Cargo.toml; then
    profile="gateway"
fi
bin="${target_dir}/${TARGET}/${profile}/chargesite"

# ---------------------------------------------------------------------------------------
step "cargo build --profile ${profile} --locked --no-default-features --target ${TARGET}"
cargo build --profile "${profile}" --locked --no-default-features --target "${TARGET}"
[[ -x "${bin}" ]] || fail "no binary at ${bin}"
file "${bin}" 2>/dev/null || true

# ---------------------------------------------------------------------------------------
step "binary size (target <= 8 MB)"
mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1000000 }'; }
size_built="$(stat -c %s "${bin}")"
cp "${bin}" "${work}/chargesite.stripped"
"${GNU_PREFIX}-strip" "${work}/chargesite.stripped"
size_stripped="$(stat -c %s "${work}/chargesite.stripped")"
note "$(printf '%-32s %9d bytes (%s MB)' "as built (profile ${profile}):" "${size_built}" "$(mb "${size_built}")")"
note "$(printf '%-32s %9d bytes (%s MB)' "after ${GNU_PREFIX}-strip:" "${size_stripped}" "$(mb "${size_stripped}")")"
size_verdict="within the 8 MB target"
if [[ ${size_stripped} -gt ${SIZE_TARGET_BYTES} ]]; then
    size_verdict="OVER the 8 MB target"
    echo "cross-aarch64: WARNING: the stripped binary is $(mb "${size_stripped}") MB, over the 8 MB target" >&2
fi

# ---------------------------------------------------------------------------------------
step "linkage: no OpenSSL, no aws-lc"
needed="$("${GNU_PREFIX}-readelf" -d "${bin}" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')"
note "NEEDED: $(printf '%s\n' "${needed}" | paste -s -d ' ')"
unexpected="$(printf '%s\n' "${needed}" | grep -v -E '^(libc|libm|libgcc_s|libpthread|libdl|librt|ld-linux-aarch64)\.so(\.[0-9]+)*$' | grep -v '^$' || true)"
[[ -z "${unexpected}" ]] || fail "unexpected shared libraries: ${unexpected}"
"${GNU_PREFIX}-readelf" -h "${bin}" | grep -q 'Machine:.*AArch64' || fail "not an AArch64 ELF"
glibc_min="$("${GNU_PREFIX}-objdump" -T "${bin}" | grep -o 'GLIBC_[0-9.]*' | sort -u -V | tail -n 1)"
note "needs ${glibc_min:-no versioned glibc symbol} or newer on the gateway"
# Symbols (dynamic ones survive strip) and strings: aws-lc's and OpenSSL's exported names.
if "${GNU_PREFIX}-readelf" -W --dyn-syms "${bin}" | grep -E 'aws_lc|AWS_LC|SSL_|OPENSSL_|CRYPTO_' >"${work}/syms"; then
    head -n 20 "${work}/syms" >&2
    fail "OpenSSL/aws-lc symbols in the dynamic symbol table"
fi
if strings -a "${bin}" | grep -E 'aws_lc|AWS_LC|OPENSSL_|libssl\.so|libcrypto\.so' >"${work}/strs"; then
    head -n 20 "${work}/strs" >&2
    fail "OpenSSL/aws-lc names in the binary's strings"
fi
# Build scripts that asked the linker for ssl/crypto/aws-lc (also catches static linking).
build_dir="${target_dir}/${TARGET}/${profile}/build"
if grep -h -E '^cargo::?rustc-link-lib=.*(ssl|crypto|aws)' "${build_dir}"/*/output 2>/dev/null >"${work}/links"; then
    cat "${work}/links" >&2
    fail "a build script links OpenSSL/aws-lc"
fi
for crate in aws-lc-sys aws-lc-rs openssl-sys; do
    tree_rc=0
    tree_out="$(cargo tree --locked --target "${TARGET}" --no-default-features -e normal -i "${crate}" 2>&1)" || tree_rc=$?
    if [[ ${tree_rc} -eq 0 && "${tree_out}" == *"${crate} v"* ]]; then
        printf '%s\n' "${tree_out}" >&2
        fail "${crate} is in the gateway build's dependency tree"
    elif [[ ${tree_rc} -ne 0 && "${tree_out}" != *"did not match any packages"* ]]; then
        printf '%s\n' "${tree_out}" >&2
        fail "cargo tree -i ${crate} failed"
    fi
    note "cargo tree -i ${crate}: nothing"
done
note "linkage: ok (no libssl/libcrypto, no aws-lc)"

# ---------------------------------------------------------------------------------------
step "under qemu-aarch64: check-config, then agent + mosquitto"
# The binary runs on the multiarch libc6:arm64 (/lib/ld-linux-aarch64.so.1 and
# /lib/aarch64-linux-gnu), explicitly, with or without binfmt. Not with
# `-L /usr/aarch64-linux-gnu`: that takes the loader from libc6-arm64-cross (2.36-8) while the
# loader still finds libc.so.6 in /lib/aarch64-linux-gnu (libc6:arm64, a newer 2.36 build), and
# that mismatched pair hangs in the first pthread_create.
[[ -e /lib/ld-linux-aarch64.so.1 ]] || fail "no /lib/ld-linux-aarch64.so.1 (libc6:arm64)"
qemu_bin=(qemu-aarch64-static "${bin}")
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
mq_port="$(free_port)"
cat >"${work}/mosquitto.conf" <<EOF
user root
listener ${mq_port} 127.0.0.1
allow_anonymous true
persistence false
EOF
cat >"${work}/chargesite.toml" <<EOF
[site]
id = "${SITE}"

[ocpp]
listen = "127.0.0.1:0"
allow_unknown_chargers = true

[auth]
free_vend = true

[store]
path = "${work}/cs.db"

[uplink]
url = "mqtt://127.0.0.1:${mq_port}"
keepalive_secs = 2
EOF
timeout 120 "${qemu_bin[@]}" --version
timeout 120 "${qemu_bin[@]}" check-config --config "${work}/chargesite.toml"

mq_pid=""
start_mosquitto() { # $1: log name
    local _try _poll
    for _try in $(seq 1 20); do
        mosquitto -c "${work}/mosquitto.conf" </dev/null >>"${work}/$1" 2>&1 &
        mq_pid=$!
        pids+=("${mq_pid}")
        for _poll in $(seq 1 50); do
            port_open "${mq_port}" && return 0
            kill -0 "${mq_pid}" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "${mq_pid}" 2>/dev/null || true
        wait "${mq_pid}" 2>/dev/null || true
        forget "${mq_pid}"
        sleep 0.5
    done
    fail "mosquitto did not start on 127.0.0.1:${mq_port}"
}
start_mosquitto mosquitto-1.log
note "mosquitto on 127.0.0.1:${mq_port}"

# The BPP side: a persistent-session subscriber (mosquitto_sub redials by itself).
mosquitto_sub -h 127.0.0.1 -p "${mq_port}" -t "${ROOT_TOPIC}/#" -v -q 1 -c -i bpp-rig \
    </dev/null >"${work}/bpp-live.log" 2>"${work}/bpp-live.err" &
pids+=($!)

"${qemu_bin[@]}" run --config "${work}/chargesite.toml" </dev/null >"${work}/agent.out" 2>"${work}/agent.err" &
agent_pid=$!
pids+=("${agent_pid}")
ocpp_port=""
for _ in $(seq 1 600); do
    ocpp_port="$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "${work}/agent.out" | head -n 1)"
    [[ -n "${ocpp_port}" ]] && break
    kill -0 "${agent_pid}" 2>/dev/null || fail "the agent exited during startup"
    sleep 0.1
done
[[ -n "${ocpp_port}" ]] || fail "the agent printed no 'listening on' line within 60 s"
note "agent (aarch64 under qemu) listening on 127.0.0.1:${ocpp_port}"

db_query() { # $1: SQL returning one value; read-only, beside the running agent
    python3 - "${work}/cs.db" "$1" <<'EOF'
import sqlite3, sys
c = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=10)
v = c.execute(sys.argv[2]).fetchone()[0]
print(0 if v is None else v)
EOF
}
retained_state() {
    timeout 15 mosquitto_sub -h 127.0.0.1 -p "${mq_port}" -t "${ROOT_TOPIC}/state" -C 1 -W 10 2>/dev/null || true
}
state=""
for _ in $(seq 1 30); do
    state="$(retained_state)"
    [[ "${state}" == *'"online":true'* ]] && break
    sleep 1
done
[[ "${state}" == *'"online":true'* ]] || fail "no retained {\"online\":true} state from the agent (got: ${state:-nothing})"
note "retained state: ${state}"

# ---------------------------------------------------------------------------------------
step "under qemu-aarch64: simulate 3 chargers (mixed 1.6 and 2.0.1) x 1 session, broker killed ~5 s in for ~10 s"
timeout 60 "${qemu_bin[@]}" simulate --help >/dev/null 2>&1 \
    || fail "this build has no 'chargesite simulate' subcommand"
timeout 300 "${qemu_bin[@]}" simulate --ocpp mixed --url "ws://127.0.0.1:${ocpp_port}/ocpp" --chargers 3 \
    --sessions 1 --session-secs 20 --meter-interval-ms 1000 --time-scale 60 --tag RIGTAG \
    --duration-secs 120 </dev/null >"${work}/sim.out" 2>"${work}/sim.err" &
sim_pid=$!
pids+=("${sim_pid}")
sleep 5
kill -0 "${sim_pid}" 2>/dev/null || note "the simulator finished before the outage began"
kill -KILL "${mq_pid}"
wait "${mq_pid}" 2>/dev/null || true
forget "${mq_pid}"
seq_at_kill="$(db_query 'SELECT max(seq) FROM events')"
note "mosquitto killed (last seq ${seq_at_kill}); restarting it in 10 s"
sleep 10
seq_at_restart="$(db_query 'SELECT max(seq) FROM events')"
unsent_at_restart="$(db_query 'SELECT count(*) FROM events WHERE sent_at IS NULL')"
start_mosquitto mosquitto-2.log
note "mosquitto restarted on 127.0.0.1:${mq_port}: $((seq_at_restart - seq_at_kill)) events were stored during the outage, ${unsent_at_restart} unsent"
[[ ${unsent_at_restart} -gt 0 ]] \
    || fail "no event was waiting for the broker when it came back: the outage tested nothing"
sim_rc=0
wait "${sim_pid}" || sim_rc=$?
forget "${sim_pid}"
cat "${work}/sim.out"
[[ ${sim_rc} -eq 0 ]] || fail "the simulator exited with status ${sim_rc}"

# Drained: every stored event has had its PUBACK.
last_seq=0
unsent=1
for _ in $(seq 1 120); do
    unsent="$(db_query 'SELECT count(*) FROM events WHERE sent_at IS NULL')"
    [[ "${unsent}" -eq 0 ]] && break
    sleep 1
done
[[ "${unsent}" -eq 0 ]] || fail "${unsent} events still unsent 120 s after the broker came back"
last_seq="$(db_query 'SELECT max(seq) FROM events')"
[[ "${last_seq}" -gt 0 ]] || fail "the agent stored no events"
note "all ${last_seq} events sent"

# ---------------------------------------------------------------------------------------
step "events.replay from seq 1: every seq 1..last, 3 session.stopped"
check_events() { # $1: mosquitto_sub -v log, $2: live|replay; prints a summary, exit 0 when complete
    python3 - "$1" "${ROOT_TOPIC}" "${last_seq}" "$2" <<'EOF'
import json, sys
path, root, last, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
seqs, stopped, result = set(), set(), None
for line in open(path, encoding="utf-8", errors="replace"):
    topic, _, payload = line.rstrip("\n").partition(" ")
    try:
        doc = json.loads(payload)
    except ValueError:
        continue
    if topic == root + "/events":
        for ev in doc.get("events", []):
            seqs.add(ev["seq"])
            if ev.get("type") == "session.stopped":
                stopped.add(ev.get("session_id"))
    elif topic == root + "/cmd/result" and doc.get("id") == "rig-replay":
        result = doc
missing = [s for s in range(1, last + 1) if s not in seqs]
summary = (f"{len(seqs & set(range(1, last + 1)))}/{last} seqs, {len(missing)} missing"
           + (f" (first {missing[:10]})" if missing else "")
           + f", {len(stopped)} sessions stopped")
ok = not missing and len(stopped) == 3
if mode == "replay":
    summary += f"; cmd/result: {json.dumps(result, separators=(',', ':'))}"
    ok = ok and result is not None and result.get("ok") is True \
        and result.get("first_seq") == 1 and result.get("missing_before") is False
print(summary)
sys.exit(0 if ok else 1)
EOF
}
note "live BPP subscriber, before any replay: $(check_events "${work}/bpp-live.log" live)"
mosquitto_sub -h 127.0.0.1 -p "${mq_port}" -t "${ROOT_TOPIC}/#" -v -q 1 -i bpp-replay \
    </dev/null >"${work}/bpp-replay.log" 2>"${work}/bpp-replay.err" &
replay_sub=$!
pids+=("${replay_sub}")
# Subscribed once the retained state has arrived.
for _ in $(seq 1 100); do
    grep -q "^${ROOT_TOPIC}/state " "${work}/bpp-replay.log" && break
    sleep 0.1
done
grep -q "^${ROOT_TOPIC}/state " "${work}/bpp-replay.log" || fail "the replay subscriber got no retained state"
timeout 15 mosquitto_pub -h 127.0.0.1 -p "${mq_port}" -q 1 -t "${ROOT_TOPIC}/cmd" \
    -m '{"id":"rig-replay","type":"events.replay","from_seq":1}'
replay_ok=0
for _ in $(seq 1 120); do
    if check_events "${work}/bpp-replay.log" replay >"${work}/replay-summary"; then
        replay_ok=1
        break
    fi
    sleep 1
done
cat "${work}/replay-summary"
[[ ${replay_ok} -eq 1 ]] || fail "within 120 s, the replay did not answer ok from seq 1 with nothing missing before it, bring back every seq 1..${last_seq} and 3 stopped sessions"
kill "${replay_sub}" 2>/dev/null || true
wait "${replay_sub}" 2>/dev/null || true
forget "${replay_sub}"

# ---------------------------------------------------------------------------------------
step "SIGTERM: exit 0 and retained {\"online\":false}"
kill -TERM "${agent_pid}"
agent_rc=""
for _ in $(seq 1 400); do
    if ! kill -0 "${agent_pid}" 2>/dev/null; then
        agent_rc=0
        wait "${agent_pid}" || agent_rc=$?
        forget "${agent_pid}"
        break
    fi
    sleep 0.1
done
[[ -n "${agent_rc}" ]] || fail "the agent did not exit within 40 s of SIGTERM"
[[ "${agent_rc}" -eq 0 ]] || fail "the agent exited with status ${agent_rc} after SIGTERM"
state="$(retained_state)"
note "retained state: ${state}"
[[ "${state}" == *'"online":false'* ]] || fail "the retained state is not {\"online\":false,...}"
end_step

# ---------------------------------------------------------------------------------------
printf '\n=== cross-aarch64: timings\n'
printf '%s\n' "${timings[@]}"
printf '%5ds  total\n' "$((SECONDS - script_start))"
printf '\ncross-aarch64: ok, binary %s MB stripped (%s), no OpenSSL/aws-lc linked, qemu story: %s events, 3 sessions, uplink outage survived\n' \
    "$(mb "${size_stripped}")" "${size_verdict}" "${last_seq}"
