"""Shared helpers for the python tools in tools/ (profile, soak, tls-scan,
plot-latency): starting and stopping processes by PID, certificates, Debian
packages, private virtual environments, /proc readings and /metrics.

Python stdlib only. Not a script: the tools import it from their own folder.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")
TICK = os.sysconf("SC_CLK_TCK")


class ToolError(Exception):
    """A failure the tool reports in one line and exits non-zero for."""


def log(prog, *a):
    print(f"{prog}:", *a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_loopback(host):
    """Every tool here targets 127.0.0.1 only."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ToolError(f"refusing non-loopback target {host!r}")


def wait_port(port, proc=None, timeout=10.0):
    """Waits until 127.0.0.1:port accepts; False on timeout or if proc exits."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def apt_install(packages, prog):
    """Installs Debian packages (as root, or through sudo)."""
    if not shutil.which("apt-get"):
        raise ToolError(f"cannot install {' '.join(packages)}: no apt-get on this machine")
    log(prog, f"installing {' '.join(packages)} with apt-get")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(sudo + ["apt-get", "install", "-y", "-qq"] + packages, env=env,
                       stdout=subprocess.DEVNULL, timeout=900)
    if r.returncode != 0:
        subprocess.run(sudo + ["apt-get", "update", "-qq"], env=env, timeout=600)
        r = subprocess.run(sudo + ["apt-get", "install", "-y", "-qq"] + packages, env=env,
                           stdout=subprocess.DEVNULL, timeout=900)
    if r.returncode != 0:
        raise ToolError(f"apt-get install {' '.join(packages)} failed (exit {r.returncode})")


def ensure_venv(venv_dir, packages, probe_modules, prog):
    """Re-executes the running script inside venv_dir (created with `packages`
    installed by pip) unless `probe_modules` already import. Returns only when
    the modules are importable in this interpreter."""
    missing = []
    for m in probe_modules:
        try:
            __import__(m)
        except ImportError:
            missing.append(m)
    if not missing:
        return
    venv_py = os.path.join(venv_dir, "bin", "python3")
    if os.environ.get("RINGTERM_TOOLS_IN_VENV") == venv_dir:
        raise ToolError(f"{', '.join(missing)} still not importable inside {venv_dir}; "
                        f"remove that folder and try again")
    if not os.path.exists(venv_py):
        log(prog, f"creating virtual environment {venv_dir}")
        import venv
        venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    check = subprocess.run([venv_py, "-c", "; ".join(f"import {m}" for m in probe_modules)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if check.returncode != 0:
        log(prog, f"pip install {' '.join(packages)} into {venv_dir}")
        r = subprocess.run([venv_py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
                           + packages, timeout=1200)
        if r.returncode != 0:
            raise ToolError(f"pip install {' '.join(packages)} failed (exit {r.returncode})")
    env = dict(os.environ, RINGTERM_TOOLS_IN_VENV=venv_dir)
    script = os.path.abspath(sys.argv[0])
    os.execve(venv_py, [venv_py, script] + sys.argv[1:], env)


def make_cert(d, days=30):
    """A self-signed ECDSA P-256 leaf certificate for localhost/127.0.0.1
    (CA:FALSE, digitalSignature, serverAuth: what a CA would issue)."""
    if not shutil.which("openssl"):
        raise ToolError("openssl is required to generate a certificate")
    key, cert = os.path.join(d, "key.pem"), os.path.join(d, "cert.pem")
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                        "-days", str(days), "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-addext", "basicConstraints=critical,CA:FALSE",
                        "-addext", "keyUsage=critical,digitalSignature",
                        "-addext", "extendedKeyUsage=serverAuth"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise ToolError(f"openssl req failed: {r.stderr.strip()[-300:]}")
    return cert, key


def release_bins(prog, build=True):
    """Paths of target/release/{ringterm,ringterm-load}, building them if absent."""
    rt = os.path.join(ROOT, "target/release/ringterm")
    load = os.path.join(ROOT, "target/release/ringterm-load")
    if not (os.path.exists(rt) and os.path.exists(load)):
        if not build:
            raise ToolError(f"{rt} or {load} is missing: run `cargo build --release`")
        log(prog, "building release binaries (cargo build --release --bins)")
        r = subprocess.run(["cargo", "build", "--release", "--bins"], cwd=ROOT)
        if r.returncode != 0:
            raise ToolError("cargo build --release failed")
    return rt, load


class Proc:
    """A long-running process (optionally under taskset), stopped by its PID."""

    def __init__(self, name, argv, logdir, cpu=None, port=None, wait=10.0):
        self.name, self.port = name, port
        self.log_path = os.path.join(logdir, f"{name}.log")
        self._log = open(self.log_path, "w")
        cmd = (["taskset", "-c", str(cpu)] if cpu is not None else []) + list(argv)
        self.argv = cmd
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid
        if port is not None and not wait_port(port, self.proc, wait):
            tail = self.tail()
            self.stop()
            raise ToolError(f"{name} did not start listening on 127.0.0.1:{port} "
                            f"(exit {self.proc.returncode}): {tail}")

    def tail(self, n=1500):
        try:
            self._log.flush()
            with open(self.log_path) as f:
                return f.read()[-n:].strip()
        except OSError:
            return ""

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=10.0):
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except OSError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except OSError:
                    pass
                self.proc.wait(timeout=10)
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode


def rss_kb(pid):
    """VmRSS of a process in KB (None if gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def cpu_seconds(pid):
    """utime+stime of a process (all its threads), seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except OSError:
        return None


def fetch_metrics(port, timeout=2.0):
    """Parses ringterm's /metrics into {name: sum over labels}, plus
    {'name{labels}': sum over workers} for series with labels other than
    `worker` (e.g. 'ringterm_handshake_failures_total{reason="timeout"}')."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        try:
            name_labels, value = line.rsplit(" ", 1)
            name = name_labels.split("{", 1)[0]
            out[name] = out.get(name, 0.0) + float(value)
            if "{" in name_labels:
                labels = [l for l in name_labels.split("{", 1)[1].rstrip("}").split(",")
                          if l and not l.startswith("worker=")]
                if labels:
                    key = name + "{" + ",".join(labels) + "}"
                    out[key] = out.get(key, 0.0) + float(value)
        except ValueError:
            continue
    return out
