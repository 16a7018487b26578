// Command capfilter is an OCI runtime that hands every call to runc after removing, from the
// container's process, each capability that this process's own bounding set lacks.
//
// Why: on the project machine the sandbox's capability bounding set has no CAP_SYS_RESOURCE. A
// privileged container asks for every capability, runc cannot grant one it does not hold, and the
// container fails with "unable to apply caps: operation not permitted". kind runs every node as a
// privileged container, and kube-proxy and virt-handler run privileged inside the nodes, so both
// dockerd (on the machine) and containerd (inside each node) are configured to use this runtime.
// On an ordinary host the bounding set is full and nothing is removed: the call is runc's, unchanged.
//
// Without CAP_SYS_RESOURCE a process may not lower its oom_score_adj either, and runc fails with
// "failed to update /proc/self/oom_score_adj: Permission denied" (the kubelet asks -998 for critical
// pods). capfilter then raises the container's oomScoreAdj to its own, as containerd's
// restrict_oom_score_adj does for rootless containers.
//
// runc reads the container's process from <bundle>/config.json on create and run, and from the
// file given by --process on exec; those are the only inputs rewritten. The real runc is found from
// CAPFILTER_RUNC, else the first of the usual paths that exists.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// capNames lists the Linux capabilities by number (linux/capability.h).
var capNames = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
	"CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
	"CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
	"CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
	"CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
	"CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
	"CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
}

var runcCandidates = []string{"/usr/local/sbin/runc", "/usr/sbin/runc", "/usr/bin/runc", "/usr/local/bin/runc"}

func main() {
	missing, err := missingCapabilities()
	if err == nil && len(missing) > 0 {
		err = rewriteInputs(os.Args[1:], missing)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "capfilter: %v\n", err)
		os.Exit(1)
	}
	runc, err := realRunc()
	if err != nil {
		fmt.Fprintf(os.Stderr, "capfilter: %v\n", err)
		os.Exit(1)
	}
	args := append([]string{runc}, os.Args[1:]...)
	if err := syscall.Exec(runc, args, os.Environ()); err != nil {
		fmt.Fprintf(os.Stderr, "capfilter: exec %s: %v\n", runc, err)
		os.Exit(1)
	}
}

// missingCapabilities names the known capabilities that are not in this process's bounding set.
func missingCapabilities() (map[string]bool, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		line := scanner.Text()
		if !strings.HasPrefix(line, "CapBnd:") {
			continue
		}
		bounding, err := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(line, "CapBnd:")), 16, 64)
		if err != nil {
			return nil, fmt.Errorf("parse CapBnd %q: %w", line, err)
		}
		missing := map[string]bool{}
		for bit, name := range capNames {
			if bounding&(1<<uint(bit)) == 0 {
				missing[name] = true
			}
		}
		return missing, nil
	}
	return nil, fmt.Errorf("no CapBnd line in /proc/self/status")
}

// rewriteInputs finds the process spec runc is about to read and removes the missing capabilities.
func rewriteInputs(args []string, missing map[string]bool) error {
	command := ""
	bundle, process := "", ""
	for i := 0; i < len(args); i++ {
		arg := args[i]
		value := func(flag string) (string, bool) {
			if arg == flag && i+1 < len(args) {
				i++
				return args[i], true
			}
			if strings.HasPrefix(arg, flag+"=") {
				return strings.TrimPrefix(arg, flag+"="), true
			}
			return "", false
		}
		if v, ok := value("--bundle"); ok {
			bundle = v
		} else if v, ok := value("-b"); ok {
			bundle = v
		} else if v, ok := value("--process"); ok {
			process = v
		} else if v, ok := value("-p"); ok && command == "exec" {
			process = v
		} else if command == "" && (arg == "create" || arg == "run" || arg == "exec") {
			command = arg
		}
	}
	switch command {
	case "create", "run":
		if bundle == "" {
			bundle = "."
		}
		return rewriteFile(filepath.Join(bundle, "config.json"), missing, true)
	case "exec":
		if process != "" {
			return rewriteFile(process, missing, false)
		}
	}
	return nil
}

func rewriteFile(path string, missing map[string]bool, isBundle bool) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var doc map[string]any
	decoder := json.NewDecoder(bytes.NewReader(raw))
	decoder.UseNumber() // keep 64-bit limits exact
	if err := decoder.Decode(&doc); err != nil {
		return fmt.Errorf("parse %s: %w", path, err)
	}
	proc := doc
	if isBundle {
		p, ok := doc["process"].(map[string]any)
		if !ok {
			return nil
		}
		proc = p
	}
	changed := false
	if isBundle && missing["CAP_SYS_RESOURCE"] {
		if clamped, ok := clampOOMScoreAdj(proc); ok {
			changed = clamped
		}
	}
	caps, _ := proc["capabilities"].(map[string]any)
	for set, list := range caps {
		names, ok := list.([]any)
		if !ok {
			continue
		}
		kept := make([]any, 0, len(names))
		for _, name := range names {
			if s, ok := name.(string); ok && missing[s] {
				changed = true
				continue
			}
			kept = append(kept, name)
		}
		caps[set] = kept
	}
	if !changed {
		return nil
	}
	out, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	info, err := os.Stat(path)
	if err != nil {
		return err
	}
	return os.WriteFile(path, out, info.Mode().Perm())
}

// clampOOMScoreAdj raises process.oomScoreAdj to this process's own value when it asks for less.
func clampOOMScoreAdj(proc map[string]any) (bool, bool) {
	requested, ok := proc["oomScoreAdj"].(json.Number)
	if !ok {
		return false, false
	}
	want, err := requested.Int64()
	if err != nil {
		return false, false
	}
	raw, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil {
		return false, false
	}
	own, err := strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64)
	if err != nil || want >= own {
		return false, true
	}
	proc["oomScoreAdj"] = json.Number(strconv.FormatInt(own, 10))
	return true, true
}

func realRunc() (string, error) {
	if path := os.Getenv("CAPFILTER_RUNC"); path != "" {
		return path, nil
	}
	self, _ := os.Executable()
	for _, candidate := range runcCandidates {
		if candidate == self {
			continue
		}
		if info, err := os.Stat(candidate); err == nil && !info.IsDir() {
			return candidate, nil
		}
	}
	return "", fmt.Errorf("no runc found in %v (set CAPFILTER_RUNC)", runcCandidates)
}
