#!/usr/bin/env bash
# The benchmark: what erspand delivers, per second and per CPU-second,
# against what a Go program could at best (the ceiling) and what the naive
# design does (the baseline), in one run on this machine.
#
#   scripts/bench.sh [--quick] [--sweep]
#
# as root; --quick: under a minute, fewer frames; --sweep: instead of the
# comparison, erspand's decap and encap with each of several values of
# --rx-batch, --rx-buffer, --tx-buffer and --rx-moderate, and with
# GOMAXPROCS=1 in its environment against without (how their defaults were
# chosen); SWEEP_BATCH, SWEEP_MOD, SWEEP_RCV, SWEEP_SND (values, empty for
# none) and SWEEP_GMP=0 in its environment choose what it sweeps.
#
# Everything runs in network namespaces it makes (erspan-bench-*) and
# removes on exit; the processes it starts are killed by PID. One run at a
# time: it holds an flock on /run/erspan-bench.lock, and a second refuses
# to start; the namespaces a killed run left are removed at the start, the
# processes in them killed first. The programs are built (and ./tunnel's
# test binary) before the clock and the watchdog start: on a cold cache Go
# compiles the standard library, which is not the measurement.
# Two cores are assumed: the generator (and with it the collector's
# receive softirq, which veth runs on the sending CPU) is pinned to CPU 0,
# the program measured (ceiling, naive, erspand; erspand raises GOMAXPROCS
# to at least 2 whatever its affinity unless its environment sets
# GOMAXPROCS, and the bench starts it without GOMAXPROCS or ERSPAN_* in its
# environment but for the sweep's GOMAXPROCS=1 row) to CPU 1.
# CPU time is the measured process's utime + stime from /proc/PID/stat
# (getrusage for the ceiling), which includes the kernel work done in its
# own syscalls (the TAP write, the tc ingress drop behind it).
#
# Measurements (REPS runs of DUR seconds each, every measured run
# followed by a ceiling run of SAMPLE_DUR seconds; a row shows the run with
# the median frames per CPU-second, except for lost: the worst of the REPS runs,
# as the median run's alone would hide loss in the others (every run's
# figures go to stderr as it ends); frames per second count what arrived
# while the generator sent, loss and CPU also what arrived after; busy is
# those CPU-seconds over the wall time of the same window, from before the
# generator starts to the end of the drain, as the generator's own seconds
# leave the drain out and would put a process on one CPU over 100%):
#  ceiling  a Go program writes prebuilt frames into a TAP, one write() each,
#           the TAP made like erspanN (multi-queue, up, monitor program):
#           REPS runs at the start of the run, REPS at its end, and one
#           of SAMPLE_DUR seconds after every measured run (erspand, the
#           naive loop, the send alone): it moves with the host's load,
#           by up to half within a run and as much from one run to the
#           next, and a run's
#           neighbour is no better a denominator than any other (over 84
#           runs, a run's frames per CPU-second and the ceiling run right
#           after it correlated at 0.02). Every ratio (decap in each mode,
#           encap, the send alone, naive, io_uring, multi-queue, the
#           sweep's rows) is frames per
#           CPU-second over the median of all these ceiling runs of the
#           same frame size, so comparisons between rows are the same
#           with or without it; the report shows their number and range.
#           At the start also with erspand's io_uring writer (erspand
#           --io-uring), 32 writes per io_uring_enter, on one queue as
#           erspand has;
#           and on two queues of one TAP with a writer thread per queue,
#           each writing flows of its own (the same flows on both queues
#           would have the kernel's flow table rewritten frame after
#           frame): on both CPUs (frames per second), and with both
#           threads on the measured CPU (frames per CPU-second on the same
#           CPU as the one-queue ceiling's).
#  naive    scripts/bench/naive (ListenIP + ReadFrom + Write) fed by gen.
#           naive_speedup_64 compares frames per CPU-second, as the ratios
#           do: both programs are fed the same load by one generator, which
#           both may keep up with, so frames per second would compare the
#           generator with itself (the rate ratio is printed beside it).
#  decap    erspand with erspan0 (session 77), fed by gen: Ethernet frames
#           carrying IPv4 + GRE + ERSPAN II sent with AF_PACKET sendmmsg on
#           the sender's veth, as fast as gen can. Delivered = rx_packets of
#           the TAP; loss = sent - delivered. erspand's raw GRE socket hands
#           packets over in an eBPF ring (the default); also measured
#           with --rx-ring=false, read with recvmmsg.
#  sensor   the same with erspan0 in sensor mode (tunneldev veth-col), gen
#           sending to 198.51.100.2, an address the collector does not
#           have (the IP stack drops the packets: forwarding is off): a
#           TPACKET_V3 ring, into which the kernel copies each packet in
#           the receive softirq, which veth runs on the generator's CPU (on
#           a NIC: the CPU taking its interrupts), where the collector's IP
#           stack also runs in decap.
#  encap    erspand with erspan0 in source mode; gen writes frames into it
#           with AF_PACKET sendmmsg; counted at the collector's veth, which
#           drops them at tc ingress (no IP input, no ICMP). veth runs
#           that receive on the sending CPU, so erspand pays for it up to
#           the tc drop, about what a driver's transmit costs (steering it
#           to the generator's CPU with RPS cost erspand an
#           inter-processor interrupt per packet instead, a quarter of its
#           CPU, an MSR write and a VM exit each, which a real NIC's
#           transmit does not).
#  send     gen alone on the measured CPU sends ERSPAN II to the
#           collector's veth (the same tc drop), with a raw GRE socket as
#           erspand's, and with an AF_PACKET socket bypassing the IP
#           output: what another send would save encap (see send_alone).
#  zero-loss  the highest rate at which ZL_COUNT frames of 64 B all arrive:
#           first as fast as gen can, then a bisection with gen's rate limit,
#           where a step passes only if gen also sent at 95% or more of the
#           rate asked; the rate shown is the one gen achieved.
#  many     RSS and decap with NIFS interfaces (erspanI, session I), made
#           through one control connection (scripts/bench/mkifs).
# It prints figures, never pass or fail, and ends with one key=value line
# (but --sweep, which ends with its table, the ceiling's drift and erspand's
# defaults).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

QUICK=0 SWEEP=0
for a in "$@"; do
	case "$a" in
	--quick) QUICK=1 ;;
	--sweep) SWEEP=1 ;;
	*) echo "usage: $0 [--quick] [--sweep]" >&2; exit 2 ;;
	esac
done
[ "$(id -u)" -eq 0 ] || { echo "bench.sh: run as root (it creates network namespaces)" >&2; exit 1; }
# erspand as its defaults make it: its tuning flags' variables and the Go
# runtime's would change what is measured (the sweep sets GOMAXPROCS for
# its own rows).
unset GOMAXPROCS GODEBUG GOGC GOMEMLIMIT ERSPAN_RX_MODERATE ERSPAN_RX_BATCH ERSPAN_RX_BUFFER ERSPAN_TX_BUFFER ERSPAN_RX_RING ERSPAN_IO_URING

