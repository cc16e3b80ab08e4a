#!/usr/bin/env python3
"""Open N idle PostgreSQL client connections and hold them (used by scripts/bench.sh).

Each connection sends a StartupMessage (protocol 3.0, no password: the server must trust the
user) and reads until ReadyForQuery ('Z'). When every connection has logged in (or failed), a
line "ok=N failed=M error=..." is written to --ready-file and the connections are held open
until the process gets SIGTERM or SIGINT.

    idle_clients.py --port 6432 --count 5000 --user postgres --db postgres --ready-file F
"""
import argparse
import os
import selectors
import signal
import socket
import struct
import sys
import time


def startup_message(user, db):
    body = struct.pack("!i", 196608)
    for k, v in (("user", user), ("database", db), ("application_name", "bench_idle")):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


class Conn:
    __slots__ = ("sock", "buf", "state", "error")

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.state = "connecting"
        self.error = None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--user", default="postgres")
    ap.add_argument("--db", default="postgres")
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--in-flight", type=int, default=100, help="logins in progress at once")
    ap.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args()

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))

    msg = startup_message(args.user, args.db)
    sel = selectors.DefaultSelector()
    done, failed, first_error = [], 0, ""
    started = 0
    in_flight = 0
    deadline = time.monotonic() + args.timeout

    def start_one():
        nonlocal started, in_flight
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        c = Conn(s)
        try:
            s.connect_ex((args.host, args.port))
        except OSError as e:  # e.g. EMFILE
            c.error = str(e)
            s.close()
            return c
        sel.register(s, selectors.EVENT_WRITE, c)
        started += 1
        in_flight += 1
        return c

    def finish(c, err):
        nonlocal in_flight, failed, first_error
        sel.unregister(c.sock)
        in_flight -= 1
        if err is None:
            c.state = "ready"
            done.append(c)
        else:
            failed += 1
            if not first_error:
                first_error = err
            try:
                c.sock.close()
            except OSError:
                pass

    while (started < args.count or in_flight) and not stop and time.monotonic() < deadline:
        while started < args.count and in_flight < args.in_flight:
            c = start_one()
            if c.error:
                failed += 1
                first_error = first_error or c.error
                started += 1
                # Out of descriptors: stop opening more.
                args.count = started
                break
        for key, ev in sel.select(timeout=1.0):
            c = key.data
            if c.state == "connecting":
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    finish(c, os.strerror(err))
                    continue
                try:
                    c.sock.sendall(msg)  # tiny; fits the socket buffer
                except OSError as e:
                    finish(c, str(e))
                    continue
                c.state = "login"
                sel.modify(c.sock, selectors.EVENT_READ, c)
                continue
            try:
                data = c.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError as e:
                finish(c, str(e))
                continue
            if not data:
                finish(c, "connection closed during login")
                continue
            c.buf += data
            # Walk the backend messages: 'R' auth, 'S' params, 'K' key, 'E' error, 'Z' ready.
            while len(c.buf) >= 5:
                kind = c.buf[0:1]
                (length,) = struct.unpack("!i", c.buf[1:5])
                if len(c.buf) < 1 + length:
                    break
                body = c.buf[5 : 1 + length]
                c.buf = c.buf[1 + length :]
                if kind == b"E":
                    fields = [f for f in body.split(b"\0") if f]
                    text = next((f[1:].decode(errors="replace") for f in fields if f[:1] == b"M"), "error")
                    finish(c, text)
                    break
                if kind == b"R":
                    (code,) = struct.unpack("!i", body[:4])
                    if code != 0:
                        finish(c, f"server asks for a password (auth code {code}); trust needed")
                        break
                if kind == b"Z":
                    finish(c, None)
                    break

    with open(args.ready_file + ".tmp", "w") as f:
        f.write(f"ok={len(done)} failed={failed} error={first_error!r}\n")
    os.rename(args.ready_file + ".tmp", args.ready_file)
    sys.stdout.flush()
    while not stop:
        time.sleep(0.2)
    for c in done:
        c.sock.close()


if __name__ == "__main__":
    main()
