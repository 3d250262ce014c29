"""bench/harness.py: what every benchmark in bench/ needs, written once.

The scripts (bench/run, bench/av-drift, bench/ladder, bench/overlay, bench/resilience) import
it. It runs the daemon (config file, free ports, /healthz, SIGTERM), nginx-rtmp (the ingest of
the ffmpeg way, or the destination standing in for YouTube), ffmpeg publishers and readers, a
scores API, and reads what they produce: HLS playlists, ffprobe counts, /proc CPU and memory.

The daemon is observed through its API and its live events (`GET /api/v1/events`, read by
`EventFeed`), never through its log text; `LogSummary` only counts the log's warnings and
errors for the reports. Standard library only. Every process is started through a
`Processes`, in its own session, and ended by its id.
"""

import datetime
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPConnection, HTTPException
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
NGINX_RTMP_MODULE = "/usr/lib/nginx/modules/ngx_rtmp_module.so"
TICK = os.sysconf("SC_CLK_TCK")
FFMPEG = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin"]
# What a publisher's own encoder does: x264 veryfast for live, a 2 s GOP at 30 fps, AAC 128k.
PUBLISHER_ENCODE = ["-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-g", "60",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", "-ar", "48000"]
# How the pre-encoded clips are written (published later with -c copy): 3 Mb/s, 2 s GOP.
CLIP_ENCODE = ["-c:v", "libx264", "-preset", "veryfast", "-b:v", "3000k", "-g", "60",
               "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", "-ar", "48000", "-ac", "2"]
TONE = "sine=frequency=440:sample_rate=48000"


# ---------------------------------------------------------------------------------------------
# Small helpers


def logger(name, clock=False):
    """A `log(msg)` that writes `[name] msg` (with the time of day when `clock`) to stderr."""
    def log(msg):
        stamp = f" {time.strftime('%H:%M:%S')}" if clock else ""
        print(f"[{name}{stamp}] {msg}", file=sys.stderr, flush=True)
    return log


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout, what, interval=0.05):
    """Calls check() until it returns something true, and returns that; raises RuntimeError
    after `timeout` seconds. check() may raise to give up early."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def listening(port, host="127.0.0.1"):
    try:
        socket.create_connection((host, port), timeout=0.2).close()
        return True
    except OSError:
        return False


def http(method, url, body=None, timeout=5):
    """(status, body): the body as JSON, else as text, None when empty. An error status is
    returned, not raised; no answer at all raises OSError."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"content-type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def http_json(method, url, body=None, timeout=5):
    """The parsed JSON answer; raises OSError on an error status, as on no answer."""
    status, value = http(method, url, body, timeout)
    if status >= 400:
        raise OSError(f"{method} {url} answered {status}: {value}")
    return value


def shell(cmd):
    """A command as one shell line; an argument with a quote in it (the tee muxer's \\')
    goes in double quotes when that is safe, which reads better than shlex's '"'"'."""
    def quote(arg):
        arg = str(arg)
        if "'" in arg and not any(c in arg for c in '$`"!') and "\\\\" not in arg:
            return f'"{arg}"'
        return shlex.quote(arg)
    return " ".join(quote(c) for c in cmd)


def iso(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="milliseconds")


def parse_rfc3339(text):
    """'2026-11-21T20:49:05.123456789Z' -> seconds since the epoch (a float, the fraction
    added apart so no digit is lost to fromisoformat); None when it is not RFC 3339."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", text.strip())
    if not m:
        return None
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    return datetime.datetime.fromisoformat(m.group(1) + zone).timestamp() + float(m.group(2) or 0)


def env_float(name, default):
    return float(os.environ.get(name, default))


def exit_on_signals():
    """Ctrl-C, SIGTERM and SIGHUP all unwind through the caller's `finally`, which stops every
    process. (SIGINT explicitly: a shell that starts a script in the background ignores it.)"""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))


def check_argv(argv, most, doc):
    """For scripts with positional arguments only: prints `doc` and exits on -h/--help (0) or
    on more than `most` arguments (2)."""
    if any(a in ("-h", "--help") for a in argv) or len(argv) > most:
        print(doc)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)


def command_line(script, argv, env_names=()):
    """How the script was called, with the environment variables it reads that were set."""
    envs = [f"{k}={shlex.quote(os.environ[k])}" for k in env_names if k in os.environ]
    return " ".join(envs + [shell([script, *argv])])


def require_tools(*tools):
    for tool in tools:
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing; scripts/deps --bench installs it")
    if "nginx" in tools and not Path(NGINX_RTMP_MODULE).exists():
        sys.exit(f"{NGINX_RTMP_MODULE} is missing; scripts/deps --bench installs it (libnginx-mod-rtmp)")


# ---------------------------------------------------------------------------------------------
# Numbers and markdown


def median(values, default=None):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else default


def median_span(values):
    """(median, min, max) of the values that are not None, or three Nones."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None, None
    return statistics.median(values), min(values), max(values)


