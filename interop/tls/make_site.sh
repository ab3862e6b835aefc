#!/usr/bin/env bash
# A throwaway site for the wss:// (security profile 2 and 3) interop suites, made with the
# agent's own CLI the way a field engineer commissions one (docs/ocpp.md):
#   chargesite hash-password                 the profile-2 chargers' password hashes
#   chargesite tls ... init --name ...       site CA + the gateway's server certificate
#   chargesite tls ... issue CP_ID           a client certificate per profile-3 charger
#   chargesite check-config                  the finished config, files included
#
# usage: make_site.sh CHARGESITE_BIN DIR PREFIX
#
# DIR/chargesite.toml gets `[ocpp] listen` and `tls_listen` both on 127.0.0.1:0, the site
# CA as `client_ca_file`, `cpo_name`, `allow_unknown_chargers = false`, free vend (so the
# 1.6 and 2.0.1 flows need no BPP), the local API on DIR/api.sock only, and four chargers:
#   PREFIX-P3   security_profile 3, bound to serial SN-PREFIX-P3 (config and certificate)
#   PREFIX-P3B  security_profile 3
#   PREFIX-P2   security_profile 2 (password_hash; the password is in site.json)
#   PREFIX-P2B  security_profile 2
# DIR/tls holds what `tls init` / `tls issue` wrote; DIR/impostor a second site's CA that
# issued a certificate with PREFIX-P3's very subject (CN, O, serialNumber), which the agent
# must refuse. DIR/site.json describes it all for the suites (no ports: the agent picks
# them; the suites get its URLs from .ci/interop.sh or start it themselves).
set -euo pipefail

