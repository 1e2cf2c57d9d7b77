#!/usr/bin/env python3
"""Chaos soak: the daemon and three workers as real processes on loopback, several jobs of different
priorities, and faults at random times, one at a time: kill -9 of a worker (restarted after a random
delay), SIGSTOP of a worker (for a random time, shorter or longer than the heartbeat timeout) and kill -9
of the daemon (restarted after a random delay). Jobs are also submitted during the chaos, through the same
faults: a submission whose answer is lost is retried with its idempotency key.

At the end, with every process healthy again, it checks:
  - every acknowledged job exists exactly once (by id and by idempotency key) and SUCCEEDED;
  - each job's committed checkpoint step (the API's checkpoint_step, polled all along) never went back;
  - every job's loss curve (the last computed loss of each step) equals the undisturbed embedded run's
    within the cluster drill's tolerance (1e-4 relative);
  - no temporary file or directory is left: no .tmp-* in checkpoint or state directories, no channel
    directory of a killed worker in $TMPDIR.
It prints the faults injected, the recovery times (from a fault to the affected job's next step computed on
a ring formed after it, or after the stall ended) as p50/max, and the goodput (useful steps / steps
computed). Bounded: --seconds of chaos, then at most --drain seconds for the jobs to end.

Usage: chaos_soak.py RINGWORLD REPO_ROOT [--seconds N] [--jobs N] [--seed S] [--report FILE]
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

WORKERS = ["w1", "w2", "w3"]
WORKER_TIMEOUT_S = 3
# The job: tiny-cpu, shortened (the cluster drill's), every 10 steps a checkpoint.
# Each job keeps its ring size (ring.min_devices = ring.devices): a ring of 4 and one of 2 sum in another
# order, and over hundreds of steps the rounding drifts past the tolerance; shrinking is the cluster
# drill's (tests/scheduler/cluster_drill.sh, within 1e-4 over 60 steps).
BASE = ["ring.threads_per_device=1", "stages.0.seq_len=128", "stages.0.batch=2",
        "stages.1.seq_len=256", "stages.1.batch=1", "checkpoint.every_steps=10", "checkpoint.keep=3"]
STEP_LINE = re.compile(r"^\S+ step (\d+)/(\d+) ")
RING_LINE = re.compile(r"^\S+ ring of (\d+) devices on (.*?), (inproc|ucx), epoch")


class Failure(Exception):
    pass


class Soak:
    def __init__(self, args):
        self.a = args
        self.bin = os.path.abspath(args.ringworld)
        self.cfg = os.path.join(os.path.abspath(args.repo), "configs", "tiny-cpu.yaml")
        self.rng = random.Random(args.seed)
        self.work = tempfile.mkdtemp(prefix="rw-chaos-")
        self.tmp = os.path.join(self.work, "tmp")
        os.makedirs(self.tmp)
        self.env = dict(os.environ, TMPDIR=self.tmp)
        self.addr = "127.0.0.1:0"
        self.daemon = None
        self.workers = {}  # name -> Popen
        self.stopped = set()  # workers under SIGSTOP
        self.token = None
        self.lock = threading.Lock()
        self.jobs = {}  # id -> {"name", "key", "priority", "devices"}
        self.keys = {}  # idempotency key -> id
        self.lines = {}  # id -> [(t, kind, value)] from the job's log: ("step", n) / ("ring", workers)
        self.log_offsets = {}
        self.committed = {}  # id -> [checkpoint_step seen in order]
        self.states = {}
        self.faults = []  # {"kind", "target", "t0", "t_end", "affected": [ids]}
        self.done = threading.Event()
        self.t_start = time.monotonic()
        self.daemon_starts = 0
        self.created = 0  # submissions answered 201 (made a job)

    # ---- processes ------------------------------------------------------------------------------------------
    def path(self, *p):
        return os.path.join(self.work, *p)

    def start_daemon(self):
        log = open(self.path("daemon.log"), "ab")
        self.daemon = subprocess.Popen(
            [self.bin, "daemon", "--state", "st", "--listen", self.addr, "--data-root", ".", "--checkpoint-root", ".",
             "--worker-timeout", str(WORKER_TIMEOUT_S), "--grace", "20"],
            cwd=self.work, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.daemon_starts += 1
        self.wait_for(15, "the daemon's api.addr", lambda: os.path.getsize(self.path("st", "api.addr")) > 0)
        with open(self.path("st", "api.addr")) as f:
            self.addr = f.read().strip()
        with open(self.path("st", "token")) as f:
            self.token = f.read().strip()
        self.wait_for(15, "the daemon's /healthz", lambda: self.api("GET", "/healthz")[0] == 200)

    def start_worker(self, name):
        log = open(self.path(name + ".log"), "ab")
        self.workers[name] = subprocess.Popen(
            [self.bin, "worker", "--daemon", self.addr, "--devices", "cpu:2", "--name", name, "--token-file", "st/token",
             "--grace", "20"], cwd=self.work, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def worker_alive(self, name):
        code, body = self.api("GET", "/v1/workers")
        return code == 200 and any(w.get("name") == name and w.get("state") == "alive" for w in body.get("workers", []))

    def kill9(self, p):
        try:
            p.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()

    # ---- the API --------------------------------------------------------------------------------------------
    def api(self, method, path, body=None, headers=None, timeout=5):
        req = urllib.request.Request("http://" + self.addr + path, method=method,
                                     data=None if body is None else json.dumps(body).encode())
        req.add_header("Authorization", "Bearer " + (self.token or ""))
        if body is not None:
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            try:
                return e.code, json.loads(e.read() or b"{}")
            except ValueError:
                return e.code, {}
        except (OSError, ValueError):
            return 0, {}

    def submit(self, name, priority, devices):
        """Submits until acknowledged (the daemon may be down or die mid-request): the idempotency key makes
        every retry the same submission."""
        with open(self.cfg) as f:
            spec = f.read()
        sets = BASE + ["stages.0.steps=%d" % self.a.steps0, "stages.1.steps=%d" % self.a.steps1,
                       "ring.devices=%d" % devices, "ring.min_devices=%d" % devices, "name=" + name, "checkpoint.dir=ck/" + name,
                       "output_dir=out/" + name]
        key = "soak-" + name
        end = time.monotonic() + 60
        while time.monotonic() < end:
            code, reply = self.api("POST", "/v1/jobs", {"job": spec, "priority": priority, "set": sets},
                                   {"Idempotency-Key": key})
            if code in (200, 201):
                self.created += code == 201
                with self.lock:
                    if key in self.keys and self.keys[key] != reply["id"]:
                        raise Failure("resubmitting %s gave %s, first acknowledged as %s" % (key, reply["id"], self.keys[key]))
                    self.keys[key] = reply["id"]
                    self.jobs[reply["id"]] = {"name": name, "key": key, "priority": priority, "devices": devices}
                return reply["id"]
            if code not in (0, 503):
                raise Failure("submit %s: HTTP %d %s" % (name, code, reply))
            time.sleep(0.3)
        raise Failure("submit %s: not acknowledged within 60 s" % name)

    # ---- watching ---------------------------------------------------------------------------------------------
    def poll_once(self):
        now = time.monotonic()
        code, body = self.api("GET", "/v1/jobs", timeout=2)
        if code == 200:
            for j in body.get("jobs", []):
                seen = self.committed.setdefault(j["id"], [])
                if not seen or seen[-1] != j["checkpoint_step"]:
                    seen.append(j["checkpoint_step"])
                self.states[j["id"]] = j["state"]
        for jid in list(self.jobs):
            p = self.path("st", "logs", jid + ".log")
            try:
                with open(p, "rb") as f:
                    f.seek(self.log_offsets.get(jid, 0))
                    data = f.read()
            except OSError:
                continue
            cut = data.rfind(b"\n") + 1  # whole lines only
            self.log_offsets[jid] = self.log_offsets.get(jid, 0) + cut
            for line in data[:cut].decode(errors="replace").splitlines():
                m = STEP_LINE.match(line)
                if m:
                    self.lines.setdefault(jid, []).append((now, "step", int(m.group(1))))
                    continue
                m = RING_LINE.match(line)
                if m:
                    names = re.findall(r"(w\d+) \(\d+\)", m.group(2))
                    self.lines.setdefault(jid, []).append((now, "ring", names))

    def monitor(self):
        while not self.done.is_set():
            try:
                self.poll_once()
            except Exception as e:  # a watcher must not die silently: the checks would read stale data
                print("monitor: %r" % e, file=sys.stderr)
            time.sleep(0.2)

    def running_on(self, worker):
        """The jobs RUNNING now whose latest ring holds WORKER (None: every running job)."""
        out = []
        for jid, st in self.states.items():
            if st != "RUNNING":
                continue
            rings = [v for (_, k, v) in self.lines.get(jid, []) if k == "ring"]
            if worker is None or (rings and worker in rings[-1]):
                out.append(jid)
        return out

    def recovered(self, fault, jid):
        """The time the job computed its next step on a ring formed after the fault (or, with no ring formed,
        after the fault ended); None if not yet."""
        ring_after = None
        for (t, k, v) in self.lines.get(jid, []):
            if t < fault["t0"]:
                continue
            if k == "ring" and ring_after is None:
                ring_after = t
            if k == "step":
                if ring_after is not None and t >= ring_after:
                    return t
                if fault["kind"] == "sigstop" and fault["t_end"] is not None and t > fault["t_end"] and not fault["reform"]:
                    return t
        return None

    # ---- faults -----------------------------------------------------------------------------------------------
    def inject(self):
        kind = self.rng.choices(["kill9-worker", "sigstop", "kill9-daemon"], weights=[3, 2, 1])[0]
        t0 = time.monotonic()
        if kind == "kill9-daemon":
            affected = self.running_on(None)
            fault = {"kind": kind, "target": "daemon", "t0": t0, "t_end": None, "affected": affected, "reform": True}
            self.kill9(self.daemon)
            time.sleep(self.rng.uniform(0, 2))
            self.start_daemon()
            fault["t_end"] = time.monotonic()
        else:
            # A worker that holds a running job, if any: faults where nothing runs teach nothing.
            busy = [w for w in WORKERS if self.running_on(w)]
            target = self.rng.choice(busy or WORKERS)
            affected = self.running_on(target)
            if kind == "kill9-worker":
                fault = {"kind": kind, "target": target, "t0": t0, "t_end": None, "affected": affected, "reform": True}
                self.kill9(self.workers[target])
                time.sleep(self.rng.uniform(0.5, 4))
                self.start_worker(target)
                fault["t_end"] = time.monotonic()
            else:
                pause = self.rng.choice([self.rng.uniform(0.5, 2), self.rng.uniform(4, 8)])
                # Under the heartbeat timeout the ring stalls and goes on; over it the worker is lost and
                # the ring re-forms without it.
                fault = {"kind": kind, "target": target, "t0": t0, "t_end": None, "affected": affected,
                         "reform": pause > WORKER_TIMEOUT_S + 1, "pause": pause}
                self.workers[target].send_signal(signal.SIGSTOP)
                self.stopped.add(target)
                time.sleep(pause)
                self.workers[target].send_signal(signal.SIGCONT)
                self.stopped.discard(target)
                fault["t_end"] = time.monotonic()
        self.faults.append(fault)
        print("%6.1f s  %-13s %-6s affects %s" % (t0 - self.t_start, kind, fault["target"],
                                                   ", ".join(affected) or "no running job"), flush=True)
        # One fault at a time: the next waits until the affected jobs compute again (bounded).
        end = time.monotonic() + 45
        ended = ("SUCCEEDED", "FAILED", "CANCELLED")
        while time.monotonic() < end and not all(self.recovered(fault, j) or self.states.get(j) in ended
                                                  for j in affected):
            time.sleep(0.2)

    # ---- the run ----------------------------------------------------------------------------------------------
    def wait_for(self, limit, what, pred):
        end = time.monotonic() + limit
        while time.monotonic() < end:
            try:
                if pred():
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise Failure("%s (not within %d s)" % (what, limit))

    def reference(self, devices):
        sets = BASE + ["stages.0.steps=%d" % self.a.steps0, "stages.1.steps=%d" % self.a.steps1,
                       "ring.devices=%d" % devices, "checkpoint.dir=", "output_dir=ref%d" % devices]
        cmd = [self.bin, "train", self.cfg] + [x for s in sets for x in ("--set", s)]
        t = time.monotonic()
        with open(self.path("ref%d.log" % devices), "wb") as log:
            if subprocess.call(cmd, cwd=self.work, env=self.env, stdout=log, stderr=subprocess.STDOUT) != 0:
                raise Failure("the undisturbed reference run failed (ref.log)")
        self.ref_seconds = time.monotonic() - t
        return self.losses(self.path("ref%d" % devices, "metrics.jsonl"))

    @staticmethod
    def losses(path):
        out = {}
        with open(path) as f:
            for line in f:
                m = json.loads(line)
                out[m["step"]] = m["loss"]  # the last computed value of each step
        return out

    def run(self):
        a = self.a
        print("chaos soak: seed %d, %d s of chaos, work dir %s" % (a.seed, a.seconds, self.work), flush=True)
        ref = {d: self.reference(d) for d in (2, 4)}  # undisturbed embedded runs, one per ring size
        print("undisturbed references (rings of 2 and 4): %d steps, %.1f s the last" % (len(ref[2]), self.ref_seconds),
              flush=True)
        self.start_daemon()
        for w in WORKERS:
            self.start_worker(w)
        for w in WORKERS:
            self.wait_for(20, "worker %s registered" % w, lambda w=w: self.worker_alive(w))
        # Jobs of different priorities and ring sizes (6 devices; they ask for 2-4 each, so they queue and
        # preempt); the first three now, the rest at random times during the chaos.
        plan = [("a", 0, 4), ("b", 5, 2), ("c", 0, 2)]
        extra = [("d%d" % i, self.rng.choice([0, 5, 10]), self.rng.choice([2, 4])) for i in range(a.jobs - 3)]
        for name, prio, dev in plan:
            self.submit(name, prio, dev)
        mon = threading.Thread(target=self.monitor, daemon=True)
        mon.start()
        submit_at = sorted(self.rng.uniform(0.1, 0.7) * a.seconds for _ in extra)
        t_chaos = time.monotonic()
        try:
            while time.monotonic() - t_chaos < a.seconds:
                while submit_at and time.monotonic() - t_chaos >= submit_at[0]:
                    submit_at.pop(0)
                    name, prio, dev = extra.pop(0)
                    jid = self.submit(name, prio, dev)
                    print("%6.1f s  submitted %s (%s, priority %d, ring %d)" %
                          (time.monotonic() - self.t_start, jid, name, prio, dev), flush=True)
                if all(self.states.get(j) in ("SUCCEEDED", "FAILED", "CANCELLED") for j in self.jobs) and not extra:
                    break
                time.sleep(self.rng.uniform(1, 4))
                self.inject()
            for name, prio, dev in extra:  # the chaos ended before their time
                self.submit(name, prio, dev)
            # Everything healthy again; then the jobs must end.
            for w in WORKERS:
                if self.workers[w].poll() is not None:
                    self.start_worker(w)
            self.wait_for(a.drain, "every job in a final state",
                          lambda: len(self.states) >= len(self.jobs) and
                          all(self.states.get(j) in ("SUCCEEDED", "FAILED", "CANCELLED") for j in self.jobs))
        finally:
            self.done.set()
            mon.join()
        self.poll_once()
        self.check(ref)  # per ring size

    def check(self, refs):
        problems = []
        code, body = self.api("GET", "/v1/jobs")
        if code != 200:
            raise Failure("GET /v1/jobs: HTTP %d" % code)
        listed = body["jobs"]
        ids = [j["id"] for j in listed]
        if sorted(ids) != sorted(self.jobs) or len(set(ids)) != len(ids) or self.created != len(self.jobs):
            problems.append("jobs listed %s, acknowledged %s" % (sorted(ids), sorted(self.jobs)))
        # Each submission once more, with its key: the same job answers (200), none is made (201).
        for jid, info in sorted(self.jobs.items()):
            before = len(self.keys)
            again = self.submit(info["name"], info["priority"], info["devices"])
            if again != jid or len(self.keys) != before:
                problems.append("resubmitting %s gave %s" % (info["key"], again))
        code, body = self.api("GET", "/v1/jobs")
        if code != 200 or len(body["jobs"]) != len(listed):
            problems.append("resubmissions added jobs: %d listed, %d before" % (len(body.get("jobs", [])), len(listed)))
        for j in listed:
            if j["state"] != "SUCCEEDED":
                problems.append("%s (%s) ended %s: %s" % (j["id"], j["name"], j["state"], j.get("message")))
        for jid, seen in self.committed.items():
            if any(b < a for a, b in zip(seen, seen[1:])):
                problems.append("%s: its committed step went back: %s" % (jid, seen))
        worst, computed, useful = 0.0, 0, 0
        for jid, info in self.jobs.items():
            path = self.path("out", info["name"], "metrics.jsonl")
            with open(path) as f:
                computed += sum(1 for _ in f)
            got = self.losses(path)
            useful += len(got)
            ref = refs[info["devices"]]
            if sorted(got) != sorted(ref):
                problems.append("%s: steps %s missing" % (jid, sorted(set(ref) - set(got))[:10]))
                continue
            for s, l in ref.items():
                worst = max(worst, abs(got[s] - l) / abs(l))
        if worst > 1e-4:
            problems.append("a loss curve departs from the undisturbed run: worst relative difference %.2e" % worst)
        left = []
        for root in (self.path("ck"), self.path("st"), self.path("out")):
            for d, dirs, files in os.walk(root):
                left += [os.path.join(d, n) for n in dirs + files if n.startswith(".tmp")]
        live = {str(p.pid) for p in self.workers.values() if p.poll() is None}
        for n in os.listdir(self.tmp):
            m = re.match(r"ringworld-worker-(\d+)-", n)
            if not (m and m.group(1) in live):
                left.append(os.path.join(self.tmp, n))
        if left:
            problems.append("temporary files left: %s" % left[:10])

        rec = {}
        unrecovered = 0
        for f in self.faults:
            for jid in f["affected"]:
                t = self.recovered(f, jid)
                if t is None:
                    unrecovered += 1
                else:
                    rec.setdefault(f["kind"], []).append(t - f["t0"])
        kinds = {}
        for f in self.faults:
            kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
        allrec = sorted(x for v in rec.values() for x in v)
        report = ["chaos soak: seed %d, %d faults (%s), %d jobs, %d s" %
                  (self.a.seed, len(self.faults), ", ".join("%s %d" % kv for kv in sorted(kinds.items())),
                   len(self.jobs), time.monotonic() - self.t_start)]
        for k, v in sorted(rec.items()):
            report.append("  recovery after %-13s n=%-3d p50 %5.1f s  max %5.1f s" % (k, len(v), statistics.median(v), max(v)))
        if allrec:
            report.append("  recovery, all faults       n=%-3d p50 %5.1f s  max %5.1f s" %
                          (len(allrec), statistics.median(allrec), max(allrec)))
        report.append("  (fault, job) pairs not seen computing again on their own (the job ended or was preempted "
                      "first): %d" % unrecovered)
        report.append("  goodput: %d useful steps / %d steps computed = %.3f" % (useful, computed, useful / max(computed, 1)))
        report.append("  loss curves: worst relative difference to the undisturbed run %.2e (%d jobs)" % (worst, len(self.jobs)))
        report.append("  daemon starts: %d" % self.daemon_starts)
        print("\n".join(report), flush=True)
        if self.a.report:
            with open(self.a.report, "a") as f:
                f.write("\n".join(report) + "\n")
        if problems:
            raise Failure("; ".join(problems))

    def cleanup(self, keep):
        for w, p in self.workers.items():
            if w in self.stopped:
                p.send_signal(signal.SIGCONT)
            self.kill9(p)
        if self.daemon:
            self.kill9(self.daemon)
        if not keep:
            shutil.rmtree(self.work, ignore_errors=True)

    def dump_logs(self):
        for n in ["daemon.log"] + [w + ".log" for w in WORKERS] + ["st/logs/%s.log" % j for j in self.jobs]:
            p = self.path(n)
            if os.path.exists(p):
                with open(p, errors="replace") as f:
                    tail = f.readlines()[-25:]
                print("--- %s\n%s" % (n, "".join(tail)), end="")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ringworld")
    ap.add_argument("repo")
    ap.add_argument("--seconds", type=int, default=90, help="how long faults are injected")
    ap.add_argument("--drain", type=int, default=240, help="how long the jobs may take to end after the chaos")
    ap.add_argument("--jobs", type=int, default=5)
    ap.add_argument("--steps0", type=int, default=500)
    ap.add_argument("--steps1", type=int, default=60)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--report", default=None, help="append the figures to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    if a.seed is None:
        a.seed = int.from_bytes(os.urandom(4), "little")
    soak = Soak(a)
    ok = False
    try:
        soak.run()
        ok = True
        print("chaos soak passed")
    except Failure as e:
        print("FAIL: %s (seed %d; rerun with --seed %d --keep)" % (e, a.seed, a.seed))
        soak.dump_logs()
    finally:
        soak.cleanup(a.keep or not ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