def least_squares(xs, ys):
    """(slope, intercept) of the least-squares line, or (None, None)."""
    if len(xs) < 2:
        return None, None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    if not den:
        return None, None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den
    return slope, my - slope * mx


def fmt(value, digits=2, unit=""):
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def spread(values, digits=2, unit=""):
    """'median (min–max)' with the unit after the median, or 'n/a'."""
    m, lo, hi = median_span(values)
    if m is None:
        return "n/a"
    return f"{fmt(m, digits, unit)} ({fmt(lo, digits)}–{fmt(hi, digits)})"


def gap_text(value, aim, lower_is_better=True):
    if value is None:
        return "not measured"
    if (value <= aim) if lower_is_better else (value >= aim):
        return "met"
    return f"missed by {abs(value - aim) / aim * 100:.0f} %"


# ---------------------------------------------------------------------------------------------
# The machine, the tree, the binary


def nproc():
    return len(os.sched_getaffinity(0))


def cpu_model():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def os_name():
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return "Linux"


def load_average():
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def output_of(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT).stdout.strip()


def git_head():
    return output_of("git", "rev-parse", "--short", "HEAD")


def git_dirty():
    return bool(output_of("git", "status", "--porcelain", "--untracked-files=no"))


def ffmpeg_version():
    return " ".join(output_of("ffmpeg", "-version").split()[:3])


def gstreamer_version():
    """'GStreamer 1.22.0', from gst-inspect-1.0."""
    lines = output_of("gst-inspect-1.0", "--version").splitlines()
    return next((l.strip() for l in lines if l.startswith("GStreamer")), "GStreamer ?")


def binary(debug_fallback=False):
    """The scorecast to measure: env SCORECAST (relative to the tree), else the release build;
    with `debug_fallback`, the debug build when there is no release build."""
    env = os.environ.get("SCORECAST")
    if env:
        return Path(env) if Path(env).is_absolute() else ROOT / env
    release = ROOT / "target" / "release" / "scorecast"
    if debug_fallback and not release.exists():
        return ROOT / "target" / "debug" / "scorecast"
    return release


def require_binary(path, log):
    """Exits when `path` is not executable; warns when it is older than the last commit."""
    if not os.access(path, os.X_OK):
        sys.exit(f"no binary at {path} (set SCORECAST, or build: cargo build --release)")
    head = output_of("git", "log", "-1", "--format=%ct")
    if head.isdigit() and path.stat().st_mtime < int(head):
        log(f"WARNING: {path} is older than the last commit; it may not be what the source "
            "says (cargo build --release)")


def binary_info(path):
    return {"path": str(path), "mtime": iso(path.stat().st_mtime), "git_head": git_head()}


# ---------------------------------------------------------------------------------------------
# /proc


