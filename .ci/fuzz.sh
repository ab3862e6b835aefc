#!/usr/bin/env bash
# Fuzzing, bounded (see fuzz/README.md): builds the cargo-fuzz targets in fuzz/ with the
# nightly toolchain, then runs each for FUZZ_SECONDS (default 30) from its committed seed
# corpus. Fails if any target crashes (a panic, a broken invariant, a timeout or OOM).
#
# New inputs a run discovers go to a throwaway directory, never into fuzz/corpus (the
# committed seeds stay small). A crashing input is kept in fuzz/artifacts/<target>/.
#   FUZZ_SECONDS     seconds per target (default 30)
#   FUZZ_SANITIZER   none (default) or address: the targets are safe Rust; AddressSanitizer
#                    would only instrument the C of SQLite, mimalloc and ring, which no
#                    target reaches, at the cost of minutes of build
#   FUZZ_TARGET_DIR  cargo target dir for the instrumented build (default fuzz/target)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}/fuzz"
export PATH="${HOME}/.cargo/bin:${PATH}"
export CARGO_TERM_COLOR=never

seconds="${FUZZ_SECONDS:-30}"
target_dir="${FUZZ_TARGET_DIR:-${repo_root}/fuzz/target}"
flags=(--sanitizer "${FUZZ_SANITIZER:-none}" --target-dir "${target_dir}")

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
cargo fuzz --version

start="${SECONDS}"
cargo +nightly fuzz build "${flags[@]}"
echo "fuzz: build took $((SECONDS - start)) s"

work="$(mktemp -d -t chargesite-fuzz.XXXXXX)"
trap 'rm -rf "${work}"' EXIT

failed=()
for target in $(cargo +nightly fuzz list); do
    mkdir -p "${work}/${target}"
    start="${SECONDS}"
    # The first corpus directory receives new inputs: the throwaway one.
    if cargo +nightly fuzz run "${flags[@]}" "${target}" "${work}/${target}" "corpus/${target}" -- \
        -max_total_time="${seconds}" -timeout=10 -print_final_stats=1 \
        >"${work}/${target}.log" 2>&1; then
        outcome=ok
    else
        outcome=FAILED
        failed+=("${target}")
        tail -n 60 "${work}/${target}.log"
    fi
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "${work}/${target}.log")"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "${work}/${target}.log")"
    echo "fuzz: ${target}: ${outcome} in $((SECONDS - start)) s, ${execs:-?} execs, ${rate:-?} exec/s"
done

if ((${#failed[@]})); then
    echo "fuzz: crashed: ${failed[*]} (inputs in fuzz/artifacts/)"
    exit 1
fi
echo "fuzz: all targets ran ${seconds} s without a crash"
