"""A libzmq (pyzmq) DEALER that speaks protocol v4 to a sentinel, the way the
original Python workers did, optionally with ZeroMQ PLAIN credentials.

usage: plain_peer.py ENDPOINT [PASSWORD]
Prints "reply OPCODE" for the sentinel's first message after IDENTIFY, or
"no reply" if none came within 5 s.
"""
import json
import struct
import sys

import zmq

endpoint = sys.argv[1]
password = sys.argv[2] if len(sys.argv) > 2 else None
ctx = zmq.Context()
sock = ctx.socket(zmq.DEALER)
sock.setsockopt(zmq.LINGER, 0)
if password is not None:
    sock.plain_username = b"libzmq-peer"
    sock.plain_password = password.encode()
sock.connect(endpoint)
payload = json.dumps({"capabilities": ["*"], "worker_id": "libzmq-peer"}).encode()
# v4 header: version, opcode IDENTIFY (1), flags, job_id, payload length.
sock.send_multipart([struct.pack(">BBHQI", 4, 1, 0, 0, len(payload)), payload])
if sock.poll(5000):
    frames = sock.recv_multipart()
    print("reply", frames[0][1])
else:
    print("no reply")
sock.close()
ctx.term()
