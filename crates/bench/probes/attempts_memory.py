# Attempt-list memory probe: a server binary on a fresh embedded database, 500 attempts
# with ~200 KB request bodies and 64 KiB response bodies, then one and eight concurrent
# `attempts?limit=500`; prints the answers' size and the server's RSS.
#
#   python3 crates/bench/probes/attempts_memory.py target/release/sonzai-webhooks
import http.server, json, os, socket, subprocess, sys, tempfile, threading, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
binary = sys.argv[1]
data = tempfile.mkdtemp()
class R(http.server.BaseHTTPRequestHandler):
    def do_POST(s):
        s.rfile.read(int(s.headers["Content-Length"]))
        body = b'"' * 65536
        s.send_response(200); s.send_header("Content-Length", str(len(body))); s.end_headers(); s.wfile.write(body)
    def log_message(self, *a): pass
recv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), R)
threading.Thread(target=recv.serve_forever, daemon=True).start()
port = socket.socket(); port.bind(("127.0.0.1", 0)); p = port.getsockname()[1]; port.close()
srv = subprocess.Popen([binary, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{p}", "--allow-private-targets", "--log", "warn"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
key = None
for line in srv.stdout:
    for w in line.split():
        if w.startswith("sk_"): key = w.strip("'\""); break
    if key: break
base = f"http://127.0.0.1:{p}/api/v1"
def call(method, path, body=None):
    req = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r: return r.read()
for _ in range(50):
    try: call("GET", "/webhooks"); break
    except Exception: time.sleep(0.1)
call("PUT", "/webhooks/big.event", {"webhook_url": f"http://127.0.0.1:{recv.server_address[1]}/hook"})
filler = "x" * 190_000
for i in range(500): call("POST", "/events", {"event_type": "big.event", "data": {"i": i, "f": filler}})
deadline = time.time() + 120
while time.time() < deadline:
    if len(json.loads(call("GET", "/webhooks/big.event/attempts?limit=500"))["attempts"] or []) >= 500: break
    time.sleep(0.5)
def rss(): return int([l for l in open(f"/proc/{srv.pid}/status") if l.startswith("VmRSS")][0].split()[1]) // 1024
def hwm(): return int([l for l in open(f"/proc/{srv.pid}/status") if l.startswith("VmHWM")][0].split()[1]) // 1024
time.sleep(1)
print(f"before listing: RSS {rss()} MiB")
one = call("GET", "/webhooks/big.event/attempts?limit=500")
print(f"one limit=500 answer: {len(one)/1e6:.1f} MB, {len(json.loads(one)['attempts'])} attempts, has_more {json.loads(one).get('has_more')}; peak RSS {hwm()} MiB")
with ThreadPoolExecutor(8) as ex: sizes = list(ex.map(lambda _: len(call("GET", "/webhooks/big.event/attempts?limit=500")), range(8)))
print(f"8 at once: {sum(sizes)/1e6:.1f} MB in all; peak RSS {hwm()} MiB")
srv.terminate(); srv.wait(timeout=30)
