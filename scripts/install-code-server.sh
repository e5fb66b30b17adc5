#!/usr/bin/env bash
# Install code-server offline from the npm registry alone (no GitHub downloads).
#
# Usage: scripts/install-code-server.sh [PREFIX]     (default PREFIX: /opt/code-server)
#
# Why not `npm install -g code-server`: its postinstall runs nested installs that fail offline
# and @vscode/ripgrep downloads rg from GitHub. So we unpack the package, install its
# dependencies without scripts, build the native modules from source against the local Node
# headers, link ripgrep to Debian's `rg`, and recreate the links that postinstall.sh makes.
#
# 4.100.3 is the newest code-server whose engines accept Node 20.
# Idempotent: does nothing when PREFIX/bin/code-server already reports the version.
# The wrapper PREFIX/bin/code-server is written last, so its presence means a complete install.
set -euo pipefail

VERSION=4.100.3
PREFIX=$(realpath -m "${1:-/opt/code-server}")  # absolute: the wrapper records it
APT_PACKAGES=(libkrb5-dev ripgrep build-essential python3 pkg-config)
NATIVE_VSCODE_MODULES=(@vscode/spdlog native-watchdog @parcel/watcher kerberos @vscode/deviceid node-pty)

log() { printf 'install-code-server: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# `--version` still writes a default config (with a generated password) and a log dir into
# $HOME: point it at a throwaway place.
installed_version() {
    local scratch out
    scratch=$(mktemp -d)
    out=$(HOME=$scratch XDG_CONFIG_HOME=$scratch XDG_DATA_HOME=$scratch \
        "$1" --config /dev/null --version 2>/dev/null) || true
    rm -rf "$scratch"
    printf '%s\n' "$out" | awk '/^[0-9]+\.[0-9]+\.[0-9]+ / { print $1; exit }'
}

if [[ -x $PREFIX/bin/code-server && $(installed_version "$PREFIX/bin/code-server") == "$VERSION" ]]
then
    log "code-server $VERSION already installed in $PREFIX"
    exit 0
fi

start=$(date +%s)

node_bin=$(command -v node) || die "node is required (Node 20)"
command -v npm >/dev/null || die "npm is required"
node_major=$("$node_bin" -p 'process.versions.node.split(".")[0]')
[[ $node_major == 20 ]] || die "code-server $VERSION needs Node 20, found $("$node_bin" --version)"

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
        || missing+=("$pkg")
done
if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || die "missing packages (run as root or install them): ${missing[*]}"
    log "installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
rg_bin=$(command -v rg) || die "rg (ripgrep) not found after install"

# Build native modules from source, against the headers of the Node we run with: no prebuilt
# binary downloads (node-pre-gyp, prebuild-install) and no header download (node-gyp).
export npm_config_build_from_source=true
node_prefix=$(dirname "$(dirname "$(readlink -f "$node_bin")")")
if [[ -f $node_prefix/include/node/node.h ]]; then
    export npm_config_nodedir=$node_prefix
fi
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false

mkdir -p "$PREFIX/lib" "$PREFIX/bin"
staging=$(mktemp -d "$PREFIX/lib/.staging.XXXXXX")
trap 'rm -rf "$staging"' EXIT

log "fetching code-server@$VERSION"
npm pack --silent --pack-destination "$staging" "code-server@$VERSION" >/dev/null
tar -xzf "$staging/code-server-$VERSION.tgz" -C "$staging"
pkg=$staging/package

log "installing code-server dependencies"
(cd "$pkg" && npm install --omit=dev --ignore-scripts --no-save --loglevel=error >/dev/null)
(cd "$pkg" && npm rebuild argon2 --loglevel=error >/dev/null)
compgen -G "$pkg/node_modules/argon2/lib/binding/*/argon2.node" >/dev/null \
    || die "argon2 native module was not built"

log "installing VS Code dependencies"
vscode=$pkg/lib/vscode
(cd "$vscode" && npm install --omit=dev --ignore-scripts --no-save --loglevel=error >/dev/null)
for module in "${NATIVE_VSCODE_MODULES[@]}"; do
    # node-pty's post-build step (copying helpers for other platforms) can fail after
    # pty.node is built, so judge every module by its built file, not by npm's status.
    (cd "$vscode" && npm rebuild "$module" --loglevel=error >/dev/null 2>&1) \
        || log "npm rebuild $module reported an error; checking its binary"
done
for module in "${NATIVE_VSCODE_MODULES[@]}"; do
    found=$(find "$vscode/node_modules/$module" -name '*.node' -path '*Release*' -print -quit)
    [[ -n $found ]] || die "native module $module was not built"
done
[[ -f $vscode/node_modules/node-pty/build/Release/pty.node ]] || die "node-pty was not built"
# Built is not enough: each must load into this Node (ABI, libkrb5, libstdc++).
modules=("$pkg/node_modules/argon2")
for module in "${NATIVE_VSCODE_MODULES[@]}"; do modules+=("$vscode/node_modules/$module"); done
"$node_bin" -e 'for (const m of process.argv.slice(1)) require(m)' "${modules[@]}" \
    || die "a native module does not load"

# @vscode/ripgrep would download rg from GitHub: use Debian's instead.
mkdir -p "$vscode/node_modules/@vscode/ripgrep/bin"
ln -sfn "$rg_bin" "$vscode/node_modules/@vscode/ripgrep/bin/rg"

# The links postinstall.sh makes (Linux flavour).
ln -sfn node_modules "$vscode/node_modules.asar"
ln -sfn code-linux.sh "$vscode/bin/remote-cli/code-server"
ln -sfn browser-linux.sh "$vscode/bin/helpers/browser.sh"

log "installing built-in extensions' dependencies"
(cd "$vscode/extensions" && npm install --omit=dev --ignore-scripts --no-save --loglevel=error >/dev/null)
(cd "$vscode/extensions" && "$node_bin" ./postinstall.mjs >/dev/null)  # trims typescript

rm -f "$staging/code-server-$VERSION.tgz"
dest=$PREFIX/lib/code-server-$VERSION
rm -rf "$dest"
mv "$pkg" "$dest"

wrapper=$PREFIX/bin/code-server
cat >"$wrapper.tmp" <<EOF
#!/bin/sh
# code-server $VERSION, installed by dev8's scripts/install-code-server.sh
exec "$node_bin" "$dest/out/node/entry.js" "\$@"
EOF
chmod 0755 "$wrapper.tmp"
mv -f "$wrapper.tmp" "$wrapper"

got=$(installed_version "$wrapper")
[[ $got == "$VERSION" ]] || die "installed code-server does not report $VERSION (got '$got')"
log "installed code-server $VERSION in $PREFIX in $(($(date +%s) - start)) s ($(du -sh "$dest" | cut -f1))"
