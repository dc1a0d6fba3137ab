package ha

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/ti-mo/conntrack"
)

// The VRRP timers of the tests: VRRPv3 adverts every advertInt, so the
// backup declares the master dead after 3 × advertInt plus its skew time.
const advertInt = "0.2"

// proc is a daemon started inside a namespace in a process group of its
// own; t.Cleanup stops the whole group.
type proc struct {
	name string
	log  string
	cmd  *exec.Cmd
	done chan struct{}
}

// startProc runs name with args inside ns, logging to dir/logName. The
// process gets SIGKILL if the test process dies (the starting thread stays
// locked until the process exits, so Pdeathsig fires only then).
func startProc(t *testing.T, ns *netNS, logName string, name string, args ...string) *proc {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), logName)
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatalf("failed to create log: %v", err)
	}
	p := &proc{name: logName, log: logPath, done: make(chan struct{})}
	p.cmd = ns.Command(context.Background(), name, args...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		err := p.cmd.Start()
		started <- err
		if err == nil {
			p.cmd.Wait()
		}
		logf.Close()
		close(p.done)
	}()
	if err := <-started; err != nil {
		t.Fatalf("failed to start %s: %v", name, err)
	}
	t.Cleanup(func() {
		p.stop(syscall.SIGTERM)
		if t.Failed() || os.Getenv("HA_KEEP_LOGS") != "" {
			b, _ := os.ReadFile(logPath)
			t.Logf("--- %s log:\n%s", logName, lastLines(string(b), 60))
		}
	})
	return p
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("[... %d lines]", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// stop sends sig to the process group, and SIGKILL after 5 s if it has
// not ended; it returns once the process has ended.
func (p *proc) stop(sig syscall.Signal) {
	select {
	case <-p.done:
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL) // children left behind, if any
		return
	default:
	}
	syscall.Kill(-p.cmd.Process.Pid, sig)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
}

// running reports whether the process has not ended.
func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// haNode is a balancer with its daemons.
type haNode struct {
	*node
	dir        string
	ctConf     string // conntrackd.conf, "" without conntrackd
	notifyLog  string
	keepalived *proc
	conntrackd *proc
}

const keepalivedConf = `global_defs {
	router_id l4nft-{{.Name}}
	vrrp_version 3
	script_user root
	vrrp_garp_master_delay 1
	vrrp_garp_master_repeat 2
}

vrrp_instance l4nft {
	state BACKUP
	nopreempt
	interface front
	virtual_router_id 51
	priority {{.Priority}}
	advert_int {{.AdvertInt}}
	unicast_src_ip {{.Self}}
	unicast_peer {
		{{.Peer}}
	}
	virtual_ipaddress {
		{{.VIP}}/24 dev front
		{{.Gateway}}/24 dev back
	}
	track_interface {
		back
	}
	notify {{.Notify}}
}
`

const conntrackdConf = `Sync {
	Mode FTFW {
		ResendQueueSize 131072
		PurgeTimeout 30
		StartupResync on
		DisableExternalCache on
	}
	UDP {
		IPv4_address {{.SyncSelf}}
		IPv4_Destination_Address {{.SyncPeer}}
		Port 3780
		Interface sync
		SndSocketBuffer 1249280
		RcvSocketBuffer 1249280
		Checksum on
	}
}

General {
	HashSize 32768
	HashLimit 131072
	LogFile {{.Dir}}/conntrackd-events.log
	Syslog off
	LockFile {{.Dir}}/conntrackd.lock
	UNIX {
		Path {{.Dir}}/conntrackd.ctl
	}
	NetlinkBufferSize 2097152
	NetlinkBufferSizeMaxGrowth 8388608
	Filter From Userspace {
		Protocol Accept {
			TCP
			UDP
		}
		Address Ignore {
			IPv4_address 127.0.0.1
			IPv4_address {{.SyncSelf}}
			IPv4_address {{.SyncPeer}}
			IPv4_address {{.Self}}
			IPv4_address {{.Peer}}
			IPv4_address {{.BackSelf}}
			IPv4_address {{.BackPeer}}
		}
	}
}
`

// notifyScript is the shipped notify script, run by a wrapper that points
// it at the test's files.
func notifyScript(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs("../../agent/examples/ha/l4nft-ha-notify.sh")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("failed to find the shipped notify script: %v", err)
	}
	return p
}

