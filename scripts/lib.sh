# shellcheck shell=bash
# Shell functions the scripts share; sourced, not run.

# wait_until WHAT LOG CMD...: run CMD every 0.1 s until it succeeds, 5 s
# at most; if it never does, say that WHAT did not happen, show LOG and
# return 1.
wait_until() {
	local what=$1 logf=$2; shift 2
	for _ in $(seq 50); do "$@" 2>/dev/null && return 0; sleep 0.1; done
	echo "$what: not within 5 s; $logf:" >&2
	cat "$logf" >&2 2>/dev/null || true
	return 1
}

# await_exit TENTHS PID...: wait up to TENTHS tenths of a second for the
# processes to end; sets alive to those that have not.
await_exit() {
	local n=$1 p; shift
	for _ in $(seq "$n"); do
		alive=""
		for p in "$@"; do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done
		# return 0, not a bare return: in an EXIT trap a bare return gives
		# the status the script exited with, which set -e then takes for
		# a failure and ends the cleanup.
		[ -n "$alive" ] || return 0
		sleep 0.1
	done
}

# end_pids TENTHS SIGNAL PID...: send SIGNAL to the processes, wait up to
# TENTHS tenths of a second for them to end, then SIGKILL those that have
# not (a process ignoring SIGNAL must not hold a cleanup for ever).
end_pids() {
	local n=$1 sig=$2; shift 2
	alive=""
	[ $# -gt 0 ] || return 0
	kill -"$sig" "$@" 2>/dev/null || true
	await_exit "$n" "$@"
	# shellcheck disable=SC2086 # one PID per word
	[ -z "$alive" ] || kill -KILL $alive 2>/dev/null || true
}

# remove_netns NS SIGNAL: send SIGNAL to every process in network namespace
# NS (found by namespace, as a killed script's daemons have no PID on
# record), wait up to 2 s for them to end, SIGKILL those that have not,
# then delete NS; sets killed to their PIDs. Deleting a namespace whose processes live on would only
# unname it: they would keep it and its links.
remove_netns() {
	local ns=$1 sig=$2
	killed=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ' || true)
	killed=${killed% }
	# shellcheck disable=SC2086 # one PID per word
	end_pids 20 "$sig" $killed
	ip netns del "$ns" 2>/dev/null || true
}

# remove_left NS WHY: remove_netns NS KILL for a namespace that a run no
# longer running left behind, saying so, and why (WHY), on stderr.
remove_left() {
	remove_netns "$1" KILL
	echo "removed $1 ($2)${killed:+, killed $killed}" >&2
}

# remove_test_leftovers: a test run that panicked or was killed leaves its
# namespaces (named erspt-u-PID-N and erspt-e2e-PID-N-ROLE after the go
# test process) and the daemons in them: those of test processes that no
# longer exist go, by name and by the PIDs in them; a run in progress
# keeps its own.
remove_test_leftovers() {
	local ns pid
	for ns in $(ip netns list | awk '{print $1}' | grep -E '^erspt-(u|e2e)-[0-9]+-' || true); do
		pid=$(echo "$ns" | cut -d- -f3)
		kill -0 "$pid" 2>/dev/null && continue
		remove_left "$ns" "test process $pid is gone"
	done
}

# need_tools COMMAND:PACKAGE...: install with apt the Debian packages whose
# commands are missing (one apt run for all of them), saying which.
need_tools() {
	local pair missing=()
	for pair in "$@"; do
		command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
	done
	[ ${#missing[@]} -gt 0 ] || return 0
	echo "installing ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# one_at_a_time NAME LOCKFILE: hold an flock on LOCKFILE on fd 9 for the
# rest of this shell, or exit saying another NAME holds it. The lock goes
# with the shell: start background processes with 9>&-, else a daemon left
# by a killed run would inherit fd 9 and hold the lock for ever.
one_at_a_time() {
	exec 9>"$2"
	flock -n 9 || { echo "$1: another $1 is running (it holds $2)" >&2; exit 1; }
}
