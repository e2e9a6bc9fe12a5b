"""Holds N open event streams (GET /v1/inboxes/{id}/events) on a running mxhook and reports its
memory before and after, then sends one mail over SMTP and checks every stream gets it.

usage: event_streams.py MXHOOK_BINARY N
Starts the binary on a fresh directory with SQLite, `http.event_streams_per_key` raised to N + 1 (the warm-up stream).
"""

import os
import re
import select
import smtplib
import socket
import subprocess
import sys
import tempfile
import time

binary, count = sys.argv[1], int(sys.argv[2])
data = tempfile.mkdtemp(prefix="mxhook-streams-")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


smtp_port, http_port = free_port(), free_port()
with open(os.path.join(data, "mxhook.toml"), "w") as f:
    f.write(f"""
[smtp]
listen = "127.0.0.1:{smtp_port}"
greet_pause_s = 0
[http]
listen = "127.0.0.1:{http_port}"
admin_keys = ["bench-key"]
event_streams_per_key = {count + 1}
[storage]
path = "{data}/mail"
[database]
url = "sqlite://{data}/mxhook.db"
[auth]
enabled = false
[[inbox]]
id = "agent"
addresses = ["agent@example.com"]
""")
server = subprocess.Popen([binary, "serve", "--config", os.path.join(data, "mxhook.toml")],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def rss_kib():
    with open(f"/proc/{server.pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def open_stream():
    s = socket.create_connection(("127.0.0.1", http_port))
    s.sendall(b"GET /v1/inboxes/agent/events HTTP/1.1\r\nHost: x\r\n"
              b"Authorization: Bearer bench-key\r\nAccept: text/event-stream\r\n\r\n")
    return s


try:
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", http_port)).close()
            break
        except OSError:
            time.sleep(0.1)
    # Warm up: one stream and one mail, so lazily built state is not counted per stream.
    warm = open_stream()
    time.sleep(1)
    before = rss_kib()
    streams = [open_stream() for _ in range(count)]
    time.sleep(2)
    heads = [s.recv(65536) for s in streams]
    assert all(b" 200 " in h.split(b"\r\n")[0] for h in heads), heads[0]
    time.sleep(1)
    held = rss_kib()
    sent = time.time()
    with smtplib.SMTP("127.0.0.1", smtp_port) as smtp:
        smtp.sendmail("a@sender.example", ["agent@example.com"],
                      "From: a@sender.example\r\nTo: agent@example.com\r\nSubject: to every stream\r\n\r\nhello\r\n")
    got, pending, buffers = 0, set(streams), {s: b"" for s in streams}
    deadline = time.time() + 30
    while pending and time.time() < deadline:
        ready, _, _ = select.select(list(pending), [], [], 1)
        for s in ready:
            buffers[s] += s.recv(65536)
            if b"to every stream" in buffers[s]:
                pending.discard(s)
                got += 1
    spread = time.time() - sent
    after = rss_kib()
    print(f"streams={count} rss_before_kib={before} rss_held_kib={held} "
          f"per_stream_kib={(held - before) / count:.1f} rss_after_mail_kib={after} "
          f"delivered_to={got}/{count} all_within_s={spread:.2f}")
finally:
    server.terminate()
    server.wait(timeout=30)
