#!/usr/bin/env bash
# Build Steward's one OCI image for every role with buildah (no registry needed: the image
# starts FROM scratch, or from a Debian root made by debootstrap for --full).
#
#   deploy/image/build.sh --steward BIN --nats-server BIN --tag NAME [--full] [--mirror URL]
#
# The image holds /usr/bin/steward, /usr/bin/nats-server and the shared libraries they link
# (`ldd`), /etc/passwd and /etc/group with the `steward` user (uid/gid 10001) it runs as, the
# CA bundle when the build machine has one, and the data volume /var/lib/steward (owned by
# that user; XDG_STATE_HOME=/var/lib makes it every role's default data folder, so `steward up`
# in the image writes its NATS store, identities and context.json there). The entrypoint is
# the steward binary: the arguments name the role (`up`, `server`, `edge`, `runtime`, ...).
#
# --full starts from a minimal Debian bookworm root (debootstrap, from --mirror, default
# deb.debian.org) and adds python3 and Debian's ansible-core with apt: the `playbook` worker
# runs `ansible-playbook`.
#
# Binaries are copied and the copies stripped (when `strip` is installed); the sources are not
# touched. Prints the image id on the last line of stdout; the size and what went in on stderr.
# Needs root (buildah mount of a rootful store).
set -euo pipefail

STEWARD_UID=10001
DATA=/var/lib/steward

steward="" nats="" tag="" full=0 mirror="http://deb.debian.org/debian"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --steward) steward="$2"; shift 2 ;;
    --nats-server) nats="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --full) full=1; shift ;;
    --mirror) mirror="$2"; shift 2 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
log() { printf 'image: %s\n' "$*" >&2; }
die() { printf 'image: error: %s\n' "$*" >&2; exit 1; }
[[ -n "$steward" && -n "$nats" && -n "$tag" ]] || die "usage: build.sh --steward BIN --nats-server BIN --tag NAME [--full]"
[[ -x "$steward" ]] || die "$steward is not an executable (build it first: cargo build --release -p steward)"
[[ -x "$nats" ]] || die "$nats is not an executable (deploy/install-nats-server.sh installs one)"
command -v buildah >/dev/null || die "buildah is not installed (apt-get install buildah, or deploy/dev image)"
[[ $(id -u) -eq 0 ]] || die "run as root (buildah mount needs a rootful container store)"
if [[ $full -eq 1 ]]; then command -v debootstrap >/dev/null || die "--full needs debootstrap (apt-get install debootstrap)"; fi

ctr=""
mnt=""
cleanup() {
  if [[ -n "$ctr" ]]; then
    buildah umount "$ctr" >/dev/null 2>&1 || true
    buildah rm "$ctr" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

ctr=$(buildah from scratch)
mnt=$(buildah mount "$ctr")

if [[ $full -eq 1 ]]; then
  log "debootstrap bookworm (minbase) from $mirror, then python3 and ansible-core with apt"
  debootstrap --variant=minbase bookworm "$mnt" "$mirror" >&2
  cp /etc/resolv.conf "$mnt/etc/resolv.conf"
  # apt in the new root, with its own /proc and /dev in a private mount namespace (they go
  # away with it).
  unshare --mount --propagation private -- /bin/sh -ec '
    mount -t proc proc "$1/proc"; mount --bind /dev "$1/dev"
    chroot "$1" /bin/sh -ec "apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ca-certificates python3 ansible-core
      apt-get clean"' sh "$mnt" >&2
  : >"$mnt/etc/resolv.conf"
  rm -rf "$mnt"/var/cache/apt/archives/*.deb "$mnt"/var/lib/apt/lists/* "$mnt"/usr/share/doc/* \
    "$mnt"/usr/share/man/* "$mnt"/usr/share/locale/* "$mnt"/var/log/*
  grep -q '^steward:' "$mnt/etc/group" || echo "steward:x:${STEWARD_UID}:" >>"$mnt/etc/group"
  grep -q '^steward:' "$mnt/etc/passwd" \
    || echo "steward:x:${STEWARD_UID}:${STEWARD_UID}:Steward:${DATA}:/usr/sbin/nologin" >>"$mnt/etc/passwd"
else
  mkdir -p "$mnt"/{etc,proc,dev,sys,tmp,usr/bin,var/lib}
  chmod 1777 "$mnt/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nsteward:x:%s:%s:Steward:%s:/sbin/nologin\n' \
    "$STEWARD_UID" "$STEWARD_UID" "$DATA" >"$mnt/etc/passwd"
  printf 'root:x:0:\nsteward:x:%s:\n' "$STEWARD_UID" >"$mnt/etc/group"
  printf 'hosts: files dns\n' >"$mnt/etc/nsswitch.conf"
  printf '127.0.0.1 localhost\n::1 localhost\n' >"$mnt/etc/hosts"
  if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
    mkdir -p "$mnt/etc/ssl/certs"
    cp /etc/ssl/certs/ca-certificates.crt "$mnt/etc/ssl/certs/"
  fi
  # The shared libraries both binaries link, at the paths the loader looks for them.
  for bin in "$steward" "$nats"; do
    # A static binary (the official nats-server) has none: ldd fails and lists nothing.
    for lib in $({ ldd "$bin" 2>/dev/null || true; } | grep -o '/[^ ]*' || true); do
      [[ -e "$mnt$lib" ]] || cp --parents -L "$lib" "$mnt/"
    done
  done
fi

install -m 0755 "$steward" "$mnt/usr/bin/steward"
install -m 0755 "$nats" "$mnt/usr/bin/nats-server"
if command -v strip >/dev/null; then
  strip --strip-all "$mnt/usr/bin/steward" "$mnt/usr/bin/nats-server"
fi
mkdir -p "$mnt$DATA"
chown "$STEWARD_UID:$STEWARD_UID" "$mnt$DATA"
chmod 0750 "$mnt$DATA"

version=$("$mnt/usr/bin/steward" version 2>/dev/null | awk '{print $NF}' || true)
bytes=$(du -sb "$mnt" | cut -f1)

buildah config \
  --user "$STEWARD_UID:$STEWARD_UID" \
  --env PATH=/usr/local/bin:/usr/bin:/bin \
  --env XDG_STATE_HOME=/var/lib \
  --env HOME="$DATA" \
  --env STEWARD_NATS_SERVER=/usr/bin/nats-server \
  --workingdir "$DATA" \
  --volume "$DATA" \
  --port 4222 --port 7422 \
  --entrypoint '["/usr/bin/steward"]' \
  --cmd '["up"]' \
  --label org.opencontainers.image.title=steward \
  --label org.opencontainers.image.description="Steward: every role (up, server, edge, runtime, node, CLI) from one image" \
  --label org.opencontainers.image.version="${version:-unknown}" \
  --label io.steward.variant="$([[ $full -eq 1 ]] && echo full || echo slim)" \
  "$ctr"
buildah umount "$ctr" >/dev/null
id=$(buildah commit --quiet --rm "$ctr" "$tag")
ctr=""
log "built $tag ($([[ $full -eq 1 ]] && echo full || echo slim), steward ${version:-?}): $((bytes / 1024 / 1024)) MiB uncompressed ($bytes bytes)"
echo "$id"
