#!/usr/bin/env python3
"""What sealcast adds to a oneM2M group fan-out, beside the same fan-out of
plain content by the same ACME CSEs in the same run (issue 14, "Measure").

Starts an ACME IN-CSE and MN-CSE on free loopback ports, then for each size:

  plain     N receiver AEs on the MN-CSE (one HTTP notification listener for
            all), a container and a subscription each, two <group>s of the
            fire-safety demo's sizes (doors + gateway + mallory, extinguishers
            + gateway + mallory); one plain contentInstance POSTed through
            both groups' fopt at once; time from the POSTs to the last
            notification. Median of --runs.
  sealcast  `sealcast demo fire-safety --transport onem2m` with a fleet whose
            door group has N doors, through the same CSEs: from the gateway
            issuing "unlock" and "extinguish" to the last door or
            extinguisher having verified, persisted and executed it (the
            demo's timeline). Median of --runs.

Prints a table and, with --json, one JSON object. Usage:

  python3 benches/onem2m/fanout.py --acme-python acme/bin/python \
      --sealcast target/release/sealcast --sizes 20 50 --runs 5
"""

import argparse
import http.server
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


COMMON = (
    "databaseType=memory\nlogLevel=warning\nnetworkInterface=127.0.0.1\ncseHost=127.0.0.1\n"
    "serviceProviderID=//sealcast.example\nadminID=CAdmin\nsecret=sealcast-bench-secret\n"
)
TAIL = "[console]\nheadless=true\n[textui]\nenable=false\n[webui]\nenable=false\n"


def start_cses(python, base):
    in_port, mn_port = free_port(), free_port()
    in_id, mn_id = f"id-in-{in_port}", f"id-mn-{mn_port}"
    procs = []
    for name, ini in [
        ("cse-in", f"[basic.config]\ncseType=IN\ncseID={in_id}\ncseName=cse-in\nhttpPort={in_port}\n"
                   f"{COMMON}[cse.registration]\nallowedCSROriginators=/{mn_id}\n{TAIL}"),
        ("cse-mn", f"[basic.config]\ncseType=MN\ncseID={mn_id}\ncseName=cse-mn\nhttpPort={mn_port}\n"
                   f"registrarCseHost=127.0.0.1\nregistrarCsePort={in_port}\nregistrarCseID={in_id}\n"
                   f"registrarCseName=cse-in\n{COMMON}[cse.registrar]\nINCSEcseID=/{in_id}\n{TAIL}"),
    ]:
        d = os.path.join(base, name)
        os.makedirs(d)
        with open(os.path.join(d, "acme.ini"), "w") as f:
            f.write(ini)
        log = open(os.path.join(d, "stdout.log"), "w")
        procs.append(subprocess.Popen(
            [python, "-m", "acmecse", "--headless", "-dir", d, "--config", "acme.ini"],
            cwd=d, stdin=subprocess.DEVNULL, stdout=log, stderr=log))
        port = in_port if name == "cse-in" else mn_port
        wait_for(lambda: rsc("GET", f"http://127.0.0.1:{port}/{name}", "CAdmin") == 2000, f"{name} ready")
    wait_for(lambda: rsc("GET", f"http://127.0.0.1:{in_port}/cse-in/{mn_id}", "CAdmin") == 2000,
             "MN-CSE registered")
    return procs, f"http://127.0.0.1:{in_port}/cse-in", f"http://127.0.0.1:{mn_port}/cse-mn", mn_port


def wait_for(cond, what, limit=30):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"timed out waiting for {what}")


RI = [0]


