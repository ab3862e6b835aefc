#!/usr/bin/env bash
# Checks systemd/chargesite.service: it must load cleanly (`systemd-analyze verify`, with no
# warnings at all: verify exits 0 even for a misspelt hardening key, which would silently
# weaken the sandbox) and its offline security exposure must stay <= 2.0.
# Runs as root on Debian bookworm in CI (no stdin); installs systemd if it is missing.
set -euo pipefail

readonly MAX_EXPOSURE="2.0"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
unit="${repo_root}/systemd/chargesite.service"

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "systemd-analyze not found; installing systemd" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null
    apt-get install -y -qq --no-install-recommends systemd </dev/null
fi
systemd-analyze --version | sed -n 1p

# verify insists that ExecStart's binary exists. Rather than planting a fake
# /usr/bin/chargesite on the host, check a temporary copy whose ExecStart points at
# /bin/true; the name must stay chargesite.service.
workdir="$(mktemp -d)"
trap 'rm -rf "${workdir}"' EXIT
sed 's|^ExecStart=/usr/bin/chargesite |ExecStart=/bin/true |' "${unit}" >"${workdir}/chargesite.service"
if ! grep -q '^ExecStart=/bin/true ' "${workdir}/chargesite.service"; then
    echo "FAIL: ExecStart no longer starts with /usr/bin/chargesite; update this script" >&2
    exit 1
fi

echo "+ systemd-analyze verify systemd/chargesite.service"
verify_rc=0
verify_out="$(systemd-analyze verify "${workdir}/chargesite.service" 2>&1)" || verify_rc=$?
if [[ ${verify_rc} -ne 0 || -n "${verify_out}" ]]; then
    printf '%s\n' "${verify_out}" >&2
    echo "FAIL: systemd-analyze verify (exit ${verify_rc}) reported the problems above" >&2
    exit 1
fi
echo "verify: clean"

echo "+ systemd-analyze security --offline=true systemd/chargesite.service"
security_out="$(systemd-analyze security --offline=true "${unit}" 2>&1)"
overall="$(printf '%s\n' "${security_out}" | grep 'Overall exposure level' || true)"
score="$(printf '%s\n' "${overall}" | sed -n 's/.*Overall exposure level for [^:]*: *\([0-9][0-9]*\.[0-9]*\).*/\1/p')"
if [[ -z "${score}" ]]; then
    printf '%s\n' "${security_out}" >&2
    echo "FAIL: no 'Overall exposure level' score in systemd-analyze output" >&2
    exit 1
fi
echo "${overall}"
if ! awk -v s="${score}" -v max="${MAX_EXPOSURE}" 'BEGIN { exit !(s + 0 <= max + 0) }'; then
    printf '%s\n' "${security_out}" | grep '✗' >&2 || true
    echo "FAIL: exposure ${score} is above ${MAX_EXPOSURE}" >&2
    exit 1
fi
echo "OK: exposure ${score} <= ${MAX_EXPOSURE}"

# The documented secrets setup (docs/install.md, "Secrets"): the same unit with its
# LoadCredential= lines must verify cleanly and score <= 2.0 too.
creds_dir="${workdir}/creds"
mkdir -p "${creds_dir}"
sed "s|^\[Service\]$|[Service]\nLoadCredential=uplink_password:/etc/chargesite/credentials/uplink_password\nLoadCredential=tls_key.pem:/etc/chargesite/credentials/tls_key.pem|" \
    "${workdir}/chargesite.service" >"${creds_dir}/chargesite.service"
grep -q '^LoadCredential=uplink_password:' "${creds_dir}/chargesite.service" \
    || { echo "FAIL: could not add LoadCredential= to the unit copy" >&2; exit 1; }
echo "+ systemd-analyze verify (with LoadCredential=)"
verify_out="$(systemd-analyze verify "${creds_dir}/chargesite.service" 2>&1)" || verify_rc=$?
if [[ ${verify_rc} -ne 0 || -n "${verify_out}" ]]; then
    printf '%s\n' "${verify_out}" >&2
    echo "FAIL: systemd-analyze verify with credentials (exit ${verify_rc})" >&2
    exit 1
fi
security_out="$(systemd-analyze security --offline=true "${creds_dir}/chargesite.service" 2>&1)"
score="$(printf '%s\n' "${security_out}" | sed -n 's/.*Overall exposure level for [^:]*: *\([0-9][0-9]*\.[0-9]*\).*/\1/p')"
[[ -n "${score}" ]] || { printf '%s\n' "${security_out}" >&2; echo "FAIL: no score with credentials" >&2; exit 1; }
if ! awk -v s="${score}" -v max="${MAX_EXPOSURE}" 'BEGIN { exit !(s + 0 <= max + 0) }'; then
    echo "FAIL: exposure with credentials ${score} is above ${MAX_EXPOSURE}" >&2
    exit 1
fi
echo "OK: with LoadCredential=, exposure ${score} <= ${MAX_EXPOSURE}"
