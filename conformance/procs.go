package conformance

import (
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
)

// descendants returns the pids of the live (not zombie) processes that
// descend from this one, with their command names. Linux only (nil
// elsewhere).
func descendants() map[int]string {
	if runtime.GOOS != "linux" {
		return nil
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	parent := map[int]int{}
	name := map[int]string{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || close < open {
			continue
		}
		f := strings.Fields(s[close+1:])
		if len(f) < 2 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		parent[pid] = ppid
		name[pid] = s[open+1 : close]
	}
	self := os.Getpid()
	out := map[int]string{}
	for pid := range parent {
		for p, hops := parent[pid], 0; p > 1 && hops < 64; p, hops = parent[p], hops+1 {
			if p == self {
				out[pid] = name[pid]
				break
			}
		}
	}
	return out
}

// newProcs lists the processes of now that are not in before.
func newProcs(before, now map[int]string) []string {
	var out []string
	for pid, n := range now {
		if _, ok := before[pid]; !ok {
			out = append(out, strconv.Itoa(pid)+" ("+n+")")
		}
	}
	sort.Strings(out)
	return out
}

// openFiles counts this process's open file descriptors (-1 when unknown).
func openFiles() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}
