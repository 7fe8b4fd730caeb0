//go:build unix

package testenv

// Apache Kafka for tests: one broker in KRaft combined mode (broker and
// controller in one process), pinned in tools/kafka/pom.xml:
//
//	k := testenv.StartKafka(t)       // one broker shared by the test binary
//	// ... point the code under test at k.Brokers, use topics of its own ...
//	own := testenv.StartKafka(t, testenv.KafkaOptions{Own: true})
//	own.Stop(t); own.Restart(t)      // same ports, same data
//
// scripts/test.sh prepare (tools/kafka/install.sh) copies the jars from
// Maven Central (with mvn) under .cache; tests only look them up and fail
// with that hint when they are missing. The broker runs on the machine's
// Java 17 with a 256 MB heap, with PLAINTEXT, SASL_PLAINTEXT, SSL and
// CONTROLLER listeners on free loopback ports, replication factors 1, and
// its data and log in a scratch directory under the system temp dir. The
// SASL listener takes KafkaUser with KafkaPassword through PLAIN,
// SCRAM-SHA-256 and SCRAM-SHA-512; the SSL listener's certificate chains
// to the CA in Kafka.CAFile.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// The user that the broker's SASL listener (Kafka.SASLBrokers) knows, with
// every mechanism.
const (
	KafkaUser     = "ptop"
	KafkaPassword = "ptop-secret"
)

// KafkaStartTimeout is how long the broker may take to start.
const KafkaStartTimeout = 90 * time.Second

// KafkaOptions configures StartKafka.
type KafkaOptions struct {
	// Own starts a broker for this test alone, which it may Stop, Kill and
	// Restart; it is killed and its data removed when the test ends.
	// Otherwise the test gets the broker shared by the whole test binary
	// (started on first use; StopSharedKafka, or the binary's exit, ends
	// it), and should use topics of its own.
	Own bool
}

// Kafka is a broker process started for tests.
type Kafka struct {
	// Brokers is the bootstrap address, 127.0.0.1:PORT.
	Brokers string
	// SASLBrokers is the address of the SASL_PLAINTEXT listener, where
	// clients log in as KafkaUser.
	SASLBrokers string
	// TLSBrokers is the address of the SSL listener, whose certificate
	// (for 127.0.0.1 and localhost) chains to the CA in CAFile.
	TLSBrokers string
	// CAFile is the PEM certificate of the CA of the SSL listener.
	CAFile string
	// Port is the PLAINTEXT listener's port, SASLPort the SASL_PLAINTEXT
	// one's, TLSPort the SSL one's, ControllerPort the KRaft controller's,
	// all on 127.0.0.1.
	Port, SASLPort, TLSPort, ControllerPort int
	// ClusterID is the id the storage was formatted with.
	ClusterID string
	// Dir holds server.properties, log4j2.properties, data/ and
	// server.log.
	Dir string

	shared  bool
	home    string // the install, with libs/
	java    string
	env     []string
	logPath string

	mu   sync.Mutex
	proc *kafkaProc // nil when not running
}

type kafkaProc struct {
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited
	waitErr error         // set before done is closed
}

var sharedKafka struct {
	sync.Mutex
	k   *Kafka
	err error
}

// StartKafka returns the broker shared by the test binary, starting it on
// first use, or with KafkaOptions{Own: true} a broker of the test's own.
// It fails the test with the broker's log if the broker does not start,
// and with a clear message if Java or the jars are missing.
func StartKafka(t testing.TB, opts ...KafkaOptions) *Kafka {
	t.Helper()
	Integration(t, "starts a Kafka broker")
	var o KafkaOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	if o.Own {
		k, err := newKafka()
		if err != nil {
			t.Fatalf("testenv: %v", err)
		}
		t.Cleanup(func() {
			k.kill(syscall.SIGKILL, 0)
			os.RemoveAll(k.Dir)
		})
		if err := k.startFresh(); err != nil {
			t.Fatalf("testenv: %v\n%s", err, k.LogTail())
		}
		return k
	}
	sharedKafka.Lock()
	defer sharedKafka.Unlock()
	if sharedKafka.k == nil && sharedKafka.err == nil {
		k, err := newKafka()
		if err == nil {
			if err = k.startFresh(); err != nil {
				err = fmt.Errorf("%w\n%s", err, k.LogTail())
				os.RemoveAll(k.Dir)
			}
		}
		if err != nil {
			sharedKafka.err = err
		} else {
			k.shared = true
			sharedKafka.k = k
		}
	}
	if sharedKafka.err != nil {
		t.Fatalf("testenv: shared Kafka broker: %v", sharedKafka.err)
	}
	return sharedKafka.k
}

