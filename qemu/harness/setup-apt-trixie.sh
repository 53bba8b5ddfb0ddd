#!/usr/bin/env bash
# Makes trixie / trixie-backports packages DOWNLOADABLE on a bookworm machine without ever
# installing them by accident: same mirror as the machine's own sources, pin priority 1. Use
# them only through `apt-get download` + `dpkg -x` (an install from trixie would upgrade libc6).
set -euo pipefail
src=/etc/apt/sources.list.d/vgpu-trixie-download-only.sources
if [ ! -f "$src" ]; then
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)
  cat > "$src" <<EOS
Types: deb
URIs: $mirror
Suites: trixie trixie-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOS
  cat > /etc/apt/preferences.d/vgpu-trixie-download-only <<'EOP'
Package: *
Pin: release n=trixie
Pin-Priority: 1

Package: *
Pin: release n=trixie-backports
Pin-Priority: 1
EOP
fi
# The trixie keys must be known to apt.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debian-archive-keyring >/dev/null 2>&1 || true
apt-get update -qq
