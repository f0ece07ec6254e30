package main_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/casparianflow/casparian/internal/testenv"
)

// A sentinel that requires a shared secret (tcp://, ipc://) and mutual TLS
// (tls://): workers with the secret, over ipc:// and over tls:// with a
// certificate of the trusted CA, run every job; a worker with the wrong
// secret, one with none and one with another CA's certificate are refused
// at the handshake, never registered and never given a job; a publisher
// without the secret cannot deploy, with it can.
func TestAuthenticatedCluster(t *testing.T) {
	c := newCluster(t)
	bin := buildCLI(t)
	run := cliRunner(t, bin)
	secret := filepath.Join(c.dir, "secret")
	wrong := filepath.Join(c.dir, "wrong-secret")
	if out, _ := run(0, "keys", "secret", secret); !strings.Contains(out, "--secret-file "+secret) {
		t.Errorf("keys secret:\n%s", out)
	}
	run(0, "keys", "secret", wrong)
	if st, err := os.Stat(secret); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("secret file: %v %v", st, err)
	}
	run(1, "keys", "secret", secret) // never overwrites

	pki := testenv.NewPKI(t)
	tlsEP := "tls://" + freeAddr(t)
	c.startSentinel("--bind", tlsEP, "--secret-file", secret,
		"--tls-cert", pki.ServerCert, "--tls-key", pki.ServerKey, "--tls-ca", pki.CA)

	slow := filepath.Join(testenv.RepoRoot(), "cmd", "casparian", "testdata", "cluster", "slow_plugin.py")
	inputs := writeInputs(t, filepath.Join(c.dir, "in"), 12, func(int) string { return "0 4" })
	ids := c.enqueue("slow_plugin", slow, inputs)

	// The intruders first, so they would have the first pick of the jobs.
	noSecret, _ := c.startWorker("nopw", c.tcp)
	wrongSecret, _ := c.startWorker("badpw", c.tcp, "--secret-file", wrong)
	otherCA, _ := c.startWorker("badca", tlsEP, "--secret-file", secret,
		"--tls-cert", pki.OtherClientCert, "--tls-key", pki.OtherClientKey, "--tls-ca", pki.CA)
	waitFor(t, 30*time.Second, "the intruders to be refused", func() bool {
		return strings.Contains(noSecret.out.String(), "disagree on authentication") &&
			strings.Contains(wrongSecret.out.String(), "refused our credentials") &&
			strings.Contains(otherCA.out.String(), "reconnecting")
	})
	time.Sleep(time.Second)
	if n := c.counts()["RUNNING"] + c.counts()["COMPLETED"]; n != 0 {
		t.Fatalf("%d jobs dispatched to unauthenticated workers", n)
	}

	c.startWorker("okipc", c.ipc, "--secret-file", secret)
	c.startWorker("oktls", tlsEP, "--secret-file", secret,
		"--tls-cert", pki.ClientCert, "--tls-key", pki.ClientKey, "--tls-ca", pki.CA)
	c.waitDone(int64(len(ids)), 3*time.Minute)
	c.expectOnePerJob("", ids)
	owners := map[string]int{}
	for _, id := range ids {
		owners[workerOf(t, c, id)]++
	}
	if owners["okipc"]+owners["oktls"] != len(ids) {
		t.Errorf("jobs per worker = %v: only okipc and oktls may run jobs", owners)
	}
	if owners["oktls"] == 0 {
		t.Errorf("jobs per worker = %v: the mutual-TLS worker ran none", owners)
	}
	var registered []string
	rows, err := c.sql().Query(`SELECT COALESCE(worker_id, hostname) FROM cf_worker_node`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var h string
		if err := rows.Scan(&h); err != nil {
			t.Fatal(err)
		}
		registered = append(registered, h)
	}
	rows.Close()
	for _, h := range registered {
		if h == "nopw" || h == "badpw" || h == "badca" {
			t.Errorf("an unauthenticated worker was registered: %q (all: %v)", h, registered)
		}
	}
	m := scrape(t, c.metrics)
	if m[`casparian_transport_dropped_connections_total{reason="auth_failure"}`] < 3 {
		t.Errorf("auth failures on /metrics = %v, want >= 3", pick(m, `casparian_transport_dropped_connections_total{reason="auth_failure"}`))
	}

	// Publishing needs the secret too (on top of the signature).
	keys := filepath.Join(c.dir, "keys")
	run(0, "keys", "generate", "--dir", keys)
	run(0, "keys", "trust", "--database", c.db, "--name", "tester", filepath.Join(keys, "publisher.pub"))
	publish := []string{"publish", "--connect", c.tcp, "--key", filepath.Join(keys, "publisher.key"), "--publisher", "tester", slow}
	if _, errOut := run(1, publish...); !strings.Contains(errOut, "refused this publisher") {
		t.Errorf("publish without the secret: %s", errOut)
	}
	withSecret := append([]string{"publish", "--secret-file", secret}, publish[1:]...)
	if out, _ := run(0, withSecret...); !strings.Contains(out, "deployed slow_plugin") {
		t.Errorf("publish with the secret:\n%s", out)
	}
}
