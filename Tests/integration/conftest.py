"""Fixtures for the integration tests: a real RabbitMQ on loopback (started by
scripts/test.sh), the real compute-agent binary, the real oslo.messaging client."""
import os
import pathlib
import shutil
import signal
import subprocess
import time
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD = pathlib.Path(os.environ.get("CA_BUILD_DIR", ROOT / ".build" / "debug")).resolve()
AGENT = BUILD / "compute-agent"
CTL = BUILD / "computectl"
RABBIT_USER = "ca-test"
RABBIT_PASSWORD = "Sekr3tPw42x"
URL = f"rabbit://{RABBIT_USER}:{RABBIT_PASSWORD}@127.0.0.1:5672/"


@pytest.fixture(scope="session", autouse=True)
def rabbit_user():
    """A broker user whose password is distinctive, so tests can check it never leaks."""
    ctl = ["rabbitmqctl", "-n", os.environ.get("RABBITMQ_NODENAME", "rabbit@localhost"), "-q"]
    users = subprocess.run(ctl + ["list_users"], capture_output=True, text=True, check=True).stdout
    if RABBIT_USER not in users.split():
        subprocess.run(ctl + ["add_user", RABBIT_USER, RABBIT_PASSWORD], check=True, capture_output=True)
    else:
        subprocess.run(ctl + ["change_password", RABBIT_USER, RABBIT_PASSWORD], check=True, capture_output=True)
    subprocess.run(ctl + ["set_permissions", "-p", "/", RABBIT_USER, ".*", ".*", ".*"], check=True, capture_output=True)


def write_config(path, host, state, plugin_dir=BUILD, extra_default="", sections=None):
    sections = sections if sections is not None else {"libvirt": {"connection_uri": "test:///default"}}
    text = f"""[DEFAULT]
host = {host}
transport_url = {URL}
state_path = {state}
plugin_dir = {plugin_dir}
report_interval = 1
periodic_interval = 2
{extra_default}
"""
    for name, opts in sections.items():
        text += f"\n[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in opts.items())
    path.write_text(text)
    return path


class Agent:
    def __init__(self, tmp, host=None, **config):
        self.host = host or f"test-{uuid.uuid4().hex[:8]}"
        self.tmp = pathlib.Path(tmp)
        self.state = self.tmp / "state"
        self.conf = write_config(self.tmp / "agent.conf", self.host, self.state, **config)
        self.log = self.tmp / "agent.log"
        self.proc = None

    def start(self, wait_for="consuming", timeout=20, env=None, prefix=()):
        """Starts the agent (under `prefix`, e.g. a `setpriv` that drops capabilities) and
        waits for `wait_for` in its log."""
        self.logf = open(self.log, "ab")
        self.mark = len(self.text())
        configs = [a for f in getattr(self, "pre_configs", []) for a in ("--config-file", str(f))]
        self.proc = subprocess.Popen([*prefix, str(AGENT), *configs, "--config-file", str(self.conf)], stdout=self.logf,
                                     stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        deadline = time.time() + timeout
        while time.time() < deadline:
            if wait_for in self.text()[self.mark:]:
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.text()}")
            time.sleep(0.05)
        raise AssertionError(f"agent did not log {wait_for!r} within {timeout} s:\n{self.text()}")

    def text(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_killed(self, timeout=30):
        """Waits for the agent to die by SIGKILL (a failpoint); returns its exit status."""
        self.proc.wait(timeout)
        self.logf.close()
        return self.proc.returncode

    def kill(self):
        self.proc.kill()
        return self.wait_killed()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and not self.logf.closed:
            self.logf.close()
        return self.proc.returncode if self.proc else None


@pytest.fixture
def agent_factory(tmp_path):
    agents = []

    def make(**kw):
        d = tmp_path / f"agent{len(agents)}"
        d.mkdir()
        a = Agent(d, **kw)
        agents.append(a)
        return a

    yield make
    for a in agents:
        a.stop()


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    a = Agent(tmp_path_factory.mktemp("agent")).start()
    yield a
    a.stop()


@pytest.fixture(scope="session")
def transport():
    import oslo_messaging
    from oslo_config import cfg
    oslo_messaging.set_transport_defaults("nova")
    t = oslo_messaging.get_rpc_transport(cfg.CONF, url=URL)
    yield t
    t.cleanup()


@pytest.fixture
def client(transport, agent):
    import oslo_messaging
    return oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(topic="compute", server=agent.host), timeout=15)


