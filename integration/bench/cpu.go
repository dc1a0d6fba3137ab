package main

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The machine is shared, so throughput alone mixes l4nft's cost with
// whatever else runs. The suite therefore also accounts CPU time: its own
// (this process, which runs the backends' servers, plus the load generator
// child) and the kernel's softirq time (where the balancer's packet
// processing runs), against the machine's total busy time from /proc/stat.
// CPU per operation is robust against other load; "other load" says how
// much of the machine something else used during a point.

// clockTick is the unit of /proc/stat (USER_HZ, 100 on Linux).
const clockTick = 10 * time.Millisecond

// cpuSample is a moment's CPU counters.
type cpuSample struct {
	at            time.Time
	busy, softirq time.Duration // machine-wide, from /proc/stat
	self          time.Duration // this process, user + system
}

func sampleCPU() cpuSample {
	s := cpuSample{at: time.Now()}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
		tick := func(i int) time.Duration {
			if i >= len(f) {
				return 0
			}
			n, _ := strconv.ParseInt(f[i], 10, 64)
			return time.Duration(n) * clockTick
		}
		s.busy = tick(1) + tick(2) + tick(3) + tick(6) + tick(7)
		s.softirq = tick(7)
	}
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) == nil {
		s.self = rusageTime(ru.Utime, ru.Stime)
	}
	return s
}

func rusageTime(u, s unix.Timeval) time.Duration {
	return time.Duration(u.Nano() + s.Nano())
}

// childCPU returns a finished child's user + system time.
func childCPU(usage any) time.Duration {
	ru, ok := usage.(*syscall.Rusage)
	if !ok || ru == nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuUse is the CPU accounting of one measurement.
type cpuUse struct {
	// Ours is this process's and the child's CPU time plus the machine's
	// softirq time, at most the machine's busy time.
	Ours time.Duration
	// Other is the rest of the machine's busy time: other processes.
	Other time.Duration
	// Wall is the elapsed time.
	Wall time.Duration
}

// cpuBetween accounts the interval from a to b, given the CPU time of
// children that ran (and ended) in it.
func cpuBetween(a, b cpuSample, children time.Duration) cpuUse {
	// Depending on the kernel's accounting, softirq time that interrupts
	// one of our tasks may also be charged to that task: the sum can count
	// some time twice, so it is capped at what the machine was busy.
	busy := b.busy - a.busy
	ours := min(busy, b.self-a.self+children+(b.softirq-a.softirq))
	other := busy - ours
	return cpuUse{Ours: ours, Other: other, Wall: b.at.Sub(a.at)}
}
