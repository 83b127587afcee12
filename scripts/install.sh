#!/usr/bin/env bash
# Builds erspand and erspanctl and installs them, with the systemd unit and
# an empty /etc/erspan for hostname.erspanN files. Run as root from the
# repository. PREFIX (default /usr/local) sets where the binaries go.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
prefix=${PREFIX:-/usr/local}

[ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root" >&2; exit 1; }
command -v go >/dev/null || { echo "install.sh: Go is needed to build (https://go.dev/dl)" >&2; exit 1; }

install -d "$prefix/sbin" /etc/erspan
go build -trimpath -o "$prefix/sbin/" ./cmd/erspand ./cmd/erspanctl
echo "installed $prefix/sbin/erspand and $prefix/sbin/erspanctl"
if [ -d /etc/systemd/system ]; then
	sed "s|/usr/local/sbin|$prefix/sbin|" scripts/erspand.service >/etc/systemd/system/erspand.service
	echo "installed /etc/systemd/system/erspand.service (systemctl enable --now erspand)"
fi
