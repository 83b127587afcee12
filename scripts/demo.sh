#!/usr/bin/env bash
# The main job end to end, no switch needed: a "switch" network namespace
# mirrors frames as ERSPAN to a "collector" namespace, where erspand
# terminates the tunnels into erspan0 (one switch, one session) and erspan1
# (a collector for any switch and session); tcpdump on erspan0 shows the
# mirrored frames, then erspanctl shows the interfaces and counters.
# Run as root on Debian. Everything it makes is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

[ "$(id -u)" -eq 0 ] || { echo "demo.sh: run as root (it creates network namespaces)" >&2; exit 1; }
for tool in ip tcpdump; do
	command -v $tool >/dev/null && continue
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 tcpdump >/dev/null
	break
done

SW=erspan-demo-switch
COL=erspan-demo-collector
work=$(mktemp -d /tmp/erspan-demo.XXXXXX)
sock=$work/run/erspand.sock
tcpdump_pid=

cleanup() {
	[ -n "$tcpdump_pid" ] && kill "$tcpdump_pid" 2>/dev/null || true
	if [ -S "$sock" ]; then
		pid=$(ip netns pids $COL 2>/dev/null | while read -r p; do
			grep -qa "erspand" /proc/$p/cmdline 2>/dev/null && echo "$p"; done || true)
		[ -n "$pid" ] && kill $pid 2>/dev/null || true
	fi
	ip netns del $SW 2>/dev/null || true
	ip netns del $COL 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

say "building erspand, erspanctl and the demo switch (ersend)"
go build -o "$work/bin/" ./cmd/erspand ./cmd/erspanctl ./scripts/ersend

say "two hosts: $SW (192.0.2.1, 2001:db8::1) and $COL (192.0.2.2, 2001:db8::2) over a veth"
ip netns del $SW 2>/dev/null || true
ip netns del $COL 2>/dev/null || true
ip netns add $SW
ip netns add $COL
for ns in $SW $COL; do
	# No duplicate address detection: until the link-local address has
	# passed it, the kernel ignores neighbour solicitations (about 1s).
	ip netns exec $ns sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
done
ip link add veth-sw netns $SW type veth peer name veth-col netns $COL
ip -n $SW addr add 192.0.2.1/24 dev veth-sw
ip -n $SW addr add 2001:db8::1/64 dev veth-sw nodad
ip -n $COL addr add 192.0.2.2/24 dev veth-col
ip -n $COL addr add 2001:db8::2/64 dev veth-col nodad
for ns in $SW $COL; do ip -n $ns link set lo up; done
ip -n $SW link set veth-sw up
ip -n $COL link set veth-col up

ctl() { ip netns exec $COL "$work/bin/erspanctl" --socket "$sock" "$@"; }

say "on the collector: erspanctl starts erspand by itself"
run ctl create erspan0 tunnel 192.0.2.2 192.0.2.1 vnetid 77 up
run ctl create erspan1 tunneladdr 192.0.2.2 up
run ctl create erspan2 tunnel 2001:db8::2 2001:db8::1 vnetid 300 up

say "tcpdump -ni erspan0 on the collector"
ip netns exec $COL tcpdump -l -ni erspan0 -c 5 -e >"$work/tcpdump.txt" 2>"$work/tcpdump.err" &
tcpdump_pid=$!
for _ in $(seq 50); do grep -q listening "$work/tcpdump.err" 2>/dev/null && break; sleep 0.1; done

say "the switch mirrors: session 77 (Type II) to erspan0, session 12 (Type III) to erspan1, Type I, and session 300 over IPv6 to erspan2"
sw() { ip netns exec $SW "$work/bin/ersend" "$@"; }
run sw --dst 192.0.2.2 --type 2 --session 77 --count 5 --interval 100ms
run sw --dst 192.0.2.2 --type 3 --session 12 --count 3 --interval 10ms
run sw --dst 192.0.2.2 --type 1 --count 2 --interval 10ms
run sw --dst 2001:db8::2 --type 2 --session 300 --count 4 --interval 10ms
for _ in $(seq 50); do kill -0 "$tcpdump_pid" 2>/dev/null || break; sleep 0.1; done
say "what tcpdump saw on erspan0"
cat "$work/tcpdump.txt"
cat "$work/tcpdump.err"

say "erspanctl (all interfaces and the daemon's counters)"
run ctl

say "erspanctl destroy erspan0"
run ctl destroy erspan0
echo "demo done"