func render(t *testing.T, path, text string, data any) {
	t.Helper()
	var b bytes.Buffer
	if err := template.Must(template.New(path).Parse(text)).Execute(&b, data); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// setupDaemons writes the node's configuration files; withConntrackd
// false leaves conntrackd out (the notify script then runs /bin/true).
func (b *bed) setupDaemons(t *testing.T, n *node, withConntrackd bool) *haNode {
	t.Helper()
	dir := filepath.Join(b.dir, n.name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	peer := 1 - n.idx
	data := map[string]any{
		"Name": n.name, "Priority": 150 - 50*n.idx, "AdvertInt": advertInt,
		"Self": frontAddr[n.idx], "Peer": frontAddr[peer],
		"BackSelf": backAddr[n.idx], "BackPeer": backAddr[peer],
		"SyncSelf": syncAddr[n.idx], "SyncPeer": syncAddr[peer],
		"VIP": vip, "Gateway": gateway, "Dir": dir,
		"Notify": filepath.Join(dir, "notify.sh"),
	}
	h := &haNode{node: n, dir: dir, notifyLog: filepath.Join(dir, "notify.log")}
	conntrackd := "/usr/sbin/conntrackd"
	if withConntrackd {
		h.ctConf = filepath.Join(dir, "conntrackd.conf")
		render(t, h.ctConf, conntrackdConf, data)
	} else {
		conntrackd = "/bin/true"
	}
	wrapper := fmt.Sprintf("#!/bin/sh\nCONNTRACKD=%s CONNTRACKD_CONFIG=%s CONNTRACKD_LOCK=%s L4NFT_HA_LOG=%s exec %s \"$@\"\n",
		conntrackd, h.ctConf, filepath.Join(dir, "conntrackd.lock"), h.notifyLog, notifyScript(t))
	if err := os.WriteFile(filepath.Join(dir, "notify.sh"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	render(t, filepath.Join(dir, "keepalived.conf"), keepalivedConf, data)
	return h
}

func requireTools(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Fatalf("%s is not installed (Debian package %s; integration/test.sh installs it): %v", n, n, err)
		}
	}
}

// startConntrackd runs conntrackd in the foreground in the node's
// namespace and waits until it answers on its socket.
func (h *haNode) startConntrackd(t *testing.T) {
	t.Helper()
	os.Remove(filepath.Join(h.dir, "conntrackd.lock"))
	h.conntrackd = startProc(t, h.ns, "conntrackd-"+h.name+".log", "conntrackd", "-C", h.ctConf)
	err := eventually(10*time.Second, func() error {
		if !h.conntrackd.running() {
			return errors.New("conntrackd exited")
		}
		_, err := h.ctctl("-s")
		return err
	})
	if err != nil {
		t.Fatalf("failed to start conntrackd on %s: %v", h.name, err)
	}
}

// ctctl runs a conntrackd client command against the node's daemon.
func (h *haNode) ctctl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := h.ns.Command(ctx, "conntrackd", append([]string{"-C", h.ctConf}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("conntrackd %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// flowKey names a flow from the client: UDP or TCP, and its port.
type flowKey struct {
	udp  bool
	port uint16
}

// farmFlows returns the node's kernel conntrack entries of connections to
// the farm (the VIP and its port), keyed by protocol and client port, with
// their marks.
func (n *node) farmFlows() (map[flowKey]uint32, error) {
	var flows []conntrack.Flow
	err := n.ns.Do(func() error {
		c, err := conntrack.Dial(nil)
		if err != nil {
			return err
		}
		defer c.Close()
		flows, err = c.Dump(nil)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: dumping conntrack: %w", n.name, err)
	}
	marks := map[flowKey]uint32{}
	for _, f := range flows {
		o := f.TupleOrig
		if o.IP.DestinationAddress == vip && o.Proto.DestinationPort == servicePort {
			marks[flowKey{o.Proto.Protocol == syscall.IPPROTO_UDP, o.Proto.SourcePort}] = f.Mark
		}
	}
	return marks, nil
}

// startKeepalived runs keepalived (VRRP only) in the foreground.
func (h *haNode) startKeepalived(t *testing.T) {
	t.Helper()
	// A killed keepalived leaves its pid files, and refuses to start
	// again if their pids were reused since.
	for _, f := range []string{"keepalived.pid", "vrrp.pid"} {
		os.Remove(filepath.Join(h.dir, f))
	}
	h.keepalived = startProc(t, h.ns, "keepalived-"+h.name+".log", "keepalived",
		"--dont-fork", "--log-console", "--log-detail", "--no-syslog", "--vrrp",
		"-f", filepath.Join(h.dir, "keepalived.conf"),
		"-p", filepath.Join(h.dir, "keepalived.pid"),
		"-r", filepath.Join(h.dir, "vrrp.pid"))
}

// waitMaster waits until the node holds the VIP and the gateway and its
// notify script finished the MASTER sequence.
func (h *haNode) waitMaster(timeout time.Duration) error {
	return eventually(timeout, func() error {
		if ok, err := h.hasAddr(vip); err != nil || !ok {
			return fmt.Errorf("%s does not hold %s (%v)", h.name, vip, err)
		}
		if ok, err := h.hasAddr(gateway); err != nil || !ok {
			return fmt.Errorf("%s does not hold %s (%v)", h.name, gateway, err)
		}
		if h.ctConf != "" && !strings.Contains(h.notifyText(), "conntrack state committed") {
			return fmt.Errorf("%s's notify script has not committed yet", h.name)
		}
		return nil
	})
}

// waitBackup waits until the notify script reported BACKUP.
func (h *haNode) waitBackup(timeout time.Duration) error {
	return eventually(timeout, func() error {
		if !h.keepalived.running() {
			return fmt.Errorf("keepalived on %s exited", h.name)
		}
		if !strings.Contains(h.notifyText(), "is now BACKUP") {
			return fmt.Errorf("%s has not become backup", h.name)
		}
		return nil
	})
}

func (h *haNode) notifyText() string {
	b, _ := os.ReadFile(h.notifyLog)
	return string(b)
}

// eventually calls fn every 20 ms until it returns nil, at most timeout.
func eventually(timeout time.Duration, fn func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v: %w", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
