#!/usr/bin/env bash
# Runs every test of the project: formatting, go vet, staticcheck, the
# scripts' shellcheck, the unit and network-namespace tests under the race
# detector, and a short fuzz run.
# Run as root on Debian (the namespace tests create namespaces, veths, TAPs);
# it installs what is missing. Usage: scripts/test.sh [--fuzztime N]
#
# The fuzz budget is a count of executions per target (go test's Nx): a
# duration (20s) makes Go 1.26's fuzzing coordinator fail a target now
# and then with "context deadline exceeded" and no failing input, as the
# deadline races its workers' shutdown (golang/go#75804, fixed in Go
# 1.27). 600000 executions take ~20 s per target on this project's
# 2-core machine. A duration still works, with that risk.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

fuzztime=600000x
while [ $# -gt 0 ]; do
	case "$1" in
	--fuzztime) fuzztime=$2; shift 2 ;;
	*) echo "usage: $0 [--fuzztime EXECUTIONS (600000x) or DURATION]" >&2; exit 2 ;;
	esac
done

gopath=$(go env GOPATH 2>/dev/null || echo "$HOME/go")
export PATH="$PATH:/usr/local/go/bin:$gopath/bin"
STATICCHECK_VERSION=v0.8.2

step() { printf '\n== %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
	echo "scripts/test.sh: run as root: the end-to-end tests create network namespaces, veth pairs and TAP devices" >&2
	exit 1
fi

step "tools"
# tshark: the e2e tests cross-check the wire with Wireshark; nft: a
# firewall refusing sends (TestSendRefusedByFirewall) and the ring's
# firewall test; shellcheck: the scripts' own check.
need_tools ip:iproute2 tcpdump:tcpdump tshark:tshark nft:nftables shellcheck:shellcheck
command -v go >/dev/null || { echo "Go is not installed (expected /usr/local/go)" >&2; exit 1; }
go version
if ! command -v staticcheck >/dev/null || ! staticcheck -version | grep -q "${STATICCHECK_VERSION#v}"; then
	go install "honnef.co/go/tools/cmd/staticcheck@${STATICCHECK_VERSION}"
fi

step "gofmt"
mapfile -t gofiles < <(git ls-files '*.go' 2>/dev/null || find . -name '*.go')
unformatted=$(gofmt -l "${gofiles[@]}")
if [ -n "$unformatted" ]; then
	echo "not gofmt-formatted:"; echo "$unformatted"; exit 1
fi

step "go vet"
go vet ./...

step "staticcheck"
staticcheck ./...

step "shellcheck"
shellcheck -x scripts/*.sh .ci/run

step "namespaces left by earlier test runs"
remove_test_leftovers

step "go test -race (unit and network-namespace tests)"
go test -race -count=1 -timeout 15m ./...

step "fuzz ($fuzztime each)"
for f in FuzzDecode FuzzParseIPv4; do
	go test -run='^$' -fuzz="^$f\$" -fuzztime="$fuzztime" ./erspan
done

step "all tests passed"
