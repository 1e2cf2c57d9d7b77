#!/usr/bin/env python3
"""The daemon under a long queue (issue 11, point 8): a daemon on loopback with 4 workers (2 CPU devices
each) and N queued jobs that cannot be placed (each wants a ring of 16, the cluster has 8 devices), so every
scheduling pass walks them all. It measures, in one run:
  - submission latency of the N jobs (p50/p99; each is a synced RocksDB write);
  - the daemon's CPU while the N jobs wait and nothing changes (its scheduling loop ticks at least every
    100 ms for heartbeats): CPU seconds per second, from /proc;
  - API latency under load: 8 clients for --seconds, half reading one job, half listing all jobs (p50/p99);
  - the time from submitting a small job that fits (priority 100, jumps the queue) to its first training
    step (its first metrics line) and to SUCCEEDED.
Figures go to docs/BENCHMARKS.md with the machine they came from. --quick: N = 100, 2 s of load.

Usage: daemon_queue.py RINGWORLD REPO_ROOT [--jobs N] [--seconds S] [--quick]
"""
import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100.0 * len(xs)))]


class Bench:
    def __init__(self, a):
        self.a = a
        self.bin = os.path.abspath(a.ringworld)
        self.repo = os.path.abspath(a.repo)
        self.work = tempfile.mkdtemp(prefix="rw-queue-")
        self.procs = []

    def path(self, *p):
        return os.path.join(self.work, *p)

    def api(self, method, path, body=None, timeout=30):
        req = urllib.request.Request("http://" + self.addr + path, method=method,
                                     data=None if body is None else json.dumps(body).encode())
        req.add_header("Authorization", "Bearer " + self.token)
        if body is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")

    def wait(self, what, cond, limit):
        end = time.time() + limit
        while time.time() < end:
            try:
                if cond():
                    return
            except Exception:
                pass
            time.sleep(0.1)
        raise RuntimeError(what + " (not within %d s)" % limit)

    def rss_mb(self, pid):
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
        return 0.0

    def cpu_seconds(self, pid):
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def run(self):
        a = self.a
        log = open(self.path("daemon.log"), "w")
        self.daemon = subprocess.Popen([self.bin, "daemon", "--state", "st", "--listen", "127.0.0.1:0", "--data-root",
                                        ".", "--checkpoint-root", "."], cwd=self.work, stdout=log, stderr=log)
        self.procs.append(self.daemon)
        self.wait("daemon api.addr", lambda: os.path.getsize(self.path("st", "api.addr")) > 0, 20)
        self.addr = open(self.path("st", "api.addr")).read().strip().replace("http://", "")
        self.token = open(self.path("st", "token")).read().strip()
        for w in range(4):
            wl = open(self.path("w%d.log" % w), "w")
            self.procs.append(subprocess.Popen([self.bin, "worker", "--daemon", self.addr, "--devices", "cpu:2", "--name",
                                                "w%d" % w, "--token-file", "st/token"], cwd=self.work, stdout=wl, stderr=wl))
        self.wait("4 workers alive", lambda: sum(1 for x in self.api("GET", "/v1/workers")[1]["workers"]
                                                  if x["state"] == "alive") == 4, 30)
        spec = open(os.path.join(self.repo, "configs", "tiny-cpu.yaml")).read()
        rss0 = self.rss_mb(self.daemon.pid)

        # N jobs that wait: each wants a ring of 16.
        lat = []
        ids = []
        lock = threading.Lock()

        def submit(k):
            body = {"job": spec, "set": ["name=q%d" % k, "checkpoint.dir=ck/q%d" % k, "output_dir=out/q%d" % k,
                                         "ring.devices=16", "ring.min_devices=16"]}
            t0 = time.perf_counter()
            status, reply = self.api("POST", "/v1/jobs", body)
            dt = time.perf_counter() - t0
            assert status in (200, 201), (status, reply)
            with lock:
                lat.append(dt)
                ids.append(reply["id"])

        t0 = time.time()
        threads = []
        for c in range(4):
            th = threading.Thread(target=lambda c=c: [submit(k) for k in range(c, a.jobs, 4)])
            th.start()
            threads.append(th)
        for th in threads:
            th.join()
        submit_s = time.time() - t0
        rss1 = self.rss_mb(self.daemon.pid)
        print("submitted %d jobs in %.1f s: p50 %.1f ms, p99 %.1f ms; daemon RSS %.0f -> %.0f MB" %
              (a.jobs, submit_s, 1e3 * pct(lat, 50), 1e3 * pct(lat, 99), rss0, rss1), flush=True)

        # The daemon idle with N waiting jobs.
        time.sleep(2)
        c0, w0 = self.cpu_seconds(self.daemon.pid), time.time()
        time.sleep(a.seconds)
        idle_cpu = (self.cpu_seconds(self.daemon.pid) - c0) / (time.time() - w0)
        print("daemon CPU with %d waiting jobs, nothing changing: %.3f s/s" % (a.jobs, idle_cpu), flush=True)

        # API latency under load.
        reads, lists = [], []
        stop = time.time() + a.seconds
        errors = []

        def client(kind):
            rnd = random.Random(kind)
            while time.time() < stop:
                t = time.perf_counter()
                try:
                    if kind % 2 == 0:
                        self.api("GET", "/v1/jobs/" + rnd.choice(ids))
                        reads.append(time.perf_counter() - t)
                    else:
                        self.api("GET", "/v1/jobs")
                        lists.append(time.perf_counter() - t)
                except Exception as e:
                    errors.append(repr(e))
        c0, w0 = self.cpu_seconds(self.daemon.pid), time.time()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        load_cpu = (self.cpu_seconds(self.daemon.pid) - c0) / (time.time() - w0)
        print("API under 8 clients for %d s: GET /v1/jobs/ID n=%d p50 %.1f ms p99 %.1f ms; GET /v1/jobs (all %d) n=%d "
              "p50 %.1f ms p99 %.1f ms; errors %d; daemon CPU %.2f s/s" %
              (a.seconds, len(reads), 1e3 * pct(reads, 50), 1e3 * pct(reads, 99), a.jobs, len(lists),
               1e3 * pct(lists, 50), 1e3 * pct(lists, 99), len(errors), load_cpu), flush=True)
        print("daemon RSS after the load: %.0f MB" % self.rss_mb(self.daemon.pid), flush=True)
        if errors:
            print("  first error: " + errors[0])

        # A job that fits jumps the queue: submit -> first step -> SUCCEEDED.
        body = {"job": spec, "priority": 100,
                "set": ["name=fits", "checkpoint.dir=ck/fits", "output_dir=out/fits", "stages.0.steps=5",
                        "stages.1.steps=1"]}
        t0 = time.time()
        _, reply = self.api("POST", "/v1/jobs", body)
        jid = reply["id"]
        metrics = self.path("out", "fits", "metrics.jsonl")
        self.wait("first step of the job that fits", lambda: os.path.getsize(metrics) > 0, 60)
        first_step = time.time() - t0
        self.wait("the job that fits SUCCEEDED", lambda: self.api("GET", "/v1/jobs/" + jid)[1]["state"] == "SUCCEEDED", 120)
        done = time.time() - t0
        print("a job that fits, behind %d waiting: submit -> first step %.2f s, -> SUCCEEDED %.2f s (6 steps)" %
              (a.jobs, first_step, done), flush=True)
        return 0

    def close(self):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        shutil.rmtree(self.work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ringworld")
    ap.add_argument("repo")
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.jobs, a.seconds = 100, 2
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    flags = open("/proc/cpuinfo").read()
    bf16 = [x for x in ("amx_bf16", "avx512_bf16") if x in flags]
    print("daemon queue bench: %s (%d cores; bf16: %s)" % (cpu, os.cpu_count(), ", ".join(bf16) or "none"), flush=True)
    b = Bench(a)
    try:
        rc = b.run()
    except Exception as e:
        print("FAIL: %s" % e)
        for n in ("daemon.log",):
            try:
                print("--- " + n + "\n" + open(b.path(n)).read()[-3000:])
            except OSError:
                pass
        rc = 1
    finally:
        b.close()
    return rc


if __name__ == "__main__":
    sys.exit(main())
