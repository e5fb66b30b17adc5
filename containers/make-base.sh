#!/usr/bin/env bash
# Make a local Debian base image with debootstrap, for machines that cannot pull from a
# container registry (the images' BASE_IMAGE build argument then points at it).
#
# Usage: containers/make-base.sh IMAGE [SUITE] [CACHE_DIR]
#   IMAGE      name to give the image, e.g. localhost/dev8-os:trixie
#   SUITE      Debian suite (default: trixie)
#   CACHE_DIR  where the root filesystem tarball is kept between runs (default:
#              /var/cache/dev8-images); a cached tarball is imported without debootstrap.
#
# The result is close to the official `debian:SUITE-slim`: a minbase system with no apt lists or
# package cache, and dpkg told to skip documentation, man pages and translations as slim does.
# Needs root, debootstrap (only when nothing is cached) and podman.
set -euo pipefail

image=${1:?usage: make-base.sh IMAGE [SUITE] [CACHE_DIR]}
suite=${2:-trixie}
cache=${3:-/var/cache/dev8-images}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security_mirror=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
tarball=$cache/debian-$suite-minbase.tar

log() { printf 'make-base: %s\n' "$*" >&2; }

if podman image exists "$image"; then
    log "$image already exists"
    exit 0
fi

if [[ ! -s $tarball ]]; then
    command -v debootstrap >/dev/null || { log "error: debootstrap is not installed"; exit 1; }
    mkdir -p "$cache"
    rootfs=$(mktemp -d "$cache/.rootfs.XXXXXX")
    trap 'rm -rf "$rootfs" "$tarball.tmp"' EXIT
    start=$(date +%s)
    log "debootstrap $suite from $mirror"
    debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
        || { tail -20 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
    rm -f "$rootfs.log"

    # What debian:*-slim does: keep documentation and translations out of every later install.
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
EOF
    # ... and keeps no downloaded packages or translations after apt runs.
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
    find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
    find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias \
        -exec rm -rf {} +
    rm -f "$rootfs"/etc/apt/sources.list
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security_mirror
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* \
        "$rootfs"/tmp/* "$rootfs"/root/.bash_history
    : >"$rootfs/etc/machine-id"
    tar --numeric-owner --xattrs -C "$rootfs" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    log "made $tarball in $(($(date +%s) - start)) s ($(du -sh "$tarball" | cut -f1))"
fi

podman import --quiet \
    --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$tarball" "$image" >/dev/null
log "imported $image"