if [[ $# -ne 3 ]]; then
    echo "usage: $0 CHARGESITE_BIN DIR PREFIX" >&2
    exit 2
fi
bin="$1"
dir="$(mkdir -p "$2" && cd "$2" && pwd)"
prefix="$3"
readonly cpo="Interop CPO"

# Like the agent's ids in the wild: letters, digits, dashes.
if [[ ! "${prefix}" =~ ^[A-Za-z0-9-]{1,20}$ ]]; then
    echo "make_site: PREFIX must be 1 to 20 letters, digits or dashes" >&2
    exit 2
fi

random_password() { od -An -tx1 -N12 /dev/urandom | tr -d ' \n'; }

p3="${prefix}-P3"
p3b="${prefix}-P3B"
p2="${prefix}-P2"
p2b="${prefix}-P2B"
p3_serial="SN-${prefix}-P3"
pw_p2="$(random_password)"
pw_p2b="$(random_password)"
# `hash-password` reads the password on stdin (no trailing newline needed).
hash_p2="$(printf '%s' "${pw_p2}" | "${bin}" hash-password)"
hash_p2b="$(printf '%s' "${pw_p2b}" | "${bin}" hash-password)"
# a second line from hash-password would be a surprise worth failing on
[[ "${hash_p2}" == '$argon2'* && "${hash_p2}" != *$'\n'* ]] || { echo "make_site: hash-password printed ${hash_p2@Q}" >&2; exit 1; }

mkdir -p "${dir}/tls"
cat >"${dir}/chargesite.toml" <<EOF
# made by interop/tls/make_site.sh
[site]
id = "site-${prefix,,}"

[ocpp]
listen = "127.0.0.1:0"
tls_listen = "127.0.0.1:0"
tls_cert_file = "${dir}/tls/server.pem"
tls_key_file = "${dir}/tls/server.key"
client_ca_file = "${dir}/tls/ca.pem"
cpo_name = "${cpo}"
allow_unknown_chargers = false
# every suite's charger and its refused handshakes come from 127.0.0.1: the default (10 a
# minute per address) would throttle the negative checks into 429s
handshake_failures_per_minute = 100

[[ocpp.chargers]]
id = "${p3}"
security_profile = 3
serial = "${p3_serial}"

[[ocpp.chargers]]
id = "${p3b}"
security_profile = 3

[[ocpp.chargers]]
id = "${p2}"
security_profile = 2
password_hash = "${hash_p2}"

[[ocpp.chargers]]
id = "${p2b}"
security_profile = 2
password_hash = "${hash_p2b}"

[auth]
free_vend = true

[store]
path = "${dir}/cs.db"

[status]
listen = ""
socket = "${dir}/api.sock"
EOF

"${bin}" tls --config "${dir}/chargesite.toml" --dir "${dir}/tls" init --name localhost --name 127.0.0.1 \
    >"${dir}/tls-init.out" </dev/null
for cp in "${p3}" "${p3b}"; do
    "${bin}" tls --config "${dir}/chargesite.toml" --dir "${dir}/tls" issue "${cp}" >>"${dir}/tls-issue.out" </dev/null
done

# The impostor: another site with the same cpo_name and a charger of the same id and serial;
# its CA signs a certificate whose subject is exactly PREFIX-P3's.
mkdir -p "${dir}/impostor/tls"
cat >"${dir}/impostor/chargesite.toml" <<EOF
[site]
id = "site-impostor"
[ocpp]
listen = "127.0.0.1:0"
tls_listen = "127.0.0.1:0"
tls_cert_file = "${dir}/impostor/tls/server.pem"
tls_key_file = "${dir}/impostor/tls/server.key"
client_ca_file = "${dir}/impostor/tls/ca.pem"
cpo_name = "${cpo}"
[[ocpp.chargers]]
id = "${p3}"
security_profile = 3
serial = "${p3_serial}"
[store]
path = "${dir}/impostor/cs.db"
EOF
"${bin}" tls --config "${dir}/impostor/chargesite.toml" --dir "${dir}/impostor/tls" init --name localhost \
    >"${dir}/impostor/tls-init.out" </dev/null
"${bin}" tls --config "${dir}/impostor/chargesite.toml" --dir "${dir}/impostor/tls" issue "${p3}" \
    >"${dir}/impostor/tls-issue.out" </dev/null

"${bin}" check-config --config "${dir}/chargesite.toml" >"${dir}/check-config.out" 2>&1 </dev/null || {
    echo "make_site: check-config refused the site's config:" >&2
    cat "${dir}/check-config.out" >&2
    exit 1
}

# The fingerprint `tls init` printed for loading into chargers (the line after its header).
fingerprint="$(grep -A1 'SHA-256 fingerprint' "${dir}/tls-init.out" | tail -n 1 | tr -d ' ')"

cat >"${dir}/site.json" <<EOF
{
  "config": "${dir}/chargesite.toml",
  "db": "${dir}/cs.db",
  "tls_dir": "${dir}/tls",
  "ca": "${dir}/tls/ca.pem",
  "cpo_name": "${cpo}",
  "fingerprint": "${fingerprint}",
  "tls_init_output": "${dir}/tls-init.out",
  "chargers": {
    "p3":  {"id": "${p3}",  "profile": 3, "serial": "${p3_serial}", "cert": "${dir}/tls/${p3}.pem", "key": "${dir}/tls/${p3}.key"},
    "p3b": {"id": "${p3b}", "profile": 3, "serial": null, "cert": "${dir}/tls/${p3b}.pem", "key": "${dir}/tls/${p3b}.key"},
    "p2":  {"id": "${p2}",  "profile": 2, "password": "${pw_p2}"},
    "p2b": {"id": "${p2b}", "profile": 2, "password": "${pw_p2b}"}
  },
  "impostor": {"id": "${p3}", "ca": "${dir}/impostor/tls/ca.pem", "cert": "${dir}/impostor/tls/${p3}.pem", "key": "${dir}/impostor/tls/${p3}.key"}
}
EOF
echo "make_site: ${dir} (${p3}, ${p3b}: profile 3; ${p2}, ${p2b}: profile 2)"