// StopSharedKafka kills the shared broker, if one was started, and removes
// its directory. Call it from TestMain after m.Run; otherwise the broker
// dies with the test binary (Linux) and its directory is removed by a
// later test binary.
func StopSharedKafka() {
	sharedKafka.Lock()
	defer sharedKafka.Unlock()
	if k := sharedKafka.k; k != nil {
		k.kill(syscall.SIGKILL, 0)
		os.RemoveAll(k.Dir)
		sharedKafka.k = nil
	}
}

// Stop stops the broker with SIGTERM (a controlled shutdown) and waits for
// it to exit (SIGKILL after 30 s). It does nothing if the broker is not
// running.
func (k *Kafka) Stop(t testing.TB) {
	t.Helper()
	k.mustOwn(t, "Stop")
	if err := k.kill(syscall.SIGTERM, 30*time.Second); err != nil {
		t.Fatalf("testenv: stop Kafka: %v", err)
	}
}

// Kill kills the broker with SIGKILL and waits for it to exit.
func (k *Kafka) Kill(t testing.TB) {
	t.Helper()
	k.mustOwn(t, "Kill")
	if err := k.kill(syscall.SIGKILL, 0); err != nil {
		t.Fatalf("testenv: kill Kafka: %v", err)
	}
}

// Restart starts the broker again on the same ports with the same data,
// stopping it first (SIGTERM) if it runs, and waits until it serves.
func (k *Kafka) Restart(t testing.TB) {
	t.Helper()
	k.mustOwn(t, "Restart")
	k.Stop(t)
	var err error
	// The ports may linger for a moment after the old process died.
	for deadline := time.Now().Add(10 * time.Second); ; {
		if err = k.start(); err == nil || !k.portTaken() || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("testenv: restart Kafka: %v\n%s", err, k.LogTail())
	}
}

func (k *Kafka) mustOwn(t testing.TB, what string) {
	t.Helper()
	if k.shared {
		t.Fatalf("testenv: %s of the shared Kafka broker: start one with KafkaOptions{Own: true}", what)
	}
}

// Running reports whether the broker process is alive.
func (k *Kafka) Running() bool {
	k.mu.Lock()
	p := k.proc
	k.mu.Unlock()
	return p != nil && !exited(p.done)
}

// PID is the broker's process id (java's), or 0 when it is not running.
func (k *Kafka) PID() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.proc == nil {
		return 0
	}
	return k.proc.cmd.Process.Pid
}

