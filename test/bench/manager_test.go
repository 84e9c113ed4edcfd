package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// manager is the operator's manager, run as its own process, as in a cluster, so its memory
// and its requests are its own.
type manager struct {
	cmd     *exec.Cmd
	metrics string
	pprof   string
	log     string
	exited  chan error
}

// buildManager builds the manager binary once per run, unless -manager names one.
func buildManager(b testing.TB) string {
	b.Helper()
	if *managerBin != "" {
		return *managerBin
	}
	out := filepath.Join(b.TempDir(), "manager")
	cmd := exec.Command("go", "build", "-o", out, ".")
	cmd.Dir = filepath.Join("..", "..")
	if raw, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("building the manager: %v\n%s", err, raw)
	}
	return out
}

func startManager(b testing.TB, bin, kubeconfig, kmsNamespace string) *manager {
	b.Helper()
	addr, pprofAddr := freeAddress(b), freeAddress(b)
	m := &manager{metrics: "http://" + addr + "/metrics", pprof: "http://" + pprofAddr + "/debug/pprof/profile",
		log: filepath.Join(b.TempDir(), "manager.log"), exited: make(chan error, 1)}
	logFile, err := os.Create(m.log)
	if err != nil {
		b.Fatal(err)
	}
	m.cmd = exec.Command(bin, "--kms-namespace="+kmsNamespace, "--metrics-bind-address="+addr, "--metrics-secure=false",
		"--health-probe-bind-address=0", "--pprof-bind-address="+pprofAddr, fmt.Sprintf("--max-concurrent-reconciles=%d", *workers))
	m.cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	m.cmd.Stdout, m.cmd.Stderr = logFile, logFile
	if err := m.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	go func() { m.exited <- m.cmd.Wait(); _ = logFile.Close() }()
	b.Cleanup(func() { m.stop(b) })
	// Ready once the controller is on the metrics endpoint.
	deadline := time.Now().Add(time.Minute)
	for {
		mt, err := m.scrape()
		if err == nil && mt.has("controller_runtime_active_workers", `controller="customermasterkey"`) {
			return m
		}
		if time.Now().After(deadline) {
			b.Fatalf("the manager did not start within a minute (metrics: %v)\n%s", err, m.tail())
		}
		select {
		case err := <-m.exited:
			b.Fatalf("the manager exited: %v\n%s", err, m.tail())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func freeAddress(b testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String()
}

// heap writes the manager's heap profile to file.
func (m *manager) heap(file string) error {
	return download(strings.TrimSuffix(m.pprof, "profile")+"heap", file)
}

// profile writes a CPU profile of the manager over the next d to file, in the background.
func (m *manager) profile(d time.Duration, file string) {
	go func() { _ = download(fmt.Sprintf("%s?seconds=%d", m.pprof, int(d.Seconds())), file) }()
}

// download writes what url answers to file.
func download(url, file string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	out, err := os.Create(file)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, resp.Body)
	// A profile is complete once the file is closed: its error counts like the copy's.
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

// stop ends the manager as Kubernetes does, with SIGTERM, and waits for it.
func (m *manager) stop(b testing.TB) {
	if m.cmd.ProcessState != nil {
		return
	}
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.exited: //nolint:errcheck // Its exit status after SIGTERM is not what is checked: that it stops is.
	case <-time.After(30 * time.Second):
		_ = m.cmd.Process.Kill()
		<-m.exited //nolint:errcheck // Killed: its exit status says so and nothing more.
		b.Errorf("the manager did not stop within 30s of SIGTERM")
	}
}

func (m *manager) tail() string {
	raw, _ := os.ReadFile(m.log)
	if len(raw) > 4000 {
		raw = raw[len(raw)-4000:]
	}
	return string(raw)
}

// memory is the manager's resident set now and at its peak, in MiB, from /proc.
func (m *manager) memory() (now, peak float64, err error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", m.cmd.Process.Pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(fields[1], 64)
		switch fields[0] {
		case "VmRSS:":
			now = kb / 1024
		case "VmHWM:":
			peak = kb / 1024
		}
	}
	return now, peak, nil
}

// metrics is one scrape of the manager's metrics endpoint: series (name and labels, as
// printed) to value.
type metrics map[string]float64

func (m *manager) scrape() (metrics, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.metrics, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil, fmt.Errorf("metrics: %s", resp.Status)
	}
	out := metrics{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// sum adds the series of a metric whose labels contain every one of match.
func (mt metrics) sum(name string, match ...string) float64 {
	var total float64
	for series, v := range mt {
		if mt.matches(series, name, match) {
			total += v
		}
	}
	return total
}

func (mt metrics) has(name string, match ...string) bool {
	for series := range mt {
		if mt.matches(series, name, match) {
			return true
		}
	}
	return false
}

func (metrics) matches(series, name string, match []string) bool {
	if series != name && !strings.HasPrefix(series, name+"{") {
		return false
	}
	for _, m := range match {
		if !strings.Contains(series, m) {
			return false
		}
	}
	return true
}

// requests is the manager's apiserver requests by "verb resource", from cmk_apiserver_requests_total.
func (mt metrics) requests() map[string]float64 {
	out := map[string]float64{}
	for series, v := range mt {
		if !strings.HasPrefix(series, "cmk_apiserver_requests_total{") {
			continue
		}
		out[label(series, "verb")+" "+label(series, "resource")] += v
	}
	return out
}

func label(series, name string) string {
	i := strings.Index(series, name+`="`)
	if i < 0 {
		return ""
	}
	rest := series[i+len(name)+2:]
	return rest[:strings.IndexByte(rest, '"')]
}

// cpuSeconds is the CPU time a process has used, user and system, from /proc.
func cpuSeconds(pid int) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command may hold spaces; the fields counted from after its closing parenthesis.
	fields := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+1:]))
	if len(fields) < 13 {
		return 0
	}
	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)
	return (utime + stime) / clockTicks
}

// clockTicks is USER_HZ, 100 on every Linux this runs on.
const clockTicks = 100

// apiserverPID finds the test's kube-apiserver: the one serving the port of its config.
func apiserverPID(host string) int {
	u, err := url.Parse(host)
	if err != nil {
		return 0
	}
	port := u.Port()
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		args := strings.Split(string(cmdline), "\x00")
		if len(args) > 0 && strings.HasSuffix(args[0], "kube-apiserver") && strings.Contains(string(cmdline), "--secure-port="+port) {
			return pid
		}
	}
	return 0
}