def cpu_seconds(pid):
    """utime + stime of every thread of pid, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def status_kib(pid, key):
    """A kB line of /proc/PID/status (`VmRSS`, `VmHWM`), or None when pid is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def signal_pid(pid, sig):
    """Sends sig to pid; a process already gone is fine."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def children(pid):
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


# ---------------------------------------------------------------------------------------------
# Processes: each in its own session, remembered, ended by its id.


class Processes:
    """Every process a script starts, stopped on exit whatever happens (`stop_all` in its
    `finally`)."""

    def __init__(self):
        self.started = []
        self.lock = threading.Lock()

    def start(self, cmd, **kwargs):
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        with self.lock:
            proc = subprocess.Popen([str(c) for c in cmd], start_new_session=True, **kwargs)
            self.started.append(proc)
        return proc

    @staticmethod
    def stop(proc, sig=signal.SIGTERM, timeout=10):
        """Sends sig to proc's process group, waits, then SIGKILL. Returns the exit code."""
        if proc.poll() is not None:
            return proc.returncode
        for s in (sig, signal.SIGKILL):
            try:
                os.killpg(proc.pid, s)
            except ProcessLookupError:
                pass
            try:
                return proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                continue
        return proc.poll()

    def stop_all(self):
        with self.lock:
            started, self.started = self.started, []
        for proc in reversed(started):
            self.stop(proc, timeout=5)

    def run(self, cmd, timeout, **kwargs):
        """Runs cmd to completion (stopped with the rest on failure); (rc, stdout, stderr)."""
        proc = self.start(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(proc)
            raise RuntimeError(f"timed out after {timeout} s: {shell(cmd)}")
        return proc.returncode, out, err


class Session:
    """One run of a benchmark, as a `with` block: its Processes, a work directory, and
    Ctrl-C, SIGTERM and SIGHUP turned into exits. On leaving, every process is stopped; the
    work directory is removed unless `keep` or the run failed (an exception, or `failed` set),
    and a failed run exits 1 (130 after Ctrl-C)."""

    def __init__(self, name, log, keep=False):
        exit_on_signals()
        self.log = log
        self.keep = keep
        self.failed = False
        self.processes = Processes()
        self.work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        self.processes.stop_all()
        if kind is KeyboardInterrupt:
            self.log("interrupted; every process started here is stopped")
        elif kind is SystemExit:
            self.log("terminated; every process started here is stopped")
        self.failed |= kind is not None
        if self.keep or self.failed:
            self.log(f"work directory kept: {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)
        if kind is KeyboardInterrupt or (kind is None and self.failed):
            sys.exit(130 if kind else 1)
        return False

    def run_to_json(self, result, body, summary, path, command):
        """Runs body(); whatever happens, then stops every process, prints summary(result)'s
        lines and writes `result` (those lines included) to `path` as JSON. A failure is
        logged and kept in result["error"], and marks the session failed."""
        try:
            body()
        except KeyboardInterrupt:
            self.failed = True
            self.log("interrupted")
        except Exception as e:
            self.failed = True
            result["error"] = repr(e)
            self.log(f"failed: {e!r}")
        finally:
            self.processes.stop_all()
            result["load_end"] = load_average()
            try:
                lines = summary(result)
            except Exception as e:  # a partial run still writes what it has
                lines = [f"command: {command}", f"(summary failed: {e!r})"]
            print("\n".join(lines))
            result["summary_text"] = lines
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=1, default=str))
            print(f"\nraw results: {path.relative_to(ROOT)}")


TIME_FORMAT = "%U %S %e %M"


def timed(cmd, time_file):
    """cmd under /usr/bin/time, which writes user, sys, wall seconds and peak RSS (KiB)."""
    return ["/usr/bin/time", "-f", TIME_FORMAT, "-o", str(time_file), *cmd]


def read_time(path):
    """/usr/bin/time's numbers, and `cpu`: user + sys over wall in percent of one core."""
    user, sys_, wall, rss = Path(path).read_text().split()[-4:]
    r = {"user": float(user), "sys": float(sys_), "wall": float(wall), "rss_kib": int(rss)}
    r["cpu"] = 100 * (r["user"] + r["sys"]) / r["wall"]
    return r


def stop_under_time(time_proc, what, timeout=20):
    """SIGTERM to the process /usr/bin/time runs (time does not forward signals), then waits
    for both, so that time writes its numbers."""
    for pid in children(time_proc.pid)[:1]:
        signal_pid(pid, signal.SIGTERM)
    try:
        return time_proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        Processes.stop(time_proc)
        raise RuntimeError(f"{what} did not stop within {timeout} s of SIGTERM")


# ---------------------------------------------------------------------------------------------
# The daemon