# shellcheck source=scripts/lib.sh
. scripts/lib.sh
# What it runs beyond Debian's essential packages: CI runs it on a fresh
# machine after scripts/test.sh, which installs iproute2 but not procps
# (sysctl, and pgrep for the watchdog), absent from minimal images.
need_tools ip:iproute2 sysctl:procps pgrep:procps

# One run at a time: two would share the CPUs and each other's namespace
# names (fd 9 is closed in the processes it starts in the background).
one_at_a_time bench.sh /run/erspan-bench.lock

# LIMIT: the watchdog's, leaving the cleanup (up to 5 s to stop the
# processes, then the namespaces) within the issue's bounds: --quick under
# 60 s, the full run under 10 minutes.
if [ $QUICK -eq 1 ]; then
	DUR=1 SAMPLE_DUR=1 REPS=1 ZL_COUNT=100000 ZL_STEPS=4 NIFS=64 LIMIT=52 BENCHTIME=200000x
	TAIL=15
else
	DUR=4 SAMPLE_DUR=2 REPS=3 ZL_COUNT=1000000 ZL_STEPS=6 NIFS=1024 LIMIT=585 BENCHTIME=1s
	TAIL=100
fi
# TAIL: seconds kept for what follows the zero-loss search (the many
# interfaces' rows, the ceiling at the end, the report), which a search
# whose every step fails (each up to 60 s) must not push past LIMIT.
GEN_CPU=0 DUT_CPU=1
SND=erspan-bench-snd COL=erspan-bench-col CEIL=erspan-bench-ceil
ALL_NS="$SND $COL $CEIL"
HZ=$(getconf CLK_TCK)

log() { printf '%s\n' "$*" >&2; }

# A killed run's namespaces, and the processes in them (its daemons, whose
# PIDs died with it), and its work directory: with the lock held, no run
# owns them.
for ns in $ALL_NS; do
	[ -e "/run/netns/$ns" ] || continue
	remove_left "$ns" "left by a killed run"
done
# And those of the allocation tests (alloc_check), should a killed run
# have left them.
remove_test_leftovers
rm -rf /tmp/erspan-bench.*

work=$(mktemp -d /tmp/erspan-bench.XXXXXX)
bin=$work/bin
pids=()