def new_instance(**over):
    inst = {"uuid": str(uuid.uuid4()), "name": "vm-" + uuid.uuid4().hex[:6], "vcpus": 1, "memory_mb": 64, "root_gb": 1}
    inst.update(over)
    return inst


def wait_state(client, uuid_, vm_state, timeout=15):
    """Polls get_instance_info until the instance reaches vm_state with no task."""
    deadline = time.time() + timeout
    info = None
    import oslo_messaging
    while time.time() < deadline:
        try:
            info = client.call({}, "get_instance_info", instance_uuid=uuid_)
        except oslo_messaging.RemoteError as e:
            # A cast build becomes visible once the agent has accepted (journalled) it.
            if e.exc_type != "InstanceNotFound":
                raise
            time.sleep(0.05)
            continue
        if info["vm_state"] == vm_state and info["task_state"] is None:
            return info
        time.sleep(0.05)
    raise AssertionError(f"instance {uuid_} did not reach {vm_state}: {info}")


HEADER_DIR = ROOT / "Sources" / "PluginABI" / "include"
TEST_PLUGINS = ROOT / "Tests" / "integration" / "plugins"


@pytest.fixture(scope="session")
def test_plugin_dir(tmp_path_factory):
    """The shipped plugins plus the C test plugins (memhv hypervisor, recnet network),
    built with gcc against the plugin header."""
    d = tmp_path_factory.mktemp("test-plugins")
    os.chmod(d, 0o755)
    for name in ["libcompute_hypervisor_libvirt.so", "libcompute_image_file.so", "libcompute_image_glance.so",
                 "libcompute_network_noop.so"]:
        shutil.copy(BUILD / name, d / name)
    for src, out in [("memhv.c", "libcompute_hypervisor_memhv.so"), ("recnet.c", "libcompute_network_recnet.so")]:
        subprocess.run(["gcc", "-Wall", "-shared", "-fPIC", "-O1", "-o", str(d / out), f"-I{HEADER_DIR}",
                        str(TEST_PLUGINS / src), "-lpthread"], check=True)
    for f in d.iterdir():
        os.chmod(f, 0o755)
    return d


def memhv_agent(tmp, plugin_dir, extra_default="", host=None, memhv=None):
    """An agent on the memhv test hypervisor (domains kept in <tmp>/domains, so they
    outlive the agent) with the recording network plugin (<tmp>/net.log)."""
    tmp = pathlib.Path(tmp)
    return Agent(tmp, host=host, plugin_dir=plugin_dir,
                 extra_default="compute_driver = memhv\nnetwork_plugin = recnet\n" + extra_default,
                 sections={"memhv": {"state_file": tmp / "domains", **(memhv or {})}, "recnet": {"record_file": tmp / "net.log"},
                           "file": {"upload_dir": tmp / "images"}})


def rpc_client(transport, host, timeout=15):
    import oslo_messaging
    return oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(topic="compute", server=host), timeout=timeout)


def make_image(path, size=65536):
    """A small image file and its sha256 checksum in the form the agent takes."""
    import hashlib
    data = os.urandom(size)
    pathlib.Path(path).write_bytes(data)
    return f"file://{path}", "sha256:" + hashlib.sha256(data).hexdigest()


def edit_domains(path, change):
    """Changes memhv's domain file behind the agent's back, atomically (write a copy, then
    rename), as memhv itself does: the plugin never reads a half-written file."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".edit")
    tmp.write_text(change(path.read_text() if path.exists() else ""))
    os.replace(tmp, path)