class Daemon:
    """scorecast on free ports, in `dir` (config, data, daemon.log), answering /healthz.

    `time_file`: run it under /usr/bin/time (see `read_time`). `check`: `check-config` first
    (its output in `check_output`). `events` is its live event feed, read from its start."""

    def __init__(self, procs, dir, config, bin=None, env=None, time_file=None, check=False,
                 health_timeout=20):
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.bin = bin or binary()
        self.config_path = self.dir / "scorecast.toml"
        self.config = config
        self.config_path.write_text(config)
        self.check_output = self.check_config() if check else None
        self.api = f"http://127.0.0.1:{free_port()}"
        self.rtmp_port = free_port()
        self.data = self.dir / "data"
        self.log = self.dir / "daemon.log"
        self.command = [self.bin, "run", "--config", self.config_path,
                        "--api-listen", self.api.removeprefix("http://"),
                        "--rtmp-listen", f"127.0.0.1:{self.rtmp_port}", "--data-dir", self.data]
        self.timed = time_file is not None
        with open(self.log, "wb") as out:
            self.proc = procs.start(timed(self.command, time_file) if self.timed else self.command,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, **(env or {})})
        self.started = time.time()
        wait_for(self.healthy, health_timeout, "scorecast to answer /healthz", 0.05)
        self.events = EventFeed(self.api)

    def check_config(self):
        check = subprocess.run([str(self.bin), "check-config", str(self.config_path)],
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"check-config refused {self.config_path}: {check.stdout}{check.stderr}")
        return check.stdout.strip()

    def healthy(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"scorecast exited ({self.proc.returncode}):\n"
                               f"{self.log.read_text(errors='replace')[-3000:]}")
        try:
            return http("GET", f"{self.api}/healthz", timeout=1)[0] == 200
        except OSError:
            return False

    @property
    def pid(self):
        """scorecast's own pid (under /usr/bin/time, its child's)."""
        if self.timed:
            kids = children(self.proc.pid)
            return kids[0] if kids else None
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def relay(self, relay):
        """GET /api/v1/relays/{relay}, parsed."""
        return http_json("GET", f"{self.api}/api/v1/relays/{relay}")

    def call(self, method, path, body=None, timeout=5):
        """(status, body) of an API call; path from /api/v1/ on."""
        return http(method, f"{self.api}/api/v1/{path}", body, timeout)

    def put_score(self, relay, board):
        return http_json("PUT", f"{self.api}/api/v1/relays/{relay}/score", board)

    def publish_url(self, key):
        return f"rtmp://127.0.0.1:{self.rtmp_port}/live/{key}"

    def hls_dir(self, relay):
        return self.data / "hls" / relay

    def playlist(self, relay, rendition):
        return self.hls_dir(relay) / rendition / "index.m3u8"

    def hls_url(self, relay, rendition, name="index.m3u8"):
        return f"{self.api}/hls/{relay}/{rendition}/{name}"

    def stop(self, timeout=20):
        """SIGTERM to scorecast; its exit code (under /usr/bin/time, time's)."""
        try:
            if self.timed:
                return stop_under_time(self.proc, "scorecast", timeout)
            return Processes.stop(self.proc, signal.SIGTERM, timeout)
        finally:
            self.events.close()


class RecordedRelay:
    """The set-up bench/av-drift and bench/resilience share: a recording nginx-rtmp (records
    in `work/rec`), and scorecast (env SCORECAST, else the release build, else the debug one;
    RUST_LOG=info unless set) with one relay pushing to it as `output`. Ready once the relay
    shows the slate and the destination is live: `slate` and `live` are those events."""

    def __init__(self, processes, work, relay, output, log):
        self.bin = binary(debug_fallback=True)
        require_binary(self.bin, log)
        self.rec = Path(work) / "rec"
        self.rec.mkdir()
        self.nginx = Nginx(processes, work, record=self.rec)
        self.daemon = Daemon(processes, work, relay_config(relay, [(output, self.nginx.url(output))]),
                             self.bin, health_timeout=60,
                             env={"RUST_LOG": os.environ.get("RUST_LOG", "info")})
        started, events = self.daemon.started, self.daemon.events
        self.slate = events.wait("on_air", started, 60, "the slate on air", relay=relay, showing="slate")
        self.live = events.wait("output_state", started, 60, f"{output} live", relay=relay,
                                output=output, to="live")

    def commands(self, publisher):
        """Every command and file of the set-up, with the publisher's, for a report."""
        return {"nginx": shell(self.nginx.cmd), "nginx_conf": self.nginx.conf.read_text(),
                "daemon": shell(self.daemon.command), "config": self.daemon.config,
                "publisher": shell(publisher)}


def relay_config(relay, outputs, extra=()):
    """One `[[relay]]` with stream key `<relay>-key`; outputs are (id, url) pairs, extra are
    more lines of the table (`overlay = {}`, `transcode = false`)."""
    lines = ["[[relay]]", f'id = "{relay}"', f'ingest = {{ stream_key = "{relay}-key" }}', *extra]
    outs = ", ".join(f'{{ id = "{o}", url = "{u}" }}' for o, u in outputs)
    lines.append(f"outputs = [ {outs} ]")
    return "\n".join(lines) + "\n"