// Client returns a franz-go client of the broker, with opts added, closed
// when the test ends.
func (k *Kafka) Client(t testing.TB, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	c, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(k.Brokers)}, opts...)...)
	if err != nil {
		t.Fatalf("testenv: kafka client: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// LogTail returns the last lines of the broker's output, for failure
// messages.
func (k *Kafka) LogTail() string {
	return logTail(k.logPath, "Kafka")
}

// newKafka finds the installed jars and java and makes the scratch
// directory.
func newKafka() (*Kafka, error) {
	home, err := KafkaHome()
	if err != nil {
		return nil, err
	}
	jh, err := javaHome()
	if err != nil {
		return nil, err
	}
	sweepStaleDirs("ptop-kafka-")
	dir, err := os.MkdirTemp("", fmt.Sprintf("ptop-kafka-%d-", os.Getpid()))
	if err != nil {
		return nil, err
	}
	k := &Kafka{
		Dir:     dir,
		home:    home,
		java:    filepath.Join(jh, "bin", "java"),
		logPath: filepath.Join(dir, "server.log"),
	}
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		// JAVA_TOOL_OPTIONS makes java print a line; KAFKA_* are read by
		// Kafka's scripts only, but keep them out all the same.
		if name == "JAVA_TOOL_OPTIONS" || name == "CLASSPATH" || strings.HasPrefix(name, "KAFKA_") {
			continue
		}
		k.env = append(k.env, kv)
	}
	if err := os.WriteFile(filepath.Join(dir, "log4j2.properties"), []byte(kafkaLog4j), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return k, nil
}

// kafkaLog4j logs warnings and the broker's start and stop: without a
// config Kafka logs nothing at all.
const kafkaLog4j = `status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = out
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
`

// startFresh formats the storage and starts the broker on free ports,
// trying other ports when the ones picked were taken meanwhile.
func (k *Kafka) startFresh() error {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if k.Port, err = FreePort(); err != nil {
			return err
		}
		if k.ControllerPort, err = FreePort(); err != nil {
			return err
		}
		if k.SASLPort, err = FreePort(); err != nil {
			return err
		}
		if k.TLSPort, err = FreePort(); err != nil {
			return err
		}
		if distinct := map[int]bool{k.Port: true, k.ControllerPort: true, k.SASLPort: true, k.TLSPort: true}; len(distinct) < 4 {
			continue
		}
		k.Brokers = "127.0.0.1:" + strconv.Itoa(k.Port)
		k.SASLBrokers = "127.0.0.1:" + strconv.Itoa(k.SASLPort)
		k.TLSBrokers = "127.0.0.1:" + strconv.Itoa(k.TLSPort)
		if err = k.format(); err != nil {
			return err
		}
		if err = k.start(); err == nil || !k.portTaken() {
			return err
		}
	}
	return err
}

// format writes server.properties for k's ports and formats a fresh data
// directory (kafka.tools.StorageTool format --standalone).
func (k *Kafka) format() error {
	data := filepath.Join(k.Dir, "data")
	if err := os.RemoveAll(data); err != nil {
		return err
	}
	if k.CAFile == "" {
		if err := writeTestCerts(k.Dir); err != nil {
			return err
		}
		k.CAFile = filepath.Join(k.Dir, "ca.pem")
	}
	props := k.serverProperties(data)
	if err := os.WriteFile(filepath.Join(k.Dir, "server.properties"), []byte(props), 0o644); err != nil {
		return err
	}
	if k.ClusterID == "" {
		k.ClusterID = NewKafkaClusterID()
	}
	scram := "[name=" + KafkaUser + ",password=" + KafkaPassword + "]"
	out, err := k.command("kafka.tools.StorageTool", "format", "--standalone", "-t", k.ClusterID, "-c", filepath.Join(k.Dir, "server.properties"),
		"--add-scram", "SCRAM-SHA-256="+scram, "--add-scram", "SCRAM-SHA-512="+scram).CombinedOutput()
	if err != nil {
		return fmt.Errorf("kafka.tools.StorageTool format: %w\n%s", err, out)
	}
	return nil
}

// serverProperties is the configuration of a one-node KRaft broker on
// 127.0.0.1 with its data in dataDir: broker and controller in one process,
// replication factors 1, the first consumer of a group served at once
// (scripts/services.sh writes the same, without SASL and SSL). The
// SASL_PLAINTEXT listener takes KafkaUser: PLAIN from the JAAS config,
// SCRAM from the credentials that the storage was formatted with. The SSL
// listener's key and certificate are in server.pem (writeTestCerts).
func (k *Kafka) serverProperties(dataDir string) string {
	p, c := strconv.Itoa(k.Port), strconv.Itoa(k.ControllerPort)
	listeners := "PLAINTEXT://127.0.0.1:" + p + ",CONTROLLER://127.0.0.1:" + c +
		",SASL_PLAINTEXT://127.0.0.1:" + strconv.Itoa(k.SASLPort) + ",SSL://127.0.0.1:" + strconv.Itoa(k.TLSPort)
	return `process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:` + c + `
listeners=` + listeners + `
advertised.listeners=` + listeners + `
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL
inter.broker.listener.name=PLAINTEXT
log.dirs=` + dataDir + `
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_` + KafkaUser + `="` + KafkaPassword + `";
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.ssl.ssl.keystore.type=PEM
listener.name.ssl.ssl.keystore.location=` + filepath.Join(k.Dir, "server.pem") + `
`
}

// writeTestCerts writes into dir a CA (ca.pem) and, signed by it, a server
// certificate for 127.0.0.1 and localhost with its PKCS#8 key
// (server.pem, key first, as Kafka's PEM keystore reads it).
func writeTestCerts(dir string) error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "ptop test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caTmpl, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	server := append(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	if err := os.WriteFile(filepath.Join(dir, "server.pem"), server, 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "ca.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644)
}

// NewKafkaClusterID returns a random cluster id in Kafka's form: 16 bytes
// in URL-safe base64 without padding, not starting with '-' (as Kafka's
// own Uuid.randomUuid: the storage tool would take it for an option).
func NewKafkaClusterID() string {
	for {
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			panic(err)
		}
		if id := base64.RawURLEncoding.EncodeToString(b[:]); id[0] != '-' {
			return id
		}
	}
}

