"""A second, private RabbitMQ node on this machine for the tests that need one of their own:
a TLS listener with certificates the test makes with openssl, and a node to fail over
from. It runs beside the suite's main broker (its own node name, ports and data
directory) and is stopped at the end of the session."""
import os
import pathlib
import shutil
import subprocess
import tempfile
import time

from conftest import RABBIT_PASSWORD, RABBIT_USER


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(d):
    """A CA, a server certificate for localhost/127.0.0.1, a client certificate, and a
    second CA that signed nothing of the broker's (for the wrong-CA case)."""
    d = pathlib.Path(d)
    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=test {ca}",
                "-keyout", f"{ca}.key", "-out", f"{ca}.pem", cwd=d)
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, cn in (("server", "localhost"), ("client", "compute-agent")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        ext = ["-extfile", "san.ext"] if name == "server" else []
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-out", f"{name}.pem", *ext, cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=stranger", "-keyout", "stranger.key", "-out", "stranger.csr", cwd=d)
    openssl("x509", "-req", "-in", "stranger.csr", "-CA", "other-ca.pem", "-CAkey", "other-ca.key", "-CAcreateserial",
            "-days", "2", "-out", "stranger.pem", cwd=d)
    for f in d.iterdir():
        os.chmod(f, 0o644)  # the broker runs as the rabbitmq user
    return d


class RabbitNode:
    def __init__(self, name="ca-extra", port=5673, tls_port=5671, dist_port=25673):
        self.name = f"{name}@localhost"
        self.port, self.tls_port, self.dist_port = port, tls_port, dist_port
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="ca-rabbit-"))
        os.chmod(self.dir, 0o755)
        (self.dir / "certs").mkdir()
        self.certs = make_certificates(self.dir / "certs")
        for sub in ("mnesia", "log"):
            (self.dir / sub).mkdir()
            shutil.chown(self.dir / sub, "rabbitmq", "rabbitmq")
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq.conf").write_text(f"""
listeners.tcp.default = 127.0.0.1:{port}
listeners.ssl.default = 127.0.0.1:{tls_port}
ssl_options.cacertfile = {self.certs}/ca.pem
ssl_options.certfile = {self.certs}/server.pem
ssl_options.keyfile = {self.certs}/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
loopback_users = none
""")
        self.env = {**os.environ, "RABBITMQ_NODENAME": self.name, "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                    "RABBITMQ_NODE_PORT": str(port), "RABBITMQ_DIST_PORT": str(dist_port),
                    "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"), "RABBITMQ_LOG_BASE": str(self.dir / "log"),
                    "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
                    "RABBITMQ_PID_FILE": str(self.dir / "mnesia" / "pid"), "ERL_EPMD_ADDRESS": "127.0.0.1"}
        self.proc = None

    def ctl(self, *args, check=True):
        return subprocess.run(["rabbitmqctl", "-n", self.name, "-q", *args], capture_output=True, text=True,
                              check=check, timeout=60)

    def start(self):
        self.log = open(self.dir / "server.out", "wb")
        self.proc = subprocess.Popen(["rabbitmq-server"], env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.ctl("await_startup", check=False).returncode == 0:
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {(self.dir / 'server.out').read_text()[-2000:]}")
            time.sleep(1)
        else:
            raise RuntimeError(f"{self.name} did not start in 120 s")
        self.ctl("add_user", RABBIT_USER, RABBIT_PASSWORD, check=False)
        self.ctl("set_permissions", "-p", "/", RABBIT_USER, ".*", ".*", ".*")
        return self

    def stop_app(self):
        self.ctl("stop_app")

    def start_app(self):
        self.ctl("start_app")
        self.ctl("await_startup")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.ctl("stop", check=False)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