class EventFeed:
    """The daemon's live events (`GET /api/v1/events`, Server-Sent Events), read in a thread.

    It asks from the first event the daemon kept (`Last-Event-ID: 0`), so nothing since the
    daemon started is missed, and after a dropped stream it resumes after the last id. Each
    event is the daemon's JSON: {"id", "kind", "relay", "at", "data"}, where `at` is the
    daemon's wall clock (Unix seconds) when the relay actor published the change: at the end
    of the actor's turn that made it, so the same clock as time.time() here."""

    def __init__(self, api):
        url = urllib.parse.urlsplit(api)
        self.host, self.port = url.hostname, url.port
        self.events = []
        self.last_id = 0
        self.cond = threading.Condition()
        self.closed = False
        self.conn = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.closed:
            conn = HTTPConnection(self.host, self.port, timeout=30)
            self.conn = conn
            try:
                conn.request("GET", "/api/v1/events", headers={
                    "accept": "text/event-stream", "last-event-id": str(self.last_id)})
                resp = conn.getresponse()
                if resp.status == 200:
                    self._read(resp)
            except (OSError, HTTPException):
                pass
            finally:
                conn.close()
            if not self.closed:
                time.sleep(0.2)  # the daemon is gone or closed the stream: ask again

    def _read(self, resp):
        data = []
        while True:
            line = resp.readline()
            if not line:
                return
            line = line.decode(errors="replace").rstrip("\r\n")
            if line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            elif not line and data:  # a blank line ends an event; `id:` and `event:` are in the JSON
                try:
                    event = json.loads("\n".join(data))
                except ValueError:
                    event = None
                data = []
                if isinstance(event, dict):
                    with self.cond:
                        self.last_id = max(self.last_id, event.get("id", 0))
                        self.events.append(event)
                        self.cond.notify_all()

    @staticmethod
    def _matches(e, kind, after, before, relay, data):
        return (e["kind"] == kind and (after is None or e["at"] >= after)
                and (before is None or e["at"] < before) and (relay is None or e["relay"] == relay)
                and all(e["data"].get(k) == v for k, v in data.items()))

    def find(self, kind, after=None, before=None, relay=None, **data):
        """The events of `kind` with after <= at < before, for `relay`, whose data has the
        given values (`output="yt", to="live"`), in order."""
        with self.cond:
            return [e for e in self.events if self._matches(e, kind, after, before, relay, data)]

    def wait(self, kind, after, timeout, what=None, relay=None, **data):
        """The first event that `find` would give; raises RuntimeError after `timeout` s."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                hit = next((e for e in self.events
                            if self._matches(e, kind, after, None, relay, data)), None)
                if hit:
                    return hit
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"timed out after {timeout:g} s waiting for "
                                       f"{what or f'a {kind} event {data}'}")
                self.cond.wait(left)

    def close(self):
        self.closed = True
        conn = self.conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(2)


class LogSummary:
    """The daemon's log, for the reports only: its tracing lines' levels, targets and messages
    (`WARN` / `ERROR` ones listed), and the lines that are not tracing lines (GLib's own
    warnings, e.g. GStreamer-CRITICAL). Nothing here is used to learn the daemon's state."""

    LINE = re.compile(r"^\S+\s+(TRACE|DEBUG|INFO|WARN|ERROR)\s+(\S+?):?\s+(.*)$")
    FIELD = re.compile(r" (?:\w+)=")

    def __init__(self, path):
        self.entries = []   # (level, target, message, line)
        self.other = []     # lines that are not tracing lines
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            text = ""
        for line in text.splitlines():
            m = self.LINE.match(re.sub(r"\x1b\[[0-9;]*m", "", line))
            if m:
                message = self.FIELD.split(" " + m.group(3), 1)[0].strip()
                self.entries.append((m.group(1), m.group(2), message, line))
            elif line.strip():
                self.other.append(line)

    def lines(self):
        return len(self.entries) + len(self.other)

    def levels(self):
        counts = {}
        for level, *_ in self.entries:
            counts[level] = counts.get(level, 0) + 1
        return counts

    def warnings(self):
        """The WARN and ERROR lines, whole."""
        return [line for level, _, _, line in self.entries if level in ("WARN", "ERROR")]

    def warning_messages(self, target_prefix=""):
        """{message: count} of the WARN and ERROR lines whose target starts so."""
        counts = {}
        for level, target, message, _ in self.entries:
            if level in ("WARN", "ERROR") and target.startswith(target_prefix):
                counts[message] = counts.get(message, 0) + 1
        return counts


def count_messages(lines, limit=None):
    """Log lines without their time and fields, counted, in order of first appearance (an
    `object=` field is kept with its numbers as N: it names the GStreamer element), as report
    lines `  12x WARN target message`; the first `limit` of them."""
    counts = {}
    for line in lines:
        m = LogSummary.LINE.match(re.sub(r"\x1b\[[0-9;]*m", "", line))
        text = f"{m.group(1)} {m.group(2)} {m.group(3)}" if m else line
        text = re.sub(r"\d+:\d\d:\d\d\.\d+", "T", text)  # GStreamer times in the message
        obj = re.search(r" object=(\S+)", text)
        text = re.split(r" (?:category|relay|object|output|pipeline|peer|error)=", text)[0][:160]
        if obj:
            text += " [object=%s]" % re.sub(r"\d+", "N", obj.group(1))
        counts[text] = counts.get(text, 0) + 1
    return [f"  {count:3d}x {text}" for text, count in list(counts.items())[:limit]]


