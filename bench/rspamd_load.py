# Load for rspamd alone: N messages like the bench's, C concurrent clients, POST /checkv2 at URL;
# prints msg/s, latency and the CPU of the rspamd PIDs given (main and workers) per message.
# python3 bench/rspamd_load.py 300 8 http://127.0.0.1:11333 $MAIN $(pgrep -P $MAIN)
import os, random, time, base64, threading, urllib.request, json, sys
N = int(sys.argv[1]); C = int(sys.argv[2]); url = sys.argv[3]
words = "the quarterly numbers are attached please summarise them for team meeting agenda budget review".split()
def msg(i):
    text = " ".join(random.choice(words) for _ in range(400))
    att = base64.encodebytes(os.urandom(4000)).decode().replace("\n", "\r\n")
    return (f"From: Bench <bench{i}@sender.example>\r\nTo: agent@example.com\r\nSubject: bench {i}\r\n"
            f"Message-ID: <{i}.{random.random()}@sender.example>\r\nDate: Mon, 7 Dec 2026 03:00:00 +0000\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n"
            f"{text}\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=a.bin\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n{att}\r\n--b--\r\n").encode()
msgs = [msg(i) for i in range(N)]
def cpu(pids):
    t = 0
    for p in pids:
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            t += int(f[11]) + int(f[12])
        except OSError: pass
    return t / os.sysconf("SC_CLK_TCK")
pids = [int(x) for x in sys.argv[4:]]
lat = []; lock = threading.Lock(); idx = [0]; actions = {}
def worker():
    while True:
        with lock:
            if idx[0] >= N: return
            i = idx[0]; idx[0] += 1
        req = urllib.request.Request(url + "/checkv2", data=msgs[i], method="POST",
            headers={"From": f"bench{i}@sender.example", "Rcpt": "agent@example.com", "IP": "127.0.0.1", "Helo": "sender.example",
                     "SPF": '{"result":"pass"}', "DKIM": '{"result":"na"}', "DMARC": '{"result":"na"}'})
        t = time.time(); body = json.load(urllib.request.urlopen(req)); d = time.time() - t
        with lock:
            lat.append(d); actions[body["action"]] = actions.get(body["action"], 0) + 1
c0 = cpu(pids); t0 = time.time()
ts = [threading.Thread(target=worker) for _ in range(C)]
[t.start() for t in ts]; [t.join() for t in ts]
el = time.time() - t0; c1 = cpu(pids)
lat.sort()
print(f"{N} msgs c={C}: {N/el:.0f} msg/s, p50 {lat[len(lat)//2]*1000:.1f} ms, p99 {lat[int(len(lat)*0.99)]*1000:.1f} ms, rspamd CPU {(c1-c0)/N*1000:.2f} ms/msg, actions {actions}")
