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
//   - Head-of-line blocking on send: a socket writes to a peer
//     synchronously while holding a socket-wide lock (ROUTER: one mutex
//     around Conn.SendMsg; DEALER/PUSH/PUB likewise), with no per-peer
//     queue or HWM. Once a peer stops reading and its TCP buffers fill,
//     net.Conn.Write blocks, and with it every Send of the socket, to every
//     peer.
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
//   - Asynchronous bounded sends: once the handshake is finished, Write
//     copies its bytes (once, into pooled 64 KiB blocks) onto a per-conn
//     FIFO and returns at once; a writer goroutine per conn drains the FIFO
//     in order, coalescing queued chunks into one writev of up to 1 MiB. So
//     zmq4's socket lock is never held across network I/O, and a stalled
//     peer no longer delays Sends to the others.
//     Limits.MaxSendBuffer (default 65 MiB, one maximal frame plus headroom)
//     bounds the bytes queued or being written for one peer: a Write that
//     would exceed it closes the conn (Stats.SendOverflows) and fails with
//     KindSendBufferFull. Limits.WriteTimeout (default 30 s) is the deadline
//     of every network write: a peer that accepts no bytes for that long is
//     dropped (Stats.WriteTimeouts; later Writes fail with KindWriteTimeout).
//     Close returns at once but flushes what is queued, for at most
//     WriteTimeout, before closing the socket (so "Send, then Close" still
//     delivers); reads fail at once. Handshake writes stay synchronous.
//     MaxSendBuffer < 0 disables the queue (zmq4's blocking behaviour).
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
//   - After the handshake there is no read deadline or heartbeat: a peer
//     that sends nothing is never dropped by this package. Application-level
//     heartbeats are still required.
//   - The send queue replaces back-pressure with a drop: a successful Send
//     only means the bytes were queued, and a sender that outpaces even a
//     healthy peer by more than MaxSendBuffer (e.g. one multipart message
//     larger than MaxSendBuffer, or a burst of large ones on a slow link)
//     gets that peer dropped. Queued bytes of a dropped peer are lost. A
//     peer that keeps accepting a few bytes per WriteTimeout is not dropped
//     by the deadline, only by overflow if the sender keeps sending; a peer
//     that stops is dropped between one and two WriteTimeouts after the
//     last byte it accepted. Memory is up to MaxSendBuffer (plus two
//     blocks) per connection.
//   - The ROUTER Send whose Write overflows returns the error; later Sends
//     to that peer fail with zmq4.ErrClosedConn until zmq4 has removed the
//     conn, and are then silently discarded (as for any unknown identity).
//   - zmq4's accept loop spins on Accept errors. Our listener never returns
//     one except after Close: it backs off on temporary errors (e.g. EMFILE)
//     in its own loop.
//   - PLAIN/CURVE handshakes beyond the first command are not pre-read, and
//     hardened listeners only speak NULL (see above).
package transport