# ---------------------------------------------------------------------------------------------
# nginx-rtmp


class Nginx:
    """An nginx with the RTMP module and one `live` application, on 127.0.0.1: the ingest of
    the ffmpeg way, or the destination standing in for YouTube. With `record` (a directory) it
    records every session it receives (`record all; record_unique on`) and logs at info, so
    its `publish:` lines can be counted. Files are `<name>.conf`, `<name>.log` in `work`."""

    def __init__(self, procs, work, name="nginx", record=None, port=None):
        self.procs, self.work, self.name = procs, Path(work), name
        self.port = port or free_port()
        self.conf = self.work / f"{name}.conf"
        self.log = self.work / f"{name}.log"
        if record:
            app = f"live on; record all; record_path {record}; record_unique on;"
            server = f"listen 127.0.0.1:{self.port}; chunk_size 4096;"
        else:
            app, server = "live on;", f"listen 127.0.0.1:{self.port};"
        self.conf.write_text(
            f"load_module {NGINX_RTMP_MODULE};\n"
            "daemon off; master_process off; worker_processes 1;\n"
            f"error_log {self.log}{' info' if record else ''}; pid {self.work}/{name}.pid;\n"
            "events { worker_connections 256; }\n"
            f"rtmp {{ server {{ {server} application live {{ {app} }} }} }}\n")
        self.cmd = ["nginx", "-e", self.work / f"{name}-startup.log", "-c", self.conf, "-p", self.work]
        self.start()

    def start(self):
        """Starts it (again: same config, same port) and waits until it listens."""
        self.proc = self.procs.start(self.cmd, stderr=subprocess.DEVNULL)

        def up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited ({self.proc.returncode}); see {self.log}")
            return listening(self.port)
        wait_for(up, 10, f"nginx ({self.name}) to listen", 0.02)

    def stop(self, timeout=10):
        return Processes.stop(self.proc, signal.SIGTERM, timeout)

    def url(self, key):
        return f"rtmp://127.0.0.1:{self.port}/live/{key}"

    def publishes(self):
        """Its `publish: name=` log lines (with `record`): one per session it received."""
        try:
            return [l for l in self.log.read_text(errors="replace").splitlines() if "publish: name=" in l]
        except OSError:
            return []


# ---------------------------------------------------------------------------------------------
# Clips and publishers


