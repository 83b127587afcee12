#!/usr/bin/env bash
# The main job end to end, no switch needed. A "switch" network namespace
# has a Linux bridge with two hosts on it; erspanctl there makes erspan0 a
# span port of the bridge (OpenBSD's addspan), so every frame crossing it
# leaves as ERSPAN Type II towards a "collector" namespace. There, erspand
# terminates the tunnel into erspan0 (this switch, this session) while
# erspan1 collects any other switch and session. tcpdump on the collector's
# erspan0 shows the mirrored frames; erspanctl shows both sides' counters,
# including the mirror-loss counters per source.
# Run as root on Debian. Everything it makes is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
export PATH="$PATH:/usr/local/go/bin"

[ "$(id -u)" -eq 0 ] || { echo "demo.sh: run as root (it creates network namespaces)" >&2; exit 1; }
# procps: sysctl, which minimal Debian images lack.
need_tools ip:iproute2 tcpdump:tcpdump sysctl:procps

# One demo at a time: a second would kill the first's daemons when it
# clears the namespaces (below). erspanctl and tcpdump run with fd 9
# closed (9>&-), else the daemons erspanctl starts would inherit the lock,
# and those of a demo that was killed would refuse every later demo before
# it could clear them.
one_at_a_time demo.sh /run/erspan-demo.lock

SW=erspan-demo-switch
COL=erspan-demo-collector
H1=erspan-demo-host1
H2=erspan-demo-host2
ALL="$SW $COL $H1 $H2"
work=$(mktemp -d /tmp/erspan-demo.XXXXXX)
# The daemons erspanctl starts read this (empty) directory, not the host's
# /etc/erspan/hostname.erspanN files.
export ERSPAN_CONFIG_DIR=$work/etc

cleanup() {
	# The daemons erspanctl started, gen in the switch and tcpdump in the
	# collector, found by namespace: every process in them is this
	# script's.
	for ns in $ALL; do remove_netns "$ns" TERM; done
	rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

say "building erspand, erspanctl and gen (the benchmark's generator, here a switch sending ERSPAN)"
go build -o "$work/bin/" ./cmd/erspand ./cmd/erspanctl ./scripts/bench/gen

say "the network: hosts $H1 (198.51.100.11) and $H2 (198.51.100.12) on bridge br0 of $SW (198.51.100.1); $SW (192.0.2.1) and $COL (192.0.2.2) joined by a veth"
for ns in $ALL; do
	remove_netns "$ns" KILL # left by a demo that was killed
	ip netns add "$ns"
	# No duplicate address detection: until the link-local address has
	# passed it, the kernel ignores neighbour solicitations (about 1s).
	ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
	ip -n "$ns" link set lo up
done
ip link add veth-sw netns $SW type veth peer name veth-col netns $COL
ip -n $SW addr add 192.0.2.1/24 dev veth-sw
ip -n $SW addr add 2001:db8::1/64 dev veth-sw nodad
ip -n $COL addr add 192.0.2.2/24 dev veth-col
ip -n $COL addr add 2001:db8::2/64 dev veth-col nodad
ip -n $SW link set veth-sw up
ip -n $COL link set veth-col up
ip -n $SW link add br0 type bridge
ip -n $SW addr add 198.51.100.1/24 dev br0
ip -n $SW link set br0 up
i=1
for h in $H1 $H2; do
	ip link add port$i netns $SW type veth peer name eth0 netns "$h"
	ip -n $SW link set port$i master br0 up
	ip -n "$h" addr add 198.51.100.1$i/24 dev eth0
	ip -n "$h" link set eth0 up
	i=$((i + 1))
done

ctl() { ns=$1; shift; printf '[%s] ' "$ns"; run ip netns exec "$ns" "$work/bin/erspanctl" --socket "$work/$ns/erspand.sock" "$@" 9>&-; }

say "the collector: erspanctl starts erspand by itself"
ctl $COL create erspan0 tunnel 192.0.2.2 192.0.2.1 vnetid 77 up
ctl $COL create erspan1 tunneladdr 192.0.2.2 up

say "the switch: erspan0 sends session 77 to the collector, as the span port of br0"
ctl $SW create erspan0 tunnel 192.0.2.1 192.0.2.2 vnetid 77 up
ctl $SW br0 addspan erspan0

say "tcpdump -ni erspan0 on the collector"
ip netns exec $COL tcpdump -l -ni erspan0 -c 6 ip >"$work/tcpdump.txt" 2>"$work/tcpdump.err" 9>&- &
tcpdump_pid=$!
wait_until "tcpdump listening" "$work/tcpdump.err" grep -q listening "$work/tcpdump.err" || true

say "traffic on the bridge: $H1 to $H2, $H1 to the switch, the switch to $H2 (UDP, 2 datagrams each)"
udp() { ip netns exec "$1" bash -c "for i in 1 2; do echo hello >/dev/udp/$2/9999; done" 2>/dev/null || true; }
udp $H1 198.51.100.12
udp $H1 198.51.100.1
udp $SW 198.51.100.12

say "another switch, session 12, Type III: it lands on the collector's catch-all erspan1"
run ip netns exec $SW "$work/bin/gen" --mode gre --dst 192.0.2.2 --type 3 --session 12 --count 3 --interval 10ms

await_exit 50 "$tcpdump_pid"
say "what tcpdump saw on the collector's erspan0"
cat "$work/tcpdump.txt"
grep captured "$work/tcpdump.err" || true

say "the switch's erspan0"
ctl $SW erspan0
say "the collector (all interfaces and the daemon's counters)"
ctl $COL

say "delspan: the bridge's traffic stops being mirrored"
ctl $SW br0 delspan erspan0
ctl $COL destroy erspan0
echo "demo done"
