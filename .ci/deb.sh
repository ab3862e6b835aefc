#!/usr/bin/env bash
# Builds chargesite's Debian packages with cargo-deb, checks them, and installs, removes and
# purges them on this machine (amd64 natively, arm64 through multiarch and qemu-user):
#
#   1. tools: lintian (apt) and cargo-deb (`cargo install --locked`) when missing;
#   2. amd64: the release binary CI's demo step builds (`cargo build --release --locked
#      --bin chargesite`, default features: it keeps `chargesite demo`), packaged with
#      `cargo deb --no-build`; the build here is a no-op after that step. Not
#      `--no-default-features` (11.5 MB instead of 14.8 MB): that is a second release build
#      of the crate on every CI run, measured at 2.5-3.7 min on 2 cores, for a package
#      that goes on PCs and test rigs, where the demo is worth having;
#   3. arm64: the gateway binary .ci/cross-aarch64.sh builds (`--profile gateway
#      --no-default-features --target aarch64-unknown-linux-gnu`, Debian's rustc-web),
#      rebuilt here with the same toolchain and environment, so a no-op after that script,
#      then `cargo deb --no-build --target ... --profile gateway`;
#   4. each .deb: `dpkg-deb -I` and `-c`, the files it must hold, and lintian: any error
#      fails, warnings are listed (debian/lintian-overrides says why some are overridden);
#   5. amd64 on this machine, without systemd as PID 1 (the maintainer scripts must cope):
#      dpkg -i; `chargesite check-config` passes on the shipped config and the unit is
#      enabled; dpkg -r keeps the config and the state (a marker in /var/lib/chargesite, in
#      DynamicUser's layout: /var/lib/private/chargesite and a symlink); dpkg -P deletes
#      both; a second round does the same with a plain /var/lib/chargesite (a static user);
#   6. arm64 on this machine (multiarch): dpkg -i, check-config under qemu-user, dpkg -P.
#
# Runs as root on Debian bookworm (CI=true, no stdin), after .ci/cross-aarch64.sh has set up
# the arm64 toolchain. It refuses to start when chargesite is installed here, or when
# /etc/chargesite or /var/lib/chargesite exist, since step 5 would purge them. The machine is
# left as it was (the tools in step 1 stay installed). CARGO_TARGET_DIR is honoured; the
# packages end up in $CARGO_TARGET_DIR/debian/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="${HOME}/.cargo/bin:${PATH}:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive
export CARGO_TERM_COLOR=never

readonly TARGET="aarch64-unknown-linux-gnu"
readonly GNU_PREFIX="aarch64-linux-gnu"
readonly PKG="chargesite"

script_start=${SECONDS}
step_name=""
step_start=${SECONDS}
timings=()
step() {
    end_step
    step_name="$*"
    step_start=${SECONDS}
    printf '\n=== deb: %s\n' "$*"
}
end_step() {
    if [[ -n "${step_name}" ]]; then
        timings+=("$(printf '%5ds  %s' "$((SECONDS - step_start))" "${step_name}")")
    fi
    step_name=""
}
note() { printf 'deb: %s\n' "$*"; }
fail() {
    printf '\ndeb: FAIL: %s\n' "$*" >&2
    exit 1
}

[[ "$(id -u)" -eq 0 ]] || fail "run as root: the packages are installed and purged on this machine"

# ---------------------------------------------------------------------------------------
# Whatever step 5 puts on the machine goes again, also when a check fails half-way.
work="$(mktemp -d /tmp/chargesite-deb.XXXXXX)"
made_private=0 # 1: this script created /var/lib/private (DynamicUser's parent directory)
# dpkg's status of the package: empty or "... not-installed" when dpkg holds nothing of it.
status() { dpkg-query -W -f='${Status}' "${PKG}" 2>/dev/null || true; }
absent() { [[ -z "$(status)" || "$(status)" == *" not-installed" ]]; }
cleanup() {
    local rc=$?
    if ! absent; then
        dpkg -P "${PKG}" </dev/null >/dev/null 2>&1 || true
    fi
    rm -rf /var/lib/chargesite /var/lib/private/chargesite /etc/chargesite
    if [[ ${made_private} -eq 1 ]]; then
        rmdir /var/lib/private 2>/dev/null || true
    fi
    rm -rf "${work}"
    exit "${rc}"
}

absent || fail "${PKG} is installed on this machine ($(status)); this script would purge it"
for p in /etc/chargesite /var/lib/chargesite /var/lib/private/chargesite; do
    if [[ -e "${p}" || -L "${p}" ]]; then
        fail "${p} exists; this script would delete it (move it away first)"
    fi
done
trap cleanup EXIT