def probe_duration(path):
    """A file's duration by ffprobe, 0.0 when it is missing or unreadable."""
    if not Path(path).exists():
        return 0.0
    out = output_of("ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path))
    try:
        return float(out)
    except ValueError:
        return 0.0


def clip_command(path, video, seconds, encode=CLIP_ENCODE):
    """A clip of the lavfi `video` with a 440 Hz tone, encoded with `encode`, as FLV."""
    return [*FFMPEG, "-y", "-f", "lavfi", "-i", video, "-f", "lavfi", "-i", TONE,
            "-t", f"{seconds:g}", *encode, "-f", "flv", path]


def ensure_clip(path, video, need, write=None, encode=CLIP_ENCODE, log=None, nice=False):
    """Writes the clip (`write` seconds, default `need`) unless one of at least `need` seconds
    is there; written once to a temporary name, then renamed, and reused."""
    if probe_duration(path) >= need:
        return
    seconds = write or need
    path.parent.mkdir(parents=True, exist_ok=True)
    if log:
        log(f"writing {path.relative_to(ROOT)} ({seconds:g} s; once{', at nice 19' if nice else ''})")
    tmp = path.with_name(path.name + ".tmp")
    cmd = clip_command(tmp, video, seconds, encode)
    subprocess.run([str(c) for c in (["nice", "-n", "19"] if nice else []) + cmd], check=True)
    tmp.rename(path)


def copy_publisher(clip, url, seconds, progress=None, progress_every=None, container="flv"):
    """`ffmpeg -re -c copy` of a pre-encoded clip to an RTMP url (or, with container="mpegts",
    an SRT one): a publisher that costs almost nothing. `progress`: ffmpeg's -progress target
    (a file, or pipe:1)."""
    cmd = list(FFMPEG)
    if progress:
        cmd += ["-progress", str(progress)]
    if progress_every:
        cmd += ["-stats_period", f"{progress_every:g}"]
    return cmd + ["-re", "-i", clip, "-t", f"{seconds:g}", "-c", "copy", "-f", container, url]


def encode_publisher(inputs, url):
    """A publisher that encodes as it goes (PUBLISHER_ENCODE) from ffmpeg input args."""
    return [*FFMPEG, *inputs, *PUBLISHER_ENCODE, "-f", "flv", url]


def read_progress(path):
    """The last complete block of an ffmpeg -progress file, as a dict ({} with no file)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return {}
    last, block = {}, {}
    for line in text.splitlines():
        key, eq, value = line.strip().partition("=")
        if not eq:
            continue
        block[key] = value
        if key == "progress":
            last, block = block, {}
    return last or block


class PublishClock:
    """The wall time at which a `copy_publisher(..., progress="pipe:1", progress_every=0.1)`
    sent stream time 0: with -re, the packet at time t leaves at start + t, and each progress
    report gives an upper bound."""

    def __init__(self, proc):
        self.start = None
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc):
        out_us = None
        for line in proc.stdout:
            key, _, value = line.strip().partition("=")
            if key == "out_time_us" and value.lstrip("-").isdigit():
                out_us = int(value)
            elif key == "progress" and out_us and out_us > 0:
                bound = time.time() - out_us / 1e6
                self.start = bound if self.start is None else min(self.start, bound)


def live_reader(url, args, loglevel="error"):
    """An ffmpeg that plays an RTMP stream as it arrives (no input buffering, one decoder
    thread, no audio) into `args` (its filters and output)."""
    return ["ffmpeg", "-hide_banner", "-nostats", "-loglevel", loglevel, "-nostdin",
            "-fflags", "nobuffer", "-flags", "low_delay", "-threads", "1", "-an", "-i", url, *args]


def scoreboard(home, period=None):
    """The built-in scoreboard shape: NAVI `home` - 0 G2."""
    board = {"home": {"name": "NAVI", "score": home}, "away": {"name": "G2", "score": 0}}
    if period:
        board["period"] = period
    return board


class ScoresApi:
    """A scores API on loopback answering GET /match with `board(home)`; the benchmark sets
    `home`. `polls` has the time of each GET."""

    def __init__(self, board=scoreboard):
        self.home = 0
        self.polls = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                if self.path != "/match":
                    self.send_error(404)
                    return
                api.polls.append(time.time())
                body = json.dumps(board(api.home)).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/match"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------------------------------------
# HLS and ffprobe


def parse_playlist(text):
    """A media playlist: {"media_sequence", "segments": [{"uri", "duration", "pdt"}],
    "discontinuity", "endlist"}. A segment's `pdt` is the EXT-X-PROGRAM-DATE-TIME right before
    it (seconds since the epoch), else None."""
    out = {"media_sequence": 0, "segments": [], "discontinuity": False, "endlist": False}
    duration = pdt = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#EXTINF:"):
            duration = float(line[8:].split(",")[0])
        elif line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            pdt = parse_rfc3339(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            out["media_sequence"] = int(line.split(":", 1)[1])
        elif line == "#EXT-X-DISCONTINUITY":
            out["discontinuity"] = True
        elif line == "#EXT-X-ENDLIST":
            out["endlist"] = True
        elif line and not line.startswith("#"):
            out["segments"].append({"uri": line, "duration": duration, "pdt": pdt})
            duration = pdt = None
    return out


def fetch_text(url, timeout=2):
    """A URL's body as text, or None on any failure."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read().decode(errors="replace")
    except OSError:
        return None


class SegmentKeeper:
    """Hard-links every `*.ts` in `src` into `dst` as it appears (same inode: it keeps growing
    while it is written and survives the writer's deletion). `sweep()` once, or `start()` a
    thread that sweeps every `every` s until `stop()`."""

    def __init__(self, src, dst, every=1.0):
        self.src, self.dst, self.every = Path(src), Path(dst), every
        self.dst.mkdir(parents=True, exist_ok=True)
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def sweep(self):
        try:
            names = [p for p in self.src.iterdir() if p.suffix == ".ts"]
        except OSError:
            return
        for p in names:
            target = self.dst / p.name
            if not target.exists():
                try:
                    os.link(p, target)
                except OSError:
                    pass

    def kept(self):
        return sorted(p.name for p in self.dst.iterdir() if p.suffix == ".ts")

    def _run(self):
        while not self.stop_flag.is_set():
            self.sweep()
            self.stop_flag.wait(self.every)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.stop_flag.set()
        self.thread.join(5)
        self.sweep()


def probe_video(target):
    """(video packets = frames, width, height) of a file or URL by ffprobe, or None when
    ffprobe cannot read it."""
    r = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets",
                        "-show_entries", "stream=nb_read_packets,width,height", "-of", "json",
                        str(target)], capture_output=True, text=True)
    if r.returncode != 0:
        return None
    try:
        s = json.loads(r.stdout)["streams"][0]
        return int(s.get("nb_read_packets", 0)), s.get("width"), s.get("height")
    except (ValueError, KeyError, IndexError):
        return 0, None, None


