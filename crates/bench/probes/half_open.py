# Half-open connection probe: a server binary under `ulimit -n 4096` on a fresh embedded
# database, then up to 5,000 connections whose request head never ends, then /healthz
# and an authenticated call; prints whether they answered and how long they took.
#
#   python3 crates/bench/probes/half_open.py target/release/sonzai-webhooks
import resource, socket, subprocess, sys, tempfile, time, urllib.request
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
binary = sys.argv[1]
data = tempfile.mkdtemp()
s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
srv = subprocess.Popen(["prlimit", "--nofile=4096:4096", binary, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{p}", "--log", "error"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
key = None
for line in srv.stdout:
    for w in line.split():
        if w.startswith("sk_"): key = w.strip("'\""); break
    if key: break
time.sleep(0.5)
conns = []
failed = 0
for i in range(5000):
    try:
        c = socket.create_connection(("127.0.0.1", p), timeout=2)
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        conns.append(c)
    except OSError:
        failed += 1
        if failed >= 5:
            break
print(f"server under ulimit -n 4096: opened {len(conns)} half-open connections ({failed} refused or failed)")
def timed(path, auth=False):
    t = time.time()
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{p}{path}", headers={"Authorization": f"Bearer {key}"} if auth else {})
        with urllib.request.urlopen(req, timeout=10) as r: return f"{r.status} in {(time.time()-t)*1000:.1f} ms"
    except Exception as e: return f"failed after {(time.time()-t)*1000:.0f} ms: {e}"
print("/healthz:", timed("/healthz"))
print("GET /api/v1/webhooks:", timed("/api/v1/webhooks", True))
for c in conns: c.close()
srv.terminate(); srv.wait(timeout=30)