# ---------------------------------------------------------------------------------------
readonly CARGO_DEB_VERSION="3.8.0"
step "tools: lintian, cargo-deb"
if ! command -v lintian >/dev/null 2>&1; then
    note "installing lintian"
    apt-get update -qq </dev/null
    apt-get install -y -qq --no-install-recommends lintian </dev/null >"${work}/apt.log" 2>&1 \
        || { tail -n 40 "${work}/apt.log" >&2; fail "apt-get install lintian failed"; }
fi
if ! cargo deb --version >/dev/null 2>&1; then
    note "installing cargo-deb ${CARGO_DEB_VERSION} (cargo install --locked, about 2 min on 2 cores)"
    # In a throwaway target dir of its own, not among chargesite's build products. Pinned:
    # a new release (a newer MSRV, changed defaults) must not change CI by itself.
    env -u CARGO_TARGET_DIR cargo install cargo-deb --version "${CARGO_DEB_VERSION}" --locked </dev/null
fi
lintian --version
cargo deb --version
command -v dpkg-shlibdeps >/dev/null 2>&1 || fail "no dpkg-shlibdeps (dpkg-dev): cargo-deb needs it for depends = \$auto"

target_dir="${CARGO_TARGET_DIR:-$(pwd)/target}"
out="${target_dir}/debian"
version="$(cargo metadata --no-deps --format-version 1 --locked \
    | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "chargesite"))')"
changelog_version="$(sed -n '1s/^chargesite (\([^)]*\)).*/\1/p' debian/changelog)"
[[ "${changelog_version}" == "${version}-1" ]] \
    || fail "debian/changelog's first entry is ${changelog_version:-unreadable}, the package is ${version}-1: add an entry"
mkdir -p "${out}"
rm -f "${out}/${PKG}_${version}-1_amd64.deb" "${out}/${PKG}_${version}-1_arm64.deb"

# ---------------------------------------------------------------------------------------
step "amd64: cargo build --release --locked --bin chargesite, cargo deb --no-build"
cargo build --release --locked --bin chargesite
deb_amd64="${out}/${PKG}_${version}-1_amd64.deb"
cargo deb --no-build --locked --output "${deb_amd64}"
[[ -f "${deb_amd64}" ]] || fail "cargo deb wrote no ${deb_amd64}"

# ---------------------------------------------------------------------------------------
step "arm64: the gateway build (as .ci/cross-aarch64.sh does it), cargo deb --no-build --target ${TARGET} --profile gateway"
command -v "${GNU_PREFIX}-gcc" >/dev/null 2>&1 && dpkg-query -W rustc-web >/dev/null 2>&1 \
    || fail "no arm64 toolchain: run .ci/cross-aarch64.sh first (it installs it and builds the gateway binary)"
debian_rustc="$(dpkg -L rustc-web | grep -E '/bin/rustc(-web)?$' | head -n 1)"
# The same compiler and environment as .ci/cross-aarch64.sh: anything else would rebuild
# the whole gateway binary (fat LTO, ~15 min on 2 cores) instead of finding it fresh.
RUSTC="${debian_rustc}" \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER="${GNU_PREFIX}-gcc" \
    CC_aarch64_unknown_linux_gnu="${GNU_PREFIX}-gcc" \
    AR_aarch64_unknown_linux_gnu="${GNU_PREFIX}-ar" \
    cargo build --profile gateway --locked --no-default-features --target "${TARGET}"
deb_arm64="${out}/${PKG}_${version}-1_arm64.deb"
cargo deb --no-build --locked --target "${TARGET}" --profile gateway --output "${deb_arm64}"
[[ -f "${deb_arm64}" ]] || fail "cargo deb wrote no ${deb_arm64}"