# ---------------------------------------------------------------------------------------------
# The flashing clip and the detectors that time it (bench/run, bench/srt-latency)

CLIP = OUT / "run-clip-v1.flv"  # bump the version when the clip's recipe changes
CLIP_SECONDS = 100
AAC = ["-c:a", "aac", "-b:a", "128k", "-ar", "48000", "-ac", "2"]
FPS = 30
FLASH_EVERY = 4  # seconds; frame n is white when n % (FLASH_EVERY * FPS) == 0
BUG = (24, 24)  # where scorecast draws the scorebug at 720p (top-left, margin 24)


def write_flash_clip(log):
    """CLIP: a 720p30 H.264 + AAC clip with moving content (testsrc2), a white frame every
    FLASH_EVERY s, and a black box top-left where the scorebug goes, so that only the overlay
    changes that corner (bench/run, bench/srt-latency)."""
    video = (f"testsrc2=size=1280x720:rate={FPS},"
             f"drawbox=x=0:y=0:w=iw:h=ih:color=white:t=fill:enable='eq(mod(n,{FLASH_EVERY * FPS}),0)',"
             "drawbox=x=0:y=0:w=480:h=96:color=black:t=fill")
    encode = ["-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-b:v", "3000k",
              "-maxrate", "3000k", "-bufsize", "3000k", "-g", "60", "-keyint_min", "60",
              "-sc_threshold", "0", "-pix_fmt", "yuv420p", *AAC]
    ensure_clip(CLIP, video, CLIP_SECONDS - 1, CLIP_SECONDS, encode, log)


class Detector:
    """Decodes an RTMP stream as it arrives (one decoder thread, no buffering) and timestamps
    every frame: the top 96 rows at half size, grey. Flashes: the right half of that strip
    turns white. Overlay changes: the scorebug's corner differs from the frame before."""

    W, H = 640, 48

    def __init__(self, procs, url):
        self.frames = []  # (arrival, flash level, bug change)
        cmd = live_reader(url, ["-vf", f"crop=1280:96:0:0,scale={self.W}:{self.H},format=gray",
                                "-f", "rawvideo", "pipe:1"])
        self.proc = procs.start(cmd, stdout=subprocess.PIPE)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        size = self.W * self.H
        prev = None
        # The home score's digits in the scorebug (scorecast render-overlay: x 149-173, y
        # 12-29 of the 376x43 bug at 720p), with room for two digits.
        x0, x1 = (BUG[0] + 141) // 2, (BUG[0] + 185) // 2
        y0, y1 = (BUG[1] + 8) // 2, (BUG[1] + 34) // 2
        while True:
            frame = self.proc.stdout.read(size)
            if len(frame) < size:
                return
            now = time.time()
            flash = [frame[y * self.W + x] for y in range(0, self.H, 4)
                     for x in range(self.W // 2 + 16, self.W, 8)]
            flash = sum(flash) / len(flash)
            bug = b"".join(frame[y * self.W + x0:y * self.W + x1] for y in range(y0, y1))
            change = 0.0 if prev is None else sum(abs(p - q) for p, q in zip(bug, prev)) / len(bug)
            prev = bug
            self.frames.append((now, flash, change))

    def flashes(self, level=200):
        out, was = [], False
        for t, flash, _ in self.frames:
            if flash >= level and not was:
                out.append(t)
            was = flash >= level
        return out

    def changes(self, threshold=3.0):
        return [t for t, _, change in self.frames if change >= threshold]


def flash_sent(dated, start):
    """When the publisher sent the flash seen or dated at `dated` (up to a few seconds later):
    flash k left at start + k * FLASH_EVERY. None for flash 0, sent before anything was on air."""
    k = round((dated - start - 1.0) / FLASH_EVERY)
    return start + k * FLASH_EVERY if k >= 1 else None


def latency_of(flashes, start):
    """Each detected flash against the time the publisher sent it."""
    return [t - sent for t in flashes if (sent := flash_sent(t, start)) is not None]