// command is java running a main class of the Kafka jars.
func (k *Kafka) command(class string, args ...string) *exec.Cmd {
	cmd := exec.Command(k.java, append([]string{
		"-Xms256m", "-Xmx256m",
		"-Djava.awt.headless=true",
		"-Dlog4j2.configurationFile=" + filepath.Join(k.Dir, "log4j2.properties"),
		"-cp", filepath.Join(k.home, "libs", "*"),
		class,
	}, args...)...)
	cmd.Dir = k.Dir
	cmd.Env = k.env
	return cmd
}

func (k *Kafka) portTaken() bool {
	b, err := os.ReadFile(k.logPath)
	return err == nil && (bytes.Contains(b, []byte("BindException")) || bytes.Contains(b, []byte("Address already in use")))
}

// start launches the broker on k's ports and waits until it serves. On
// failure the process is killed and the error returned.
func (k *Kafka) start() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.proc != nil {
		return errors.New("kafka is already running")
	}
	logFile, err := os.OpenFile(k.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close() // the child has its own copy
	cmd := k.command("kafka.Kafka", filepath.Join(k.Dir, "server.properties"))
	fmt.Fprintf(logFile, "--- testenv: %s\n", strings.Join(cmd.Args, " "))
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = sysProcAttr()
	began := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", k.java, err)
	}
	p := &kafkaProc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	k.proc = p
	if err := k.waitReady(p); err != nil {
		signalGroup(cmd, syscall.SIGKILL)
		<-p.done
		k.proc = nil
		return err
	}
	fmt.Fprintf(logFile, "--- testenv: Kafka ready after %v\n", time.Since(began).Round(time.Millisecond))
	return nil
}

// waitReady asks the broker for its cluster's brokers until it lists
// itself, the process exits or KafkaStartTimeout passes.
func (k *Kafka) waitReady(p *kafkaProc) error {
	c, err := kgo.NewClient(kgo.SeedBrokers(k.Brokers), kgo.RetryTimeout(time.Second))
	if err != nil {
		return err
	}
	defer c.Close()
	adm := kadm.NewClient(c)
	deadline := time.Now().Add(KafkaStartTimeout)
	var lastErr error
	for {
		if exited(p.done) {
			return fmt.Errorf("kafka on port %d exited during startup: %v", k.Port, p.waitErr)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		md, err := adm.BrokerMetadata(ctx)
		cancel()
		if err == nil && len(md.Brokers) > 0 && md.Controller >= 0 {
			if exited(p.done) { // make sure it is our process that answered
				return fmt.Errorf("kafka on port %d exited during startup: %v", k.Port, p.waitErr)
			}
			return nil
		}
		if err == nil {
			err = fmt.Errorf("metadata lists %d brokers, controller %d", len(md.Brokers), md.Controller)
		}
		lastErr = err
		if time.Now().After(deadline) {
			return fmt.Errorf("kafka did not serve at %s within %v (last: %v)", k.Brokers, KafkaStartTimeout, lastErr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// kill signals the process group and waits for the exit; with grace > 0 it
// sends SIGKILL if the process is still alive after grace.
func (k *Kafka) kill(sig syscall.Signal, grace time.Duration) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	p := k.proc
	if p == nil {
		return nil
	}
	k.proc = nil
	signalGroup(p.cmd, sig)
	return awaitExit(p.cmd, p.done, sig, grace)
}

var kafkaHome struct {
	sync.Mutex
	home string
}

// KafkaHome returns the directory of the installed Kafka jars (libs/).
// Tests never fetch them: scripts/test.sh prepare does
// (tools/kafka/install.sh); a missing install is an error that says so.
func KafkaHome() (string, error) {
	kafkaHome.Lock()
	defer kafkaHome.Unlock()
	if kafkaHome.home != "" {
		return kafkaHome.home, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	if _, err := exec.LookPath("java"); err != nil && os.Getenv("JAVA_HOME") == "" {
		return "", errors.New("java not found: the Kafka broker needs a Java 17 runtime (Debian: apt-get install openjdk-17-jre-headless)")
	}
	script := filepath.Join(root, "tools", "kafka", "install.sh")
	cmd := exec.Command("bash", script, "--check")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s --check: %w\n%s", script, err, stderr.String())
	}
	home := strings.TrimSpace(string(out))
	if home == "" {
		return "", fmt.Errorf("%s --check printed no directory\n%s", script, stderr.String())
	}
	kafkaHome.home = home
	return home, nil
}