# ---------------------------------------------------------------------------------------
lintian_summary=()
inspect() { # $1: .deb, $2: Debian architecture, $3: ELF machine as readelf names it
    local deb="$1" arch="$2" machine="$3" f
    dpkg-deb -I "${deb}"
    dpkg-deb -c "${deb}" | tee "${work}/contents"
    [[ "$(dpkg-deb -f "${deb}" Architecture)" == "${arch}" ]] || fail "${deb}: Architecture is not ${arch}"
    [[ "$(dpkg-deb -f "${deb}" Depends)" == *libc6* ]] || fail "${deb}: Depends names no libc6 (depends = \$auto)"
    for f in ./usr/bin/chargesite ./usr/lib/systemd/system/chargesite.service \
        ./etc/chargesite/chargesite.toml ./usr/share/doc/chargesite/copyright \
        ./usr/share/doc/chargesite/changelog.Debian.gz; do
        grep -q " ${f}\$" "${work}/contents" || fail "${deb} holds no ${f}"
    done
    grep -E -q '^-rwxr-xr-x (root/root|0/0) .* \./usr/bin/chargesite$' "${work}/contents" \
        || fail "${deb}: /usr/bin/chargesite is not root:root 0755"
    rm -rf "${work}/x" "${work}/control"
    dpkg-deb -x "${deb}" "${work}/x"
    dpkg-deb -e "${deb}" "${work}/control"
    readelf -h "${work}/x/usr/bin/chargesite" | grep -q "Machine:.*${machine}" \
        || fail "${deb}: /usr/bin/chargesite is not a ${machine} binary"
    cmp -s "${work}/x/usr/lib/systemd/system/chargesite.service" systemd/chargesite.service \
        || fail "${deb}: the unit differs from systemd/chargesite.service"
    grep -qx '/etc/chargesite/chargesite.toml' "${work}/control/conffiles" \
        || fail "${deb}: /etc/chargesite/chargesite.toml is not a conffile"
    for f in postinst prerm postrm; do
        [[ -x "${work}/control/${f}" ]] || fail "${deb}: no ${f} maintainer script"
        sh -n "${work}/control/${f}" || fail "${deb}: ${f} is not valid sh"
    done
    grep -q 'deb-systemd-helper enable' "${work}/control/postinst" || fail "${deb}: postinst does not enable the unit"
    grep -q 'rm -rf /var/lib/chargesite /var/lib/private/chargesite' "${work}/control/postrm" \
        || fail "${deb}: postrm does not delete the state on purge"
    if grep -E -q 'adduser|useradd|systemd-sysusers' "${work}/control"/*; then
        fail "${deb}: a maintainer script creates a user (CONTRACT §6: DynamicUser, no user)"
    fi
    note "$(basename "${deb}"): $(stat -c %s "${deb}") bytes, installed size $(dpkg-deb -f "${deb}" Installed-Size) KiB, Depends: $(dpkg-deb -f "${deb}" Depends)"

    echo "+ lintian $(basename "${deb}")"
    local rc=0
    lintian --fail-on error --display-level '>=pedantic' --show-overrides --tag-display-limit 0 \
        "${deb}" >"${work}/lintian" 2>&1 || rc=$?
    cat "${work}/lintian"
    local errors warnings
    errors="$(grep -c '^E: ' "${work}/lintian" || true)"
    warnings="$(grep -c '^W: ' "${work}/lintian" || true)"
    lintian_summary+=("$(printf '%s: %s error(s), %s warning(s)' "$(basename "${deb}")" "${errors}" "${warnings}")")
    [[ ${rc} -eq 0 && ${errors} -eq 0 ]] || fail "lintian reported errors in ${deb} (exit ${rc})"
}

step "inspect the amd64 package: dpkg-deb -I/-c, lintian"
inspect "${deb_amd64}" amd64 'X86-64'

step "inspect the arm64 package: dpkg-deb -I/-c, lintian"
inspect "${deb_arm64}" arm64 'AArch64'

# ---------------------------------------------------------------------------------------
round() { # $1: dynamic (DynamicUser's private dir + symlink) or static (a plain directory)
    local layout="$1"
    dpkg -i "${deb_amd64}" </dev/null
    [[ "$(status)" == "install ok installed" ]] || fail "dpkg -i: the package is $(status)"
    /usr/bin/chargesite --version
    /usr/bin/chargesite check-config --config /etc/chargesite/chargesite.toml \
        || fail "the shipped /etc/chargesite/chargesite.toml does not pass check-config"
    # No CHARGESITE_CONFIG here: the default path is the packaged file.
    env -u CHARGESITE_CONFIG /usr/bin/chargesite check-config >/dev/null \
        || fail "check-config without --config does not find /etc/chargesite/chargesite.toml"
    if command -v deb-systemd-helper >/dev/null 2>&1; then
        [[ -L /etc/systemd/system/multi-user.target.wants/chargesite.service ]] \
            || fail "the unit is not enabled (no multi-user.target.wants symlink)"
        note "enabled: $(readlink /etc/systemd/system/multi-user.target.wants/chargesite.service)"
    fi

    # What the service would have written by now.
    if [[ "${layout}" == dynamic ]]; then
        if [[ ! -d /var/lib/private ]]; then
            made_private=1
            install -d -m 0700 /var/lib/private
        fi
        install -d -m 0700 /var/lib/private/chargesite
        ln -s private/chargesite /var/lib/chargesite
    else
        install -d -m 0700 /var/lib/chargesite
    fi
    echo "round ${layout}" >/var/lib/chargesite/marker
    : >/var/lib/chargesite/chargesite.db
    echo "# edited on site" >>/etc/chargesite/chargesite.toml

    # A reinstall (what an upgrade does) keeps the edited conffile and the state.
    dpkg -i "${deb_amd64}" </dev/null
    grep -q '^# edited on site$' /etc/chargesite/chargesite.toml || fail "a reinstall replaced the edited config"
    [[ -f /var/lib/chargesite/marker ]] || fail "a reinstall lost /var/lib/chargesite/marker"

    dpkg -r "${PKG}" </dev/null
    [[ "$(status)" == "deinstall ok config-files" ]] || fail "dpkg -r: the package is $(status)"
    [[ ! -e /usr/bin/chargesite ]] || fail "dpkg -r left /usr/bin/chargesite"
    [[ ! -e /usr/lib/systemd/system/chargesite.service ]] || fail "dpkg -r left the unit"
    grep -q '^# edited on site$' /etc/chargesite/chargesite.toml || fail "dpkg -r removed or replaced the config"
    [[ "$(cat /var/lib/chargesite/marker)" == "round ${layout}" ]] || fail "dpkg -r deleted /var/lib/chargesite/marker"
    [[ -f /var/lib/chargesite/chargesite.db ]] || fail "dpkg -r deleted the database"
    note "dpkg -r (${layout}): config and state kept"

    dpkg -P "${PKG}" </dev/null
    absent || fail "dpkg -P: the package is $(status)"
    [[ ! -e /etc/chargesite/chargesite.toml ]] || fail "dpkg -P left the conffile"
    [[ ! -e /etc/chargesite ]] || fail "dpkg -P left /etc/chargesite"
    [[ ! -e /var/lib/chargesite && ! -L /var/lib/chargesite ]] || fail "dpkg -P left /var/lib/chargesite"
    [[ ! -e /var/lib/private/chargesite ]] || fail "dpkg -P left /var/lib/private/chargesite"
    [[ ! -e /etc/systemd/system/multi-user.target.wants/chargesite.service ]] || fail "dpkg -P left the unit enabled"
    [[ ! -L /etc/systemd/system/chargesite.service ]] || fail "dpkg -P left the unit masked"
    if compgen -G '/var/lib/systemd/deb-systemd-helper-*/*chargesite*' >/dev/null \
        || compgen -G '/var/lib/systemd/deb-systemd-helper-*/*/*chargesite*' >/dev/null; then
        fail "dpkg -P left deb-systemd-helper state for the unit"
    fi
    note "dpkg -P (${layout}): config and state deleted"
}

step "amd64 on this machine: dpkg -i, check-config, dpkg -r, dpkg -P (DynamicUser's layout)"
if [[ -d /run/systemd/system ]]; then
    note "systemd is running here: postinst reloads it (the unit is enabled, not started)"
else
    note "systemd is not PID 1 here: the maintainer scripts skip daemon-reload and stop"
fi
round dynamic

step "amd64 on this machine, again with a plain /var/lib/chargesite (a static user)"
round static

step "arm64 on this machine (multiarch, under qemu-user): dpkg -i, check-config, dpkg -P"
# .ci/cross-aarch64.sh added the arm64 architecture and libc6:arm64, so the gateway package
# installs here as it would on a gateway; its binary runs under qemu-aarch64-static.
dpkg -i "${deb_arm64}" </dev/null
[[ "$(status)" == "install ok installed" ]] || fail "dpkg -i (arm64): the package is $(status)"
[[ "$(dpkg-query -W -f='${Architecture}' "${PKG}")" == arm64 ]] || fail "the installed package is not arm64"
timeout 120 qemu-aarch64-static /usr/bin/chargesite check-config --config /etc/chargesite/chargesite.toml \
    || fail "the arm64 binary does not pass check-config on the shipped config"
dpkg -P "${PKG}" </dev/null
absent || fail "dpkg -P (arm64): the package is $(status)"
[[ ! -e /etc/chargesite && ! -e /usr/bin/chargesite ]] || fail "dpkg -P (arm64) left files behind"
if [[ ${made_private} -eq 1 ]]; then
    rmdir /var/lib/private
    made_private=0
fi
end_step

# ---------------------------------------------------------------------------------------
printf '\n=== deb: lintian\n'
printf '%s\n' "${lintian_summary[@]}"
printf '\n=== deb: timings\n'
printf '%s\n' "${timings[@]}"
printf '%5ds  total\n' "$((SECONDS - script_start))"
printf '\ndeb: ok, %s (%s bytes) and %s (%s bytes)\n' \
    "$(basename "${deb_amd64}")" "$(stat -c %s "${deb_amd64}")" \
    "$(basename "${deb_arm64}")" "$(stat -c %s "${deb_arm64}")"