def request(method, url, origin, ty=None, body=None):
    RI[0] += 1
    headers = {"X-M2M-Origin": origin, "X-M2M-RI": f"b{RI[0]}", "X-M2M-RVI": "4",
               "Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json" + (f";ty={ty}" if ty else "")
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return int(r.headers.get("X-M2M-RSC", "0")), r.read()
    except urllib.error.HTTPError as e:
        return int(e.headers.get("X-M2M-RSC", "0")), e.read()


def rsc(method, url, origin):
    return request(method, url, origin)[0]


class Receiver:
    """One HTTP listener for every receiver AE: counts notifications."""

    def __init__(self):
        self.lock = threading.Lock()
        self.count = 0
        self.last = 0.0
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(n)
                if b'"m2m:cin"' in body:
                    with outer.lock:
                        outer.count += 1
                        outer.last = time.monotonic()
                self.send_response(200)
                self.send_header("X-M2M-RSC", "2000")
                self.send_header("X-M2M-RI", self.headers.get("X-M2M-RI", ""))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def plain_fanout(mn, mn_id, sizes, runs, tag):
    """Two <group>s of `sizes` members fanned out at once; median ms to the last notification."""
    recv = Receiver()
    groups = []
    host = f"Cbench{tag}"
    request("POST", mn, host, 2, {"m2m:ae": {"rn": host, "api": "Nbench", "rr": False, "srv": ["4"]}})
    request("POST", f"{mn}/{host}", host, 1, {"m2m:acp": {"rn": "acp", "pv": {"acr": [
        {"acor": ["all"], "acop": 3}]}, "pvs": {"acr": [{"acor": [host], "acop": 63}]}}})
    for g, size in enumerate(sizes):
        mids = []
        for i in range(size):
            ae = f"Cb{tag}g{g}m{i}"
            request("POST", mn, ae, 2, {"m2m:ae": {"rn": ae, "api": "Nbench", "rr": True, "srv": ["4"],
                                                  "poa": [f"http://127.0.0.1:{recv.port}"]}})
            request("POST", f"{mn}/{ae}", ae, 1, {"m2m:acp": {"rn": "acp", "pv": {"acr": [
                {"acor": ["all"], "acop": 3}, {"acor": [ae], "acop": 63}]},
                "pvs": {"acr": [{"acor": [ae], "acop": 63}]}}})
            request("POST", f"{mn}/{ae}", ae, 3, {"m2m:cnt": {"rn": "grp", "mni": 64,
                                                             "acpi": [f"/{mn_id}/cse-mn/{ae}/acp"]}})
            request("POST", f"{mn}/{ae}/grp", ae, 23, {"m2m:sub": {"rn": "s", "nu": [ae], "enc": {"net": [3]}}})
            mids.append(f"/{mn_id}/cse-mn/{ae}/grp")
        code, body = request("POST", f"{mn}/{host}", host, 9, {"m2m:grp": {
            "rn": f"g{g}", "mt": 3, "mnm": 1000, "mid": mids, "acpi": [f"/{mn_id}/cse-mn/{host}/acp"]}})
        if code != 2001:
            sys.exit(f"plain group not created: {code} {body[:200]}")
        groups.append(f"{mn}/{host}/g{g}/fopt")
    total = sum(sizes)
    times = []
    payload = "x" * 200  # about a sealcast command's base64 size
    for _ in range(runs):
        with recv.lock:
            recv.count = 0
        t0 = time.monotonic()
        threads = [threading.Thread(target=request, args=("POST", url, host, 4, {"m2m:cin": {
            "con": payload, "cnf": "text/plain:0"}})) for url in groups]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_for(lambda: recv.count >= total, "plain notifications")
        times.append((recv.last - t0) * 1000)
        time.sleep(0.3)
    recv.server.shutdown()
    return statistics.median(times)


LINE = re.compile(r"^\s*(\d+) ms\s+(\S+)\s+(EXECUTED|issues) \"(unlock|extinguish)\"")


def sealcast_fanout(sealcast, infra, mn, devices, runs):
    """Median ms from the gateway issuing its two commands to the last
    device executing one, over `runs` demos (the fire step only)."""
    times = []
    for _ in range(runs):
        out = subprocess.run([sealcast, "demo", "fire-safety", "--transport", "onem2m",
                              "--devices", str(devices), "--cse", infra, "--cse", mn],
                             capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            sys.exit(f"sealcast demo failed:\n{out.stdout[-3000:]}\n{out.stderr[-2000:]}")
        issued, executed = None, []
        for line in out.stdout.splitlines():
            if line.startswith("== alert"):
                break  # the fire step ends here; the attacks send more
            m = LINE.match(line)
            if not m:
                continue
            ms, what = int(m.group(1)), m.group(3)
            if what == "issues" and issued is None:
                issued = ms
            elif what == "EXECUTED":
                executed.append(ms)
        if issued is None or not executed:
            sys.exit(f"no fire step in the demo's timeline:\n{out.stdout[-3000:]}")
        times.append(max(executed) - issued)
    return statistics.median(times)


def demo_sizes(devices):
    sensors = max(devices // 4, 1)
    doors = max((devices - sensors) // 2, 1)
    exts = devices - sensors - doors
    # gateway and mallory are members of both command groups
    return doors + 2, exts + 2


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--acme-python", default=os.environ.get("SEALCAST_ACME", "python3"))
    ap.add_argument("--sealcast", default="target/release/sealcast")
    ap.add_argument("--sizes", type=int, nargs="+", default=[20, 50])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="sealcast-onem2m-bench-")
    procs = []
    try:
        procs, infra, mn, mn_port = start_cses(args.acme_python, base)
        mn_id = f"id-mn-{mn_port}"
        mn_base = f"http://127.0.0.1:{mn_port}/cse-mn"
        rows = []
        for n in args.sizes:
            # the smallest fleet whose door group has n doors (the demo's split)
            devices = 3
            while max((devices - max(devices // 4, 1)) // 2, 1) < n:
                devices += 1
            sizes = demo_sizes(devices)
            plain = plain_fanout(mn_base, mn_id, sizes, args.runs, f"{n}")
            secured = sealcast_fanout(args.sealcast, infra, mn, devices, args.runs)
            rows.append({"doors": n, "devices": devices, "groups": list(sizes),
                         "plain_ms": round(plain, 1), "sealcast_ms": round(secured, 1),
                         "added_ms": round(secured - plain, 1),
                         "acme_share": round(plain / secured, 3) if secured > 0 else None})
        if args.json:
            print(json.dumps({"onem2m_fanout": rows}))
        else:
            print(f"{'doors':>6} {'members':>12} {'plain ACME':>11} {'sealcast':>9} {'added':>7} {'ACME share':>10}")
            for r in rows:
                print(f"{r['doors']:>6} {'+'.join(map(str, r['groups'])):>12} {r['plain_ms']:>9.1f}ms "
                      f"{r['sealcast_ms']:>7.1f}ms {r['added_ms']:>5.1f}ms {r['acme_share']:>10.2f}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
