"""How a served dashboard holds up under hostile visitors, as JSON: /liveness latency during each attack and the
server's memory during a gzip-bomb upload.

    python benchmarks/hostile_bench.py --artifacts artifacts/default --out benchmarks/results/hostile_default.json

Starts `desa serve` on a free port (a separate process, as on a lab server), drives headless Chromium
(Debian's /usr/bin/chromium through Playwright) and, for each attack, polls /liveness every 50 ms from another
thread while the attack is handled:

- ``xss_link``: ``?target=<img src=x onerror=...>`` (the script must not run: ``script_ran``);
- ``power_bomb_link``: ``?selection=[["new","query","prot_days < 9**9**9**9"]]`` (froze the server before);
- ``power_bomb_typed``: the same expression typed into the Populations tab;
- ``malformed_steps``: a selection spec with unknown maps, wrong arity and non-finite corners;
- ``gzip_bomb_upload``: 1 GiB of zeros gzip-compressed to ~1 MB, uploaded as a light curve and embedded;
  the server process's resident memory is sampled every 20 ms (``rss_peak_mb`` vs ``rss_before_mb``);
- ``baseline``: an ordinary page open (what a new visitor costs anyway).

Latencies are wall times on the machine the benchmark runs on (record its load: ``load_average``).
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROME_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Poller:
    """/liveness latencies and server RSS sampled in background threads while an attack runs."""

    def __init__(self, url: str, pid: int):
        import psutil
        self.url, self.proc = url, psutil.Process(pid)

    def run(self, action, settle_s: float = 2.0) -> dict:
        lat, rss, stop = [], [], threading.Event()

        def poll():
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    urllib.request.urlopen(self.url + "/liveness", timeout=10).read()
                    lat.append(time.perf_counter() - t0)
                except OSError:
                    lat.append(float("inf"))
                time.sleep(0.05)

        def mem():
            while not stop.is_set():
                rss.append(self.proc.memory_info().rss)
                time.sleep(0.02)
        threads = [threading.Thread(target=poll), threading.Thread(target=mem)]
        rss_before = self.proc.memory_info().rss
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        try:
            extra = action() or {}
            handled_s = time.perf_counter() - t0
            time.sleep(settle_s)
        finally:
            stop.set()
            for t in threads:
                t.join()
        lat_ms = sorted(1000 * v for v in lat)
        return {"handled_s": round(handled_s, 3), "liveness_polls": len(lat_ms),
                "liveness_p50_ms": round(lat_ms[len(lat_ms) // 2], 1) if lat_ms else None,
                "liveness_max_ms": round(lat_ms[-1], 1) if lat_ms else None,
                "rss_before_mb": round(rss_before / 2**20, 1), "rss_peak_mb": round(max(rss) / 2**20, 1),
                **extra}


def main(argv=None) -> int:
    a = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a.add_argument("--artifacts", default="artifacts/default")
    a.add_argument("--out", default="benchmarks/results/hostile_default.json")
    args = a.parse_args(argv)
    from playwright.sync_api import sync_playwright

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "desa_core.cli", "serve", "--artifacts", args.artifacts,
                             "--port", str(port)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while True:
            try:
                if urllib.request.urlopen(url + "/liveness", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.seek(0)
                raise SystemExit(f"server did not start:\n{log.read().decode()[-2000:]}")
            time.sleep(0.5)
        poller = Poller(url, proc.pid)
        results = {}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS)

            def open_page(path):
                pg = browser.new_page(viewport={"width": 1500, "height": 1100})
                pg.goto(url + path, timeout=120_000)
                pg.wait_for_selector(".bk-events", state="attached", timeout=120_000)
                return pg

            results["baseline"] = poller.run(lambda: open_page("/").close())

            def xss():
                pg = open_page("/?target=" + quote('<img src=x onerror="window.__xss=1">'))
                pg.locator("text=could not restore the view").wait_for(timeout=60_000)
                ran = pg.evaluate("window.__xss") is not None
                pg.close()
                return {"script_ran": ran}
            results["xss_link"] = poller.run(xss)

            def bomb_link():
                pg = open_page("/?selection=" + quote(json.dumps([["new", "query", "prot_days < 9**9**9**9"]])))
                pg.locator("text=could not restore the view").wait_for(timeout=60_000)
                pg.close()
            results["power_bomb_link"] = poller.run(bomb_link)

            pg = open_page("/")

            def bomb_typed():
                pg.locator(".bk-tab", has_text="Populations").click()
                pg.get_by_label("Expression over catalogue columns").fill("prot_days < 9**9**9**9")
                pg.get_by_role("button", name="Select matching stars").click()
                pg.get_by_text("power's exponent").wait_for(timeout=60_000)
            results["power_bomb_typed"] = poller.run(bomb_typed)

            def malformed():
                spec = [["new", "box", "nosuchmap", 0, 1, 0, 1], ["and", "box", "umap", 1], ["sub", "box", "cmd", 1e999, 0, 0, 1]]
                p2 = open_page("/?selection=" + quote(json.dumps(spec)))
                p2.locator("text=could not restore the view").wait_for(timeout=60_000)
                p2.close()
            results["malformed_steps"] = poller.run(malformed)

            raw = io.BytesIO()
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9) as g:
                block = b"\0" * (1 << 20)
                for _ in range(1024):
                    g.write(block)
            bomb = Path(tempfile.mkdtemp()) / "bomb_llc.fits.gz"
            bomb.write_bytes(raw.getvalue())

            def gzip_upload():
                pg.locator(".bk-tab", has_text="Similarity search").click()
                pg.locator("input[type=file]").first.set_input_files(str(bomb))
                time.sleep(3)   # chunks travel over the websocket
                pg.get_by_role("button", name="Embed upload and search").click()
                pg.get_by_text("decompresses to more than").wait_for(timeout=60_000)
                return {"upload_bytes": bomb.stat().st_size, "decompressed_bytes": 1 << 30}
            results["gzip_bomb_upload"] = poller.run(gzip_upload)
            pg.close()
            browser.close()
        import platform
        out = {"artifacts": str(args.artifacts), "machine": platform.node(), "cpus": os.cpu_count(),
               "load_average": os.getloadavg(), "server_alive": proc.poll() is None, "attacks": results,
               "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        print(json.dumps(out, indent=2))
        return 0
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main())
