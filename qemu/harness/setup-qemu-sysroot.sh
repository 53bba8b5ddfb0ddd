#!/usr/bin/env bash
# QEMU 11.1 (the first Debian QEMU with the vfio-user-pci client device) for a bookworm host:
# a private sysroot built from trixie-backports .debs with a private apt state (nothing is
# installed on the host, its libc6 is untouched). Idempotent; prints the wrapper's path.
#   $VGPU_CACHE/qemu-sysroot/qemu  runs the sysroot's QEMU through the sysroot's own ld.so.
set -euo pipefail
# Only the final path goes to stdout (callers capture it); everything else to stderr.
exec 3>&1 1>&2
CACHE="${VGPU_CACHE:-$HOME/.cache/vgpu}"
DEST="$CACHE/qemu-sysroot"
WORK="$CACHE/qemu-aptroot"
# One setup at a time (tests boot guests in parallel); the others wait, then find it done.
mkdir -p "$CACHE"
exec 9>"$CACHE/.qemu-sysroot.lock"
flock -n 9 || { echo "qemu-sysroot: waiting for another setup to finish" >&2; flock 9; }
if [ -x "$DEST/qemu" ] && [ -f "$DEST/.complete" ]; then echo "$DEST/qemu" >&3; exit 0; fi
log() { echo "qemu-sysroot: $*" >&2; }
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
if ! grep -aq '(13/trixie)' "$KEYRING" 2>/dev/null; then
  log "updating debian-archive-keyring (trixie keys)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debian-archive-keyring >/dev/null
fi
MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$MIRROR" ] || MIRROR=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)
rm -rf "$DEST" && mkdir -p "$WORK"/{etc/sources.list.d,etc/preferences.d,lists/partial,cache/archives/partial} "$DEST"
: > "$WORK/status"
: > "$WORK/etc/sources.list"
cat > "$WORK/etc/sources.list.d/trixie.sources" <<EOS
Types: deb
URIs: $MIRROR
Suites: trixie trixie-updates trixie-backports
Components: main
Signed-By: $KEYRING
EOS
APT=(apt-get -q
  -o Dir::Etc::sourcelist="$WORK/etc/sources.list" -o Dir::Etc::sourceparts="$WORK/etc/sources.list.d"
  -o Dir::Etc::preferences="$WORK/etc/preferences" -o Dir::Etc::preferencesparts="$WORK/etc/preferences.d"
  -o Dir::State::Lists="$WORK/lists" -o Dir::State::status="$WORK/status"
  -o Dir::Cache="$WORK/cache" -o Dir::Cache::archives="$WORK/cache/archives"
  -o Debug::NoLocking=1 -o APT::Architecture=amd64 -o APT::Architectures::=amd64
  -o APT::Install-Recommends=0 -o APT::Install-Suggests=0)
log "resolving and downloading QEMU 11 from trixie-backports"
"${APT[@]}" update >"$WORK/update.log" 2>&1 || { cat "$WORK/update.log" >&2; exit 1; }
"${APT[@]}" -y -t trixie-backports install --download-only qemu-system-x86 qemu-system-data seabios ipxe-qemu \
  >"$WORK/install.log" 2>&1 || { tail -40 "$WORK/install.log" >&2; exit 1; }
for deb in "$WORK"/cache/archives/*.deb; do dpkg -x "$deb" "$DEST"; done
for d in lib lib64 bin sbin; do [ -e "$DEST/$d" ] || ln -s "usr/$d" "$DEST/$d"; done
# QEMU's module dir is compiled in as the host's path: a host QEMU's modules would be loaded into
# 11.1 and assert. Overwrite the string (same length); the wrapper sets QEMU_MODULE_DIR instead.
perl -0777 -pi -e 's{/usr/lib/x86_64-linux-gnu/qemu\0}{/nonexistent/qemu-sysroot-mods\0}g' "$DEST/usr/bin/qemu-system-x86_64"
cat > "$DEST/qemu" <<'EOW'
#!/bin/sh
# Runs the sysroot's QEMU with the sysroot's own glibc; no host library is loaded.
R=$(cd "$(dirname "$0")" && pwd)
export QEMU_MODULE_DIR=$R/usr/lib/x86_64-linux-gnu/qemu
exec "$R/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" \
  --library-path "$R/usr/lib/x86_64-linux-gnu:$R/usr/lib/x86_64-linux-gnu/pulseaudio:$R/usr/lib" \
  "$R/usr/bin/qemu-system-x86_64" -L "$R/usr/share/qemu" -L "$R/usr/share/seabios" "$@"
EOW
chmod +x "$DEST/qemu"
"$DEST/qemu" --version | head -1 >&2
touch "$DEST/.complete"
echo "$DEST/qemu" >&3
