// HTTP load for benchmarks/soak.py's crossed figure: `clients` connections to 127.0.0.1 (never
// anywhere else), each sending GET /work and reading the answer, one request at a time over
// keep-alive, for `seconds`; then one JSON line, as loadgen.py prints. Raw HTTP/1.1 in Go: it
// takes under a fifth of a CPU for ~2 000 requests/s where loadgen.py takes a third, and what it
// takes comes out of the CPU of the app it shares a CPU with.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

var request = []byte("GET /work HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")

// exchange sends one request and reads its answer's headers and body.
func exchange(conn net.Conn, reader *bufio.Reader) error {
	if _, err := conn.Write(request); err != nil {
		return err
	}
	status, err := reader.ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(status, "HTTP/1.1 200") {
		return fmt.Errorf("status %q", strings.TrimSpace(status))
	}
	length := -1
	for {
		line, err := reader.ReadString('\n')
		if err != nil {
			return err
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			break
		}
		name, value, found := strings.Cut(line, ":")
		if found && strings.EqualFold(name, "Content-Length") {
			length, err = strconv.Atoi(strings.TrimSpace(value))
			if err != nil {
				return err
			}
		}
	}
	if length < 0 {
		return errors.New("no Content-Length")
	}
	_, err = reader.Discard(length)
	return err
}

func client(port int, deadline time.Time, requests, failures *int64, firstError *atomic.Value) {
	var conn net.Conn
	var reader *bufio.Reader
	for time.Now().Before(deadline) {
		if conn == nil {
			var err error
			conn, err = net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 10*time.Second)
			if err != nil {
				atomic.AddInt64(failures, 1)
				firstError.CompareAndSwap(nil, err.Error())
				time.Sleep(10 * time.Millisecond)
				continue
			}
			reader = bufio.NewReaderSize(conn, 64*1024)
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		if err := exchange(conn, reader); err != nil {
			atomic.AddInt64(failures, 1)
			firstError.CompareAndSwap(nil, err.Error())
			conn.Close()
			conn = nil
			continue
		}
		atomic.AddInt64(requests, 1)
	}
	if conn != nil {
		conn.Close()
	}
}

func main() {
	port := flag.Int("port", 0, "the app's port on 127.0.0.1")
	clients := flag.Int("clients", 8, "connections")
	seconds := flag.Float64("seconds", 3, "how long to send")
	flag.Parse()
	var requests, failures int64
	var firstError atomic.Value
	start := time.Now()
	deadline := start.Add(time.Duration(*seconds * float64(time.Second)))
	var wait sync.WaitGroup
	for i := 0; i < *clients; i++ {
		wait.Add(1)
		go func() {
			defer wait.Done()
			client(*port, deadline, &requests, &failures, &firstError)
		}()
	}
	wait.Wait()
	first, _ := firstError.Load().(string)
	json.NewEncoder(os.Stdout).Encode(map[string]any{
		"requests": requests, "errors": failures, "first_error": first,
		"seconds": time.Since(start).Seconds(),
	})
}
