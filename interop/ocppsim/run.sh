#!/usr/bin/env bash
# Drives a running chargesite with ocppsim (crates.io `ocppsim`, OCPP 1.6 or 2.0.1, --strict
# schema validation of every answer). ocppsim is an interactive terminal UI, so drive.py gives it
# a pseudo-terminal, types its commands and reads its frame trace (see drive.py).
#
# usage: interop/ocppsim/run.sh OCPPSIM_BIN WS_URL DB_PATH [WORKDIR]
#   WS_URL  ws://127.0.0.1:PORT/ocpp (the charger id is appended)
#   DB_PATH the agent's SQLite file, read to check the session events
# PYTHON: the interpreter (default python3; one with `websockets` also runs the control, and
#   2.0.1 needs `paho-mqtt`: the interop venv has both).
# OCPPSIM_PROTOCOL=2.0.1 drives OCPP 2.0.1 (drive201.py); then CHARGESITE201_MQTT (host:port of
#   the agent's broker) and CHARGESITE201_SITE (its site id) are needed: the driver is the BPP.
# Prints one ok/FAIL line per check and `ocppsim: N passed, M failed`; exit 1 on a failure.
set -euo pipefail

if [[ $# -lt 3 || $# -gt 4 ]]; then
    echo "usage: $0 OCPPSIM_BIN WS_URL DB_PATH [WORKDIR]" >&2
    exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
sim_bin="$1" url="$2" db="$3"
if [[ $# -eq 4 ]]; then
    workdir="$4"
    mkdir -p "${workdir}"
else
    workdir="$(mktemp -d -t ocppsim-interop.XXXXXX)"
    trap 'rm -rf "${workdir}"' EXIT
fi
[[ -x "${sim_bin}" ]] || { echo "ocppsim binary not found: ${sim_bin}" >&2; exit 2; }

extra=()
if [[ "${OCPPSIM_PROTOCOL:-1.6}" == "2.0.1" ]]; then
    extra=(--protocol 2.0.1 --mqtt "${CHARGESITE201_MQTT:?CHARGESITE201_MQTT=host:port needed for 2.0.1}"
        --site "${CHARGESITE201_SITE:-site-001}")
fi
"${PYTHON:-python3}" "${here}/drive.py" --sim "${sim_bin}" --url "${url}" --db "${db}" --workdir "${workdir}" "${extra[@]}"