cleanup() {
	trap - EXIT INT TERM
	# Five seconds to stop, then SIGKILL.
	end_pids 50 TERM "${pids[@]}"
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	for ns in $ALL_NS; do ip netns del "$ns" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "bench.sh: interrupted" >&2; exit 1' INT TERM

# Built before the clock (t0) and the watchdog start: on a cold cache Go
# compiles the standard library first, which is not the measurement and
# would eat --quick's minute. The allocation tests run from their test
# binary for the same reason.
log "building into $bin"
go build -o "$bin/" ./cmd/erspand ./cmd/erspanctl ./scripts/bench/gen ./scripts/bench/ceiling \
	./scripts/bench/naive ./scripts/bench/mkifs ./scripts/bench/dropin
[ $SWEEP -eq 1 ] || go test -c -o "$bin/tunnel.test" ./tunnel/
# No ulimit -n: the Go runtime raises the soft RLIMIT_NOFILE to the hard
# limit in every Go program at start, erspand's one TAP fd per interface
# included.

t0=$(date +%s)
# A watchdog: whatever hangs, the run ends within LIMIT seconds.
# Bash runs its TERM trap only once the foreground command has ended, so
# the watchdog signals the script (the trap is then pending), then stops
# every descendant of the script by PID, which ends that command. Killed
# at cleanup, it takes its sleep with it (which would otherwise hold the
# script's stdout open until LIMIT).
descendants() { local c; for c in $(pgrep -P "$1"); do descendants "$c"; echo "$c"; done; }
(
	exec 9>&-
	trap 'kill $s 2>/dev/null; exit 0' TERM
	sleep $LIMIT >/dev/null 2>&1 &
	s=$!
	if wait $s; then
		echo "bench.sh: over ${LIMIT}s, stopping" >&2
		kill -TERM $$
		# The watchdog's own PID, taken here: expanded in the pipeline,
		# $BASHPID would be that of grep's subshell.
		self=$BASHPID
		mapfile -t ds < <(descendants $$ | grep -vx "$self")
		kill -TERM "${ds[@]}" 2>/dev/null
	fi
) &
pids+=("$!")

nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
kv() { printf '%s\n' "$2" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
slab_kb() { awk '/^Slab:/ {print $2}' /proc/meminfo; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; }
# Sum of a statistics counter over the links matching a glob, in a namespace.
counter() { nsx "$1" sh -c "cat /sys/class/net/$2/statistics/$3" | awk '{s += $1} END {print s + 0}'; }
# Raw IPPROTO_GRE (47 = 0x2F) sockets in a namespace: the receive softirq
# clones every GRE packet to each of them, wanted or not.
raw_gre() { nsx "$1" cat /proc/net/raw | awk 'NR > 1 && $2 ~ /:002F$/' | wc -l; }
# mid: of lines of numbers, one line per run, the line of the run whose
# first number is the median: a row's figures all come from one run.
mid() { grep . | sort -g -k1,1 | awk '{v[NR] = $0} END {print v[int((NR + 1) / 2)]}'; }

# start NS CMD...: start a pinned process in NS in the background, record
# its PID (ip netns exec and taskset exec, so $! is the program itself
# once they have; not through nsx, which as a function would run in a
# subshell). Those execs take a while on a loaded machine: up to ~2 s.
# Its output goes to $start_log, if set (as a prefix to the call), else
# to $work/PROGRAM.log; a name of the script's own, not LOG, which an
# environment could set for every program.
start_log=""
start() {
	local ns=$1 name out; shift
	name=$(basename "$1")
	out=${start_log:-$work/$name.log}
	ip netns exec "$ns" taskset -c $DUT_CPU "$@" >>"$out" 2>&1 9>&- &
	started=$!
	pids+=("$started")
	for _ in $(seq 40); do
		[ "$(cat /proc/$started/comm 2>/dev/null)" = "${name:0:15}" ] && return 0
		kill -0 "$started" 2>/dev/null || break
		sleep 0.05
	done
	log "bench.sh: PID $started is not $name (or no longer runs); $out:"
	tail -n 20 "$out" >&2 2>/dev/null
	exit 1
}
# stop PID: end a process start started (SIGTERM, SIGKILL after 5 s: a
# daemon stuck in its shutdown must not hold the run until the watchdog),
# and forget it (cleanup must not signal the PID again, which by then may
# be another process's).
stop() {
	end_pids 50 TERM "$1"
	wait "$1" 2>/dev/null || true
	local p kept=()
	for p in "${pids[@]}"; do [ "$p" = "$1" ] || kept+=("$p"); done
	pids=("${kept[@]}")
}
ctl() { local ns=$1 sock=$2; shift 2; nsx "$ns" "$bin/erspanctl" --no-autostart --socket "$sock" "$@"; }
# pick REGEX: the "name": number pairs of erspanctl -j output whose names
# match REGEX, as name:number on one line.
pick() { grep -Eo "\"($1)\": *[0-9]*" | tr -d '" ' | tr '\n' ' ' || true; }

# How busy the machine is before we start: another load skews everything.
# Prints the idle and the steal percentage (time the hypervisor gave this
# VM's CPUs to others: the host's load, which moves the ceiling).
idle_pct() {
	local a b
	a=$(awk '/^cpu / {print $5 + $6, $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat)
	sleep 0.5
	b=$(awk '/^cpu / {print $5 + $6, $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat)
	echo "$a $b" | awk '{printf "%.0f %.0f", 100 * ($4 - $1) / ($6 - $3), 100 * ($5 - $2) / ($6 - $3)}'
}

# allocs_per_frame comes from the allocation tests, which fail on any
# allocation per batch or frame: decode, demux and counters down every
# branch, a writer filled mid-batch, failed TAP writes and a flow beyond
# the table (TestInputAllocs); the real sockets' batch reads, a raw GRE
# socket's with recvmmsg (TestSocketAllocs) and with its eBPF ring, a
# record crossing the ring's end included (TestGRERingAllocs), and a
# sensor's capture socket's (TestCaptureAllocs); encap (TestEncapAllocs); the transmit path's TAP
# reads and sendmmsg (TestTransmitAllocs); the TAP writers, write(2) and
# io_uring, on a real TAP (TestFrameWriter). Each must have run and passed: one renamed away
# would otherwise leave the key claiming a path it no longer covers. The
# benchmark's allocs/op is shown beside ("-" if it did not run). Both from
# the test binary built above, run in the package's directory as go test
# would.
alloc_tests="TestInputAllocs TestSocketAllocs TestGRERingAllocs TestCaptureAllocs TestEncapAllocs TestTransmitAllocs TestFrameWriter"
allocs=- bench_allocs=-
alloc_check() {
	log "allocations per frame: tunnel.test -test.run '${alloc_tests// /|}' and -test.bench BenchmarkInputBatch"
	allocs=0
	if ! (cd tunnel && "$bin/tunnel.test" -test.count=1 -test.v -test.run "^(${alloc_tests// /|})\$") >"$work/allocs.log" 2>&1; then
		allocs=failed
		log "bench.sh: the allocation tests failed:"; grep -v '^=== ' "$work/allocs.log" >&2
	fi
	for t in $alloc_tests; do
		grep -q "^--- PASS: $t " "$work/allocs.log" || { allocs=failed; log "bench.sh: $t did not pass"; }
	done
	# A skipped subtest (TestFrameWriter's io_uring case where the
	# kernel refuses io_uring) leaves its parent passing: not covered.
	if grep -q -- '--- SKIP' "$work/allocs.log"; then
		allocs=failed
		log "bench.sh: an allocation test skipped a case:"; grep -A1 -- '--- SKIP' "$work/allocs.log" >&2
	fi
	if ! (cd tunnel && "$bin/tunnel.test" -test.run '^$' -test.bench '^BenchmarkInputBatch$' -test.benchmem \
		-test.benchtime "$BENCHTIME") >"$work/bench-allocs.log" 2>&1; then
		log "bench.sh: BenchmarkInputBatch failed:"; cat "$work/bench-allocs.log" >&2
	fi
	bench_allocs=$(awk '/^BenchmarkInputBatch/ {for (i = 2; i <= NF; i++) if ($i == "allocs/op") print $(i - 1)}' "$work/bench-allocs.log")
	[ -n "$bench_allocs" ] || bench_allocs=-
}
[ $SWEEP -eq 1 ] || alloc_check
read -r idle steal <<<"$(idle_pct)"
[ "$(nproc)" -eq 2 ] || log "warning: $(nproc) CPUs; this benchmark is laid out for 2"

# row LABEL SIZE OFFERED PPS LOST CPU BUSY EFF RATIO: a row of the table,
# printed by report. RATIO "ceil" is EFF over the median of the one-queue
# ceiling's runs (known only at the end), "-" none.
rows=""
row() { rows="$rows$(printf '%s\t' "$@")"$'\n'; }

# ---- ceiling ----------------------------------------------------------------
ip netns add $CEIL
# ceil_run SECONDS SIZE NAME CPUS ARGS...: one run of the ceiling on a TAP
# NAME (-size SIZE -duration SECONDS ARGS...) pinned to CPUS; prints its
# key=value line, or zeros and failed=1 when it failed (no io_uring here,
# say).
ceil_run() {
	local secs=$1 size=$2 name=$3 cpus=$4; shift 4
	nsx $CEIL taskset -c "$cpus" "$bin/ceiling" -name "$name" -size "$size" -duration "${secs}s" "$@" ||
		echo "pps=0 per_cpu_s=0 cpu=0 failed=1"
}
# ceil_row LABEL SIZE NAME CPUS ARGS...: REPS ceil_runs of DUR seconds,
# each logged as it ends; adds the row of the run with the median frames
# per CPU-second (a failed run counts as 0 there) and sets pps and eff
# from it, and ceil_runs to the runs that did not fail.
ceil_row() {
	local label=$1 size=$2 name=$3 cpus=$4 k out all=""; shift 4
	ceil_runs=""
	for k in $(seq $REPS); do
		out=$(ceil_run $DUR "$size" "$name" "$cpus" "$@")
		log "$label $size B, run $k of $REPS: $(kv pps "$out") pps, $(kv per_cpu_s "$out") per CPU-s, $(kv cpu "$out") CPU-s"
		all="$all$(kv per_cpu_s "$out") $(kv pps "$out")"$'\n'
		if [ -n "$(kv failed "$out")" ]; then
			log "$label $size B, run $k of $REPS: failed, counted as 0 in this row, not among the samples"
		else
			ceil_runs="$ceil_runs$(kv per_cpu_s "$out") $(kv pps "$out")"$'\n'
		fi
	done
	read -r eff pps <<<"$(printf '%s' "$all" | mid)"
	row "$label" "$size" - "$pps" - - - "$eff" ceil
	log "$label $size B: $pps pps, $eff per CPU-s (median run)"
}
# ceiling WHEN SIZE: the one-queue ceiling (one write() per frame), at the
# start or the end of the run; sets ceil_WHEN_eff[SIZE] and adds its runs
# to the samples.
declare -A ceil_start_eff ceil_end_eff ceil_pps ceil_eff ceil_samples
ceiling() {
	ceil_row "ceiling (TAP write) $1" "$2" bench0 $DUT_CPU
	[ "$eff" != 0 ] || { log "bench.sh: the ceiling wrote no frame at $2 B"; exit 1; }
	eval "ceil_$1_eff[$2]=$eff"
	ceil_samples[$2]="${ceil_samples[$2]:-}$ceil_runs"
}
# sample SIZE: a one-queue ceiling run of SAMPLE_DUR seconds between
# measured runs, added to the samples.
sample() {
	local out
	out=$(ceil_run $SAMPLE_DUR "$1" bench0 $DUT_CPU)
	if [ -n "$(kv failed "$out")" ] || [ "$(kv per_cpu_s "$out")" = 0 ]; then
		log "bench.sh: a ceiling sample at $1 B failed (not counted)"
		return
	fi
	log "ceiling sample $1 B: $(kv per_cpu_s "$out") per CPU-s"
	ceil_samples[$1]="${ceil_samples[$1]:-}$(kv per_cpu_s "$out") $(kv pps "$out")"$'\n'
}
# ceiling_end: the one-queue ceiling again, now that everything else is
# measured, and the denominators: the median of every sample of a size.
ceiling_end() {
	local size
	for size in 64 1514; do
		ceiling end $size
		read -r ceil_eff[$size] ceil_pps[$size] <<<"$(printf '%s' "${ceil_samples[$size]}" | mid)"
	done
}
declare -A mq_pps mq_eff mq1_pps mq1_eff
for size in 64 1514; do
	ceiling start $size
	[ $SWEEP -eq 0 ] || continue
	ceil_row "ceiling (io_uring, 32)" $size bench1 $DUT_CPU -uring 32
	# Multi-queue: two queues of one TAP, a writer thread on each, with
	# flows of its own. On both CPUs (nothing else runs meanwhile): the
	# frames per second two writers get. Then both threads on the
	# measured CPU: frames per CPU-second on the same CPU as the
	# one-queue ceiling (the CPUs of a VM need not be alike).
	ceil_row "ceiling (2 queues, 2 CPUs)" $size bench2 $GEN_CPU,$DUT_CPU -queues 2
	mq_pps[$size]=$pps mq_eff[$size]=$eff
	ceil_row "ceiling (2 queues, 1 CPU)" $size bench3 $DUT_CPU -queues 2
	mq1_pps[$size]=$pps mq1_eff[$size]=$eff
done

# ---- the tunnel: sender (192.0.2.1) -- veth -- collector (192.0.2.2) ----------
# No IPv6: the kernel's own router solicitations and MLD reports (on the
# veths, and out of erspan0 in source mode, which mirrors them) would be
# counted as frames gen never sent; the tunnel is IPv4.
for ns in $SND $COL; do
	ip netns add "$ns"
	[ ! -d /proc/sys/net/ipv6 ] || nsx "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
	ip -n "$ns" link set lo up
done
ip link add veth-snd netns $SND type veth peer name veth-col netns $COL
# Jumbo MTU: a 1514-byte frame in ERSPAN (1564 bytes on the wire) must
# cross without fragments, as on a collector link sized for it.
ip -n $SND link set veth-snd mtu 9000 up
ip -n $COL link set veth-col mtu 9000 up
ip -n $SND addr add 192.0.2.1/24 dev veth-snd
ip -n $COL addr add 192.0.2.2/24 dev veth-col
col_mac=$(nsx $COL cat /sys/class/net/veth-col/address)
snd_mac=$(nsx $SND cat /sys/class/net/veth-snd/address)
ip -n $SND neigh replace 192.0.2.2 lladdr "$col_mac" dev veth-snd nud permanent
ip -n $COL neigh replace 192.0.2.1 lladdr "$snd_mac" dev veth-col nud permanent
# veth runs the collector's receive softirq on the sending CPU: the
# generator's in decap, erspand's in encap (see encap at the head).

# settle NS IFGLOB: the sum of rx_packets once it stops moving (read every
# 0.1 s, at most 2 s): the receiver draining its socket buffer (decap),
# erspand its TAP queue and the veth its backlog (encap).
settle() {
	local prev=-1 cur
	cur=$(counter "$1" "$2" rx_packets)
	for _ in $(seq 20); do
		[ "$cur" = "$prev" ] && break
		sleep 0.1
		prev=$cur cur=$(counter "$1" "$2" rx_packets)
	done
	echo "$cur"
}

# figures R0 REND R1 C0 C1 W0 W1 EL: sets deliv, pps, cpu, eff and busy from
# the delivered count before gen (R0), when it ended (REND) and after the
# drain (R1), the CPU ticks (C0, C1) and wall clock (W0, W1) taken around
# all of that, and gen's own seconds (EL). The rate is over gen's seconds;
# busy is over the wall time of the window the CPU was counted in.
figures() {
	local r0=$1 rend=$2 r1=$3 c0=$4 c1=$5 w0=$6 w1=$7 el=$8
	deliv=$((r1 - r0))
	pps=$(calc %.0f "($rend - $r0) / $el")
	cpu=$(calc %.2f "($c1 - $c0) / $HZ")
	eff=$(calc %.0f "$deliv / (($c1 - $c0) / $HZ + 1e-9)")
	busy=$(calc %.0f "100 * ($c1 - $c0) / $HZ / ($w1 - $w0)")
}

# decap PID IFGLOB SIZE RATE COUNT SESSION SESSIONS: gen sends ERSPAN II to
# GEN_DST (the collector's address unless a sensor row sets another); sets
# sent, deliv, pps, cpu, eff, busy, offered.
GEN_DST=192.0.2.2
# gen_secs RATE COUNT: how long decap lets gen run, bounded by time as
# well as count: DUR at full speed (RATE 0), or long enough for COUNT at
# the rate asked (or at 50k pps when COUNT is set at full speed), at most
# 60 s.
gen_secs() {
	local rate=$1 count=$2 dur=$DUR
	if [ "$rate" != 0 ]; then
		dur=$(calc %.0f "$count / $rate * 1.3 + 2")
	elif [ "$count" -lt 100000000 ]; then
		dur=$(calc %.0f "$count / 50000 + 2")
	fi
	[ "$dur" -le 60 ] || dur=60
	echo "$dur"
}
decap() {
	local pid=$1 ifs=$2 size=$3 rate=$4 count=$5 session=$6 sessions=$7 r0 r1 rend c0 c1 w0 w1 out dur
	dur=$(gen_secs "$rate" "$count")
	r0=$(counter $COL "$ifs" rx_packets)
	w0=$(date +%s.%N) c0=$(ticks "$pid")
	out=$(nsx $SND taskset -c $GEN_CPU "$bin/gen" -mode eth -dev veth-snd -dstmac "$col_mac" -dst "$GEN_DST" \
		-size "$size" -rate "$rate" -count "$count" -duration "${dur}s" -session "$session" -sessions "$sessions")
	# The rate counts what was delivered while gen sent; what the
	# receiver takes from its socket buffer afterwards counts for loss
	# and CPU, not for the rate (it would flatter a receiver that lags).
	rend=$(counter $COL "$ifs" rx_packets)
	r1=$(settle $COL "$ifs")
	c1=$(ticks "$pid") w1=$(date +%s.%N)
	sent=$(kv sent "$out") offered=$(kv rate "$out")
	figures "$r0" "$rend" "$r1" "$c0" "$c1" "$w0" "$w1" "$(kv elapsed "$out")"
}

# encap PID SIZE: gen writes frames into erspan0 (source mode, erspand PID)
# as fast as it can; counted at the collector's veth. Sets the same as decap.
encap() {
	local pid=$1 size=$2 r0 r1 rend d0 d1 c0 c1 w0 w1 out el
	r0=$(counter $COL veth-col rx_packets) d0=$(counter $SND erspan0 tx_dropped)
	w0=$(date +%s.%N) c0=$(ticks "$pid")
	out=$(nsx $SND taskset -c $GEN_CPU "$bin/gen" -mode tap -dev erspan0 -size "$size" -count 100000000 -duration ${DUR}s)
	rend=$(counter $COL veth-col rx_packets) # the rate: while gen sent
	r1=$(settle $COL veth-col)
	d1=$(counter $SND erspan0 tx_dropped) c1=$(ticks "$pid") w1=$(date +%s.%N)
	el=$(kv elapsed "$out") sent=$(kv sent "$out")
	# gen sends a frame the TAP refused (tx_dropped) again, so
	# offered counts attempts and lost is what gen sent that never
	# reached the peer.
	offered=$(calc %.0f "($sent + $d1 - $d0) / $el")
	figures "$r0" "$rend" "$r1" "$c0" "$c1" "$w0" "$w1" "$el"
}

# send_alone MODE SIZE: gen alone, pinned to the measured CPU in the
# sender namespace, sends ERSPAN II packets of SIZE-byte frames to the
# collector's veth (which drops them at tc ingress, as in encap) as fast
# as it can: what erspand's send costs with a raw GRE socket (gre: the
# kernel routes and builds the IPv4 header, as erspand does) against an
# AF_PACKET socket with PACKET_QDISC_BYPASS and headers of its own (eth:
# no route lookup, IP output, netfilter or neighbour lookup). The CPU is
# gen's own (getrusage). Sets the same as decap.
send_alone() {
	local mode=$1 size=$2 r0 r1 rend out w0 w1
	r0=$(counter $COL veth-col rx_packets) w0=$(date +%s.%N)
	# A failed run (a kernel refusing PACKET_QDISC_BYPASS, say) is a row
	# of zeros, not the end of the whole run.
	out=$(nsx $SND taskset -c $DUT_CPU "$bin/gen" -mode "$mode" -dev veth-snd -dstmac "$col_mac" -size "$size" \
		-session 77 -sessions 1 -count 100000000 -duration ${DUR}s) ||
		{ log "bench.sh: gen -mode $mode failed"; out="sent=0 elapsed=1 rate=0 cpu=0"; }
	rend=$(counter $COL veth-col rx_packets)
	r1=$(settle $COL veth-col) w1=$(date +%s.%N)
	sent=$(kv sent "$out") offered=$(kv rate "$out")
	# gen's CPU seconds as clock ticks, figures' unit.
	figures "$r0" "$rend" "$r1" 0 "$(calc %.6f "$(kv cpu "$out") * $HZ")" "$w0" "$w1" "$(kv elapsed "$out")"
}

# measured_row LABEL SIZE MEASURE ARGS...: REPS runs of MEASURE ARGS...
# (decap, encap or send_alone), each logged as it ends and followed by a ceiling
# sample; adds the row of the run with the median frames per CPU-second,
# but with the worst loss of the REPS runs (the median run's alone would
# hide the others'), and sets pps and eff from the median run.
measured_row() {
	local label=$1 size=$2 runs="" worst="" k l o c b; shift 2
	for k in $(seq $REPS); do
		"$@"
		l=$((sent - deliv))
		if [ -z "$worst" ] || [ "$l" -gt "$worst" ]; then worst=$l; fi
		log "$label $size B, run $k of $REPS: $pps pps, $eff per CPU-s, lost $l of $sent, $cpu CPU-s, busy $busy%"
		runs="$runs$eff $pps $offered $cpu $busy"$'\n'
		sample "$size"
	done
	read -r eff pps o c b <<<"$(printf '%s' "$runs" | mid)"
	row "$label" "$size" "$o" "$pps" "$worst" "$c" "$b%" "$eff" ceil
	log "$label $size B: $pps pps, $eff per CPU-s (median run), lost at worst $worst"
}

# decap_row LABEL PID IFGLOB SIZE SESSION SESSIONS: measured_row of decap
# at full speed.
decap_row() { measured_row "$1" "$4" decap "$2" "$3" "$4" 0 100000000 "$5" "$6"; }

# erspand_in NS NAME ARGS...: start erspand in NS with its control socket,
# state and log under $work/NAME and flags ARGS; sets started and esock.
erspand_in() {
	local ns=$1 name=$2 elog=$work/$2/erspand.log; shift 2
	esock=$work/$name/erspand.sock
	mkdir -p "$work/$name"
	: >"$elog" # an earlier erspand of this NAME's lines are not this one's
	start_log=$elog start "$ns" "$bin/erspand" --socket "$esock" --config-dir "$work/etc" --state "$work/$name/state" "$@"
	# Ready once it says it listens (the socket exists before), with the
	# GOMAXPROCS it runs with.
	wait_until "erspand $name" "$elog" grep -qF "listening on" "$elog"
	gmp=$(sed -n 's/.*listening on .*(GOMAXPROCS \([0-9]*\)).*/\1/p' "$elog" | tail -n 1)
	[ -n "$gmp" ] || gmp="?"
}

# defaults: erspand's tuning flags with their defaults, from its --help.
defaults() {
	local f help out=""
	help=$("$bin/erspand" --help 2>&1 || true)
	for f in rx-moderate rx-batch rx-buffer tx-buffer rx-ring; do
		out="$out --$f $(printf '%s\n' "$help" | sed -n "s/^ *--${f}[ =].*(default: \([^)]*\)).*/\1/p")"
	done
	echo "${out# }"
}

# erspand_gmp N NS NAME ARGS...: erspand_in with GOMAXPROCS=N in erspand's
# environment (and only there), or without it when N is empty.
erspand_gmp() {
	local n=$1; shift
	if [ -n "$n" ]; then GOMAXPROCS=$n erspand_in "$@"; else erspand_in "$@"; fi
}

# encap_on / encap_off: the collector's veth drops what it receives at tc
# ingress (see encap at the head of this file); and no longer. dropin
# turns the product's monitor mode off, which sets disable_ipv6=0 on
# veth-col: IPv6 off again (see the tunnel above).
encap_on() { nsx $COL "$bin/dropin" veth-col on; }
encap_off() {
	nsx $COL "$bin/dropin" veth-col off
	[ ! -d /proc/sys/net/ipv6 ] || nsx $COL sysctl -qw net.ipv6.conf.veth-col.disable_ipv6=1
}

# decap_with LABEL GOMAXPROCS SIZES ARRAY [FLAGS...]: decap rows at each
# of SIZES of a fresh erspand started with FLAGS (and GOMAXPROCS, if not
# empty, in its environment); frames per CPU-s into the associative array
# ARRAY, indexed by size (- for none).
decap_with() {
	local label=$1 n=$2 sizes=$3 arr=$4 size pid name; shift 4
	name=$(printf '%s' "$label$n" | tr -cd 'a-z0-9')
	erspand_gmp "$n" $COL "$name" "$@"
	pid=$started
	ctl $COL "$esock" create erspan0 tunnel 192.0.2.2 192.0.2.1 vnetid 77 up
	for size in $sizes; do
		decap_row "$label" $pid erspan0 "$size" 77 1
		[ "$arr" = - ] || printf -v "${arr}[$size]" '%s' "$eff"
	done
	ctl $COL "$esock" destroy erspan0
	stop $pid
}

# report TITLE: the head, the table and the ceiling's start, end and drift.
report() {
	local l s o p lo c b e r size
	echo
	echo "erspan benchmark$1: $(nproc) CPUs, kernel $(uname -r), $(go version | cut -d' ' -f3), commit $(git describe --always --dirty 2>/dev/null || echo ?)$( [ $QUICK -eq 1 ] && echo ', --quick')"
	echo "machine idle before the run: ${idle}%, steal ${steal}% (idle under ~95% or any steal: another load shares the CPUs or the host)"
	echo "$REPS run(s) of ${DUR}s per row, each row from the run with the median frames per CPU-s, but lost: the worst run's (every run is in the log);"
	echo "generator on CPU $GEN_CPU, the measured program on CPU $DUT_CPU"
	echo
	printf '%-36s %5s %10s %10s %9s %7s %6s %11s %6s\n' measurement bytes offered/s frames/s lost CPU-s busy frames/CPU-s ratio
	while IFS=$'\t' read -r l s o p lo c b e r; do
		[ "$r" != ceil ] || r=$(calc %.2f "$e / ${ceil_eff[$s]}")
		printf '%-36s %5s %10s %10s %9s %7s %6s %11s %6s\n' "$l" "$s" "$o" "$p" "$lo" "$c" "$b" "$e" "$r"
	done <<<"${rows%$'\n'}"
	echo
	echo "ratio: frames per CPU-second over the one-queue ceiling's (one write() per frame into a TAP, same size):"
	echo "the median of all its runs in this run (at the start, at the end, and one of ${SAMPLE_DUR}s after every"
	echo "measured run), as it moves:"
	for size in 64 1514; do
		echo "  $size B: median ${ceil_eff[$size]} frames per CPU-s of $(printf '%s' "${ceil_samples[$size]}" | grep -c .) runs," \
			"$(printf '%s' "${ceil_samples[$size]}" | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%d to %d", lo, hi}');" \
			"start ${ceil_start_eff[$size]}, end ${ceil_end_eff[$size]} (medians)"
	done
	echo "wall time: $(($(date +%s) - t0)) s (the build before it not counted)"
}

# ---- sweep (--sweep): erspand's tuning, one setting at a time -------------
# Each value gets a fresh erspand with that flag (the others at their
# defaults) and the same measurements as the comparison's rows: decap at
# full speed for --rx-batch, --rx-moderate and GOMAXPROCS (CPU per frame)
# and --rx-buffer (loss, at both sizes: a buffer holds fewer large
# frames), encap for --tx-buffer.
if [ $SWEEP -eq 1 ]; then
	# The values swept; SWEEP_BATCH, SWEEP_MOD, SWEEP_RCV and SWEEP_SND in
	# the environment replace them (empty: none), SWEEP_GMP=0 leaves out
	# the GOMAXPROCS rows: to measure a few values without the rest.
	sweep_batch=${SWEEP_BATCH-1 16 64 256} sweep_rcv=${SWEEP_RCV-0 2097152 33554432}
	sweep_snd=${SWEEP_SND-0 4194304} sweep_mod=${SWEEP_MOD-0 25us 100us 400us}
	for b in $sweep_batch; do
		decap_with "decap --rx-batch $b" "" 64 - --rx-batch "$b"
	done
	for m in $sweep_mod; do
		decap_with "decap --rx-moderate $m" "" 64 - --rx-moderate "$m"
	done
	# GOMAXPROCS: erspand raises it to at least 2 unless its environment
	# sets it; what it ran with is in its log (erspand_in).
	gmp1=- gmpd=-
	if [ "${SWEEP_GMP:-1}" != 0 ]; then
		decap_with "decap GOMAXPROCS=1" 1 64 -
		gmp1=$gmp
		decap_with "decap GOMAXPROCS default" "" 64 -
		gmpd=$gmp
	fi
	for rb in $sweep_rcv; do
		decap_with "decap --rx-buffer=$rb" "" "64 1514" - "--rx-buffer=$rb"
	done
	[ -z "$sweep_snd" ] || encap_on
	for tb in $sweep_snd; do
		erspand_in $SND "sweep-t$tb" --tx-buffer "$tb"
		ctl $SND "$esock" create erspan0 tunnel 192.0.2.1 192.0.2.2 vnetid 77 up
		measured_row "encap --tx-buffer $tb" 64 encap $started 64
		ctl $SND "$esock" destroy erspan0
		stop $started
	done
	[ -z "$sweep_snd" ] || encap_off
	ceiling_end
	report ", --sweep"
	echo "erspand's defaults: $(defaults)$( [ "$gmpd" = - ] || echo ", and GOMAXPROCS $gmpd (erspand raises it to at least 2)");"
	echo "  a buffer of 0 is the kernel's default (rmem_default $(cat /proc/sys/net/core/rmem_default), wmem_default $(cat /proc/sys/net/core/wmem_default))"
	if [ "${SWEEP_GMP:-1}" != 0 ]; then
		echo "GOMAXPROCS rows: erspand ran with GOMAXPROCS $gmp1 with GOMAXPROCS=1 in its environment, $gmpd without$( [ "$gmp1" = "$gmpd" ] &&
			echo ": this erspand does not honour the variable, so both rows measure the same")"
		echo "  (as each said when it started)"
	fi
	exit 0
fi

# ---- naive baseline -----------------------------------------------------------
declare -A naive_pps naive_eff
start $COL "$bin/naive" -name naive0 -local 192.0.2.2 -session 77 -duration 300s
naive=$started
wait_until "the naive loop ready" "$work/naive.log" grep -q ready "$work/naive.log"
for size in 64 1514; do
	decap_row "naive decap" $naive naive0 $size 77 1
	naive_pps[$size]=$pps naive_eff[$size]=$eff
done
stop $naive

# ---- encap: erspand in the sender namespace, source mode ------------------------
erspand_in $SND snd
gmpd=$gmp # the GOMAXPROCS erspand runs with here (for the report)
snd=$started snd_sock=$esock
ctl $SND "$snd_sock" create erspan0 tunnel 192.0.2.1 192.0.2.2 vnetid 77 up
encap_on
declare -A encap_pps encap_eff
for size in 64 1514; do
	measured_row "erspand encap" $size encap $snd $size
	encap_pps[$size]=$pps encap_eff[$size]=$eff
done
encap_tx=$(ctl $SND "$snd_sock" -j erspan0 | pick 'tx_packets|tx_errors|tx_too_big')
# The send alone, both ways (see send_alone), at 64 B; not with --quick,
# which keeps its minute.
send_raw_eff="" send_pkt_eff=""
if [ $QUICK -eq 0 ]; then
	measured_row "send alone: raw GRE socket" 64 send_alone gre 64
	send_raw_eff=$eff
	measured_row "send alone: AF_PACKET, qdisc bypass" 64 send_alone eth 64
	send_pkt_eff=$eff
fi
encap_off
ctl $SND "$snd_sock" destroy erspan0
stop $snd

# ---- decap with io_uring writes into the TAP (erspand --io-uring) ----------
# Measured beside the default (write(2) per frame) to keep checking that
# choice; not with --quick, which keeps its minute.
declare -A decap_uring_eff
[ $QUICK -eq 1 ] || decap_with "erspand decap --io-uring" "" "64 1514" decap_uring_eff --io-uring

# ---- decap with recvmmsg (erspand --rx-ring=false) ------------------------------
# What the eBPF ring (the default) replaces, measured beside it.
declare -A decap_recv_eff
decap_with "erspand decap --rx-ring=false" "" "64 1514" decap_recv_eff --rx-ring=false

# ---- decap in sensor mode (tunneldev): the capture socket's ring ----------
erspand_in $COL sensor
sensor=$started
ctl $COL "$esock" create erspan0 tunneldev veth-col vnetid 77 up
declare -A sensor_eff
GEN_DST=198.51.100.2
for size in 64 1514; do
	decap_row "erspand decap, sensor" $sensor erspan0 $size 77 1
	sensor_eff[$size]=$eff
done
GEN_DST=192.0.2.2
ctl $COL "$esock" destroy erspan0
stop $sensor

# ---- decap: erspand in the collector namespace ------------------------------
erspand_in $COL col
col=$started sock=$esock
ctl $COL "$sock" create erspan0 tunnel 192.0.2.2 192.0.2.1 vnetid 77 up
declare -A decap_pps decap_eff
for size in 64 1514; do
	decap_row "erspand decap" $col erspan0 $size 77 1
	decap_pps[$size]=$pps decap_eff[$size]=$eff
done
rss1=$(rss_kb $col) raw1=$(raw_gre $COL)

# ---- zero-loss rate at 64 B ------------------------------------------------------
# Pass = every one of ZL_COUNT frames sent and delivered, sent at 95% or
# more of the rate asked: gen stops at its time cap, which lets the rate
# it achieves fall ~30% short of the one asked, and such a step did not
# show that erspand takes the rate asked. What counts is the rate gen
# achieved in the best passing step. Full speed first: when that passes,
# the generator is the limit.
zl_pass() { [ "$sent" -eq "$ZL_COUNT" ] && [ "$deliv" -eq "$ZL_COUNT" ] && [ "$(calc %d "($offered >= 0.95 * $1)")" = 1 ]; }
zl_note="" zero_loss=0 zl_pps=- zl_lost=-
decap $col erspan0 64 0 $ZL_COUNT 77 1
if zl_pass 0; then
	zero_loss=$offered zl_pps=$pps zl_lost=0
	zl_note="no loss at the generator's full speed: generator-bound, erspand ${busy}% busy"
else
	hi=$offered lo=0 cut=""
	log "zero-loss: full speed ($offered pps) lost $((sent - deliv)) of $sent; bisecting"
	steps=0
	for _ in $(seq $ZL_STEPS); do
		ask=$(((lo + hi) / 2))
		if [ "$ask" -le 0 ]; then # rate 0 would be gen's full speed
			cut=" (cut short: nothing left to halve)"
			break
		fi
		# A step lasts up to what decap allows it (gen_secs); none that
		# would leave TAIL short.
		step=$(gen_secs $ask $ZL_COUNT)
		if [ $(($(date +%s) - t0 + step + TAIL)) -gt $LIMIT ]; then
			log "zero-loss: no time for another step (${step}s) within the run's bound"
			cut=" (cut short: the time bound)"
			break
		fi
		steps=$((steps + 1))
		decap $col erspan0 64 $ask $ZL_COUNT 77 1
		log "zero-loss: $ask pps asked, $offered achieved, $sent of $ZL_COUNT sent, $((sent - deliv)) lost"
		if zl_pass $ask; then
			lo=$ask zero_loss=$offered zl_pps=$pps zl_lost=0
		else
			hi=$ask
		fi
	done
	zl_note="bisection, $steps of $ZL_STEPS steps$cut, each passing only at 95% or more of the rate asked: passes asked $lo, fails asked $hi"
fi
row "zero-loss rate" 64 "$zero_loss" "$zl_pps" "$zl_lost" - - - -

# ---- many interfaces ------------------------------------------------------------
ctl $COL "$sock" destroy erspan0
# The kernel's side of each interface (net_device, queues, qdiscs,
# sysfs) is not in erspand's RSS: the growth of Slab, system-wide, shows
# it (other activity on the machine adds to it).
slab0=$(slab_kb)
mk=$(nsx $COL "$bin/mkifs" -socket "$sock" -from 0 -to $((NIFS - 1)))
slabn=$(slab_kb)
log "made $NIFS interfaces: $mk"
target=$((NIFS > 77 ? 77 : NIFS - 1))
decap_row "decap, $NIFS ifs, 1 sess" $col "erspan$target" 64 $target 1
many_one=$pps many_one_eff=$eff
decap_row "decap, $NIFS ifs, all" $col 'erspan*' 64 0 $NIFS
many_all=$pps many_all_eff=$eff
rssn=$(rss_kb $col) rawn=$(raw_gre $COL)
col_counters=$(ctl $COL "$sock" -j | sed -n '/"daemon"/,$p' | pick 'rx_packets|unmatched|kernel_drops')
stop $col
ceiling_end

# ---- report --------------------------------------------------------------------------
report ""
# us FRAMES_PER_CPU_S: CPU microseconds per frame.
us() { calc %.2f "1e6 / $1"; }
echo "CPU per 64-byte frame (µs, from the median rows): ceiling $(us "${ceil_eff[64]}"), decap $(us "${decap_eff[64]}"), sensor $(us "${sensor_eff[64]}"), encap $(us "${encap_eff[64]}");"
echo "  a ratio of 0.8 would be $(calc %.2f "1e6 / (0.8 * ${ceil_eff[64]})") µs, $(calc %.2f "1e6 / (0.8 * ${ceil_eff[64]}) - 1e6 / ${ceil_eff[64]}") µs beside the ceiling's write"
echo "erspand: defaults ($(defaults), GOMAXPROCS $gmpd: chosen with scripts/bench.sh --sweep);"
echo "  write(2) per frame into TAPs (--io-uring is measured above)"
echo "zero-loss at 64 B with $ZL_COUNT frames: $zero_loss pps, the rate gen achieved with all sent and delivered ($zl_note)"
echo "erspand RSS: $rss1 kB with 1 interface, $rssn kB with $NIFS interfaces$( [ $QUICK -eq 1 ] && echo ' (--quick: 64, not 1024)')"
echo "making $NIFS interfaces (create, tunnel, vnetid, up; one control connection): $(kv seconds "$mk") s;"
echo "  kernel memory (Slab, system-wide) $(calc %.0f "($slabn - $slab0) / 1024") MB more after, $(calc %.0f "($slabn - $slab0) / $NIFS") kB per interface"
echo "raw GRE sockets in the collector namespace: $raw1 with 1 interface, $rawn with $NIFS (the kernel clones each GRE packet to every one)"
echo "decap with $NIFS interfaces relative to 1, frames per CPU-s: $(calc %.2f "$many_one_eff / ${decap_eff[64]}") (one session), $(calc %.2f "$many_all_eff / ${decap_eff[64]}") (spread over all $NIFS sessions);"
echo "  frames per second: $(calc %.2f "$many_one / ${decap_pps[64]}"), $(calc %.2f "$many_all / ${decap_pps[64]}") (generator-bound while erspand is not busy)"
echo "erspand (sender) counters after encap: $encap_tx"
if [ -n "$send_raw_eff" ]; then
	echo "the send alone, CPU per 64-byte packet (µs): raw GRE socket $(us "$send_raw_eff"), AF_PACKET with PACKET_QDISC_BYPASS $(us "$send_pkt_eff")"
	echo "  (each with the veth's transmit and the collector's receive up to its tc drop; encap adds a TAP read to the first)"
fi
echo "erspand (collector) counters at the end: $col_counters"
echo "busy: the measured process's CPU-s over the wall time they were counted in (from before the"
echo "generator starts to the end of the drain). No loss and busy well under"
echo "100%: the generator (whose CPU also runs the collector's receive softirq) was the"
echo "limit, and frames/CPU-s is the better estimate of what one core would take."
echo "allocations per frame: $allocs (${alloc_tests// /, }); BenchmarkInputBatch: $bench_allocs allocs per batch of 64"
echo
echo "multi-queue TAP, two queues with a writer thread and flows of its own each, relative to one queue (64 B; the median of its runs):"
echo "  on both CPUs, $(calc %.2f "${mq_pps[64]} / ${ceil_pps[64]}") of the frames per second, $(calc %.2f "${mq_eff[64]} / ${ceil_eff[64]}") of the frames per CPU-s;"
echo "  both threads on CPU $DUT_CPU (as the one-queue ceiling), $(calc %.2f "${mq1_pps[64]} / ${ceil_pps[64]}") of the frames per second, $(calc %.2f "${mq1_eff[64]} / ${ceil_eff[64]}") of the frames per CPU-s;"
echo "  erspand writes each TAP from one thread, on one queue"
echo "decap in sensor mode (tunneldev: the TPACKET_V3 ring), frames per CPU-s relative to the collector's (the eBPF ring):"
echo "  $(calc %.2f "${sensor_eff[64]} / ${decap_eff[64]}") (64 B), $(calc %.2f "${sensor_eff[1514]} / ${decap_eff[1514]}") (1514 B); the kernel copies into either ring in the receive softirq (the generator's CPU here)"
echo "decap with --rx-ring=false (recvmmsg), frames per CPU-s relative to the default (the eBPF ring): $(calc %.2f "${decap_recv_eff[64]} / ${decap_eff[64]}") (64 B), $(calc %.2f "${decap_recv_eff[1514]} / ${decap_eff[1514]}") (1514 B)"
[ $QUICK -eq 1 ] ||
	echo "decap with --io-uring, frames per CPU-s relative to the default: $(calc %.2f "${decap_uring_eff[64]} / ${decap_eff[64]}") (64 B), $(calc %.2f "${decap_uring_eff[1514]} / ${decap_eff[1514]}") (1514 B)"
echo "naive_speedup_64: erspand's decap frames per CPU-s over the naive loop's at 64 B, fed by the same"
echo "generator; frames per second: $(calc %.2f "${decap_pps[64]} / ${naive_pps[64]}") (equal when both keep up with the generator, so not a measure of either)"
echo
printf 'decap_pps_64=%s decap_pps_1514=%s decap_ratio_64=%s decap_ratio_1514=%s encap_pps_64=%s encap_ratio_64=%s naive_speedup_64=%s zero_loss_pps_64=%s allocs_per_frame=%s decap_sensor_ratio_64=%s decap_sensor_ratio_1514=%s decap_recvmmsg_ratio_64=%s decap_recvmmsg_ratio_1514=%s\n' \
	"${decap_pps[64]}" "${decap_pps[1514]}" \
	"$(calc %.2f "${decap_eff[64]} / ${ceil_eff[64]}")" "$(calc %.2f "${decap_eff[1514]} / ${ceil_eff[1514]}")" \
	"${encap_pps[64]}" "$(calc %.2f "${encap_eff[64]} / ${ceil_eff[64]}")" \
	"$(calc %.2f "${decap_eff[64]} / ${naive_eff[64]}")" "$zero_loss" "$allocs" \
	"$(calc %.2f "${sensor_eff[64]} / ${ceil_eff[64]}")" "$(calc %.2f "${sensor_eff[1514]} / ${ceil_eff[1514]}")" \
	"$(calc %.2f "${decap_recv_eff[64]} / ${ceil_eff[64]}")" "$(calc %.2f "${decap_recv_eff[1514]} / ${ceil_eff[1514]}")"
