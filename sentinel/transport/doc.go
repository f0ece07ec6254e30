// Package transport provides hardened zmq4 transports for the sentinel's
// ZeroMQ endpoints.
//
// # Threat
//
// github.com/go-zeromq/zmq4 v0.17.0 trusts its peers completely:
//
//   - Unbounded frames: Conn.read allocates make([]byte, size) as soon as a
//     ZMTP frame header announces size, before a single body byte arrives.
//     One peer announcing a 4 GiB frame costs 4 GiB of heap (or an OOM kill).
//     Many frames flagged MORE accumulate in one message without bound.
//   - Handshake in the accept loop: socket.accept calls zmq4.Open (greeting +
//     security handshake) synchronously inside the accept loop, with no
//     deadline. One client that connects and stays silent blocks every later
//     connection forever. A failed Open does not even close the net.Conn.
//
// # What this package enforces
//
// Register installs two zmq4 transports that wrap every accepted and dialled
// net.Conn:
//
//	user endpoint        hardened endpoint     network
//	tcp://host:port  ->  ctcp://host:port      "tcp"
//	ipc:///path      ->  cipc:///path          "unix"
//
// (zmq4 selects a transport by the text before "://", so the hardened
// transports need their own scheme names; Endpoint does the rewrite.)
//
// On every connection:
//
//   - Handshake deadline (Limits.HandshakeTimeout, default 5 s): a read/write
//     deadline is armed when the conn is created and a timer closes the conn
//     unless the handshake finished in time. Finished means: the peer's READY
//     (or INITIATE, PLAIN) command was received completely and zmq4 then
//     started reading the next frame, which it only does if its Open
//     succeeded (PUSH sockets, which never read, finish at READY). This also
//     closes conns that zmq4 abandons without closing after a failed Open
//     (e.g. incompatible peer socket type). The deadline is then cleared.
//   - Non-blocking accept: the listener runs its own accept loop and, in a
//     goroutine per connection, sends the server greeting and pre-reads the
//     peer's 64-byte greeting and first command frame (NULL mechanism: READY)
//     before handing the conn to zmq4. zmq4's own greeting write is then
//     swallowed and its reads are replayed from the buffer, so the handshake
//     inside zmq4's accept loop never waits on the network. Silent clients
//     only ever occupy their own goroutine, at most
//     Limits.MaxPendingHandshakes of them (default 256; excess conns are
//     closed at once).
//   - Frame cap (Limits.MaxFrameSize, default 64 MiB + 16): every byte zmq4
//     reads passes through a streaming ZMTP 3.x parser (greeting, flags byte,
//     1- or 8-byte size, body). A frame header announcing more than the cap
//     closes the connection and fails the Read before zmq4 can allocate.
//   - Message cap (Limits.MaxMessageSize, default 256 MiB + 64): total body
//     bytes of the frames of one multipart message.
//
// Violations are counted (see Stats) and surface to zmq4 as a non-timeout
// net.Error, which makes zmq4 drop the connection.
//
// # Use
//
// In main, once, before any socket is created:
//
//	if err := transport.Register(transport.DefaultLimits()); err != nil { ... }
//	ep, err := transport.Endpoint("tcp://0.0.0.0:5555") // "ctcp://0.0.0.0:5555"
//	router.Listen(ep)   // and dealer.Dial(ep) on the worker side
//
// Only the NULL security mechanism is supported on the listening side: the
// pre-handshake sends a NULL greeting, and a socket configured with another
// mechanism fails every incoming handshake with an error.
//
// # Limits that this package cannot fix in zmq4
//
//   - A frame under the cap is still allocated in full when its header
//     arrives, so a peer can pin up to MaxFrameSize per connection by
//     trickling the body; zmq4 has no connection limit, so the total is
//     MaxFrameSize times the number of connections. Keep the listener on
//     loopback/ipc or behind a firewall, and keep MaxFrameSize modest.
//   - After the handshake there is no read deadline or heartbeat; a peer that
//     stops reading can block zmq4's sends (its send path has no per-peer
//     queue or HWM). Application-level timeouts are still required.
//   - zmq4's accept loop spins on Accept errors. Our listener never returns
//     one except after Close: it backs off on temporary errors (e.g. EMFILE)
//     in its own loop.
//   - PLAIN/CURVE handshakes beyond the first command are not pre-read, and
//     hardened listeners only speak NULL (see above).
package transport
