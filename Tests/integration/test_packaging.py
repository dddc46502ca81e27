"""The Debian packages, built by packaging/build-deb.sh, installed with dpkg and run on
this host with the Swift toolchain's directory hidden (an empty tmpfs over it in a mount
namespace): the package carries the one Swift runtime the agent and its Swift plugins
share. The -dev package builds a plugin out of tree with gcc and pkg-config."""
import os
import pathlib
import shutil
import subprocess
import time

import pytest

from conftest import ROOT, URL, new_instance, rpc_client, write_config

SWIFT_DIR = "/opt/swift"


def run(*argv, **kw):
    return subprocess.run(list(argv), capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("installing a package needs root")
    out = tmp_path_factory.mktemp("debs")
    built = run("bash", str(ROOT / "packaging" / "build-deb.sh"), str(out), timeout=1800)
    assert built.returncode == 0, built.stderr[-3000:]
    debs = sorted(out.glob("*.deb"))
    assert sorted(d.name.split("_")[0] for d in debs) == ["compute-agent", "compute-agent-dev"]
    inst = run("dpkg", "-i", *map(str, debs))
    assert inst.returncode == 0, inst.stdout + inst.stderr
    yield {d.name.split("_")[0]: d for d in debs}
    run("dpkg", "-r", "compute-agent-dev", "compute-agent")


def without_toolchain(command):
    """argv running `command` (a shell string) where /opt/swift is an empty directory."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c",
            f"mount -t tmpfs tmpfs {SWIFT_DIR} && exec {command}"]


def test_package_contents(installed):
    listing = run("dpkg-deb", "-c", str(installed["compute-agent"])).stdout
    for path in ["./usr/bin/compute-agent", "./usr/bin/computectl", "./etc/compute-agent/compute-agent.conf",
                 "./lib/systemd/system/compute-agent.service",
                 "./usr/lib/compute-agent/plugins/libcompute_hypervisor_libvirt.so",
                 "./usr/lib/compute-agent/plugins/libcompute_image_file.so",
                 "./usr/lib/compute-agent/plugins/libcompute_network_noop.so",
                 "./usr/lib/compute-agent/swift/libswiftCore.so"]:
        assert path in listing, path
    assert run("dpkg-deb", "-f", str(installed["compute-agent"]), "Conffiles").returncode == 0
    assert "/etc/compute-agent/compute-agent.conf" in run("dpkg-query", "-W", "-f=${Conffiles}", "compute-agent").stdout
    unit = pathlib.Path("/lib/systemd/system/compute-agent.service").read_text()
    for line in ["Type=notify", "WatchdogSec=", "Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID",
                 "User=compute-agent", "ProtectSystem=strict", "ReadWritePaths=/var/lib/compute-agent"]:
        assert line in unit, line
    if shutil.which("systemd-analyze"):
        # systemd's own reading of the unit: unknown settings, bad values, a missing
        # binary or group would be reported here.
        verify = run("systemd-analyze", "verify", "/lib/systemd/system/compute-agent.service")
        assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    st = os.stat("/var/lib/compute-agent")
    assert oct(st.st_mode & 0o777) == "0o750" and run("stat", "-c", "%U", "/var/lib/compute-agent").stdout.strip() == "compute-agent"
    assert run("id", "compute-agent").returncode == 0
    dev = run("dpkg-deb", "-c", str(installed["compute-agent-dev"])).stdout
    assert "./usr/include/compute-agent/compute_agent_plugin.h" in dev and "compute-agent-plugin.pc" in dev
    assert "./usr/share/doc/compute-agent-dev/plugin-guide.md" in dev


def test_runs_without_the_swift_toolchain(installed, tmp_path, transport):
    v = run(*without_toolchain("/usr/bin/compute-agent --version"))
    assert v.returncode == 0 and v.stdout.startswith("compute-agent "), v.stderr
    # A full start against the broker, with the packaged plugins (two of them in Swift).
    conf = write_config(tmp_path / "agent.conf", "deb-test-" + tmp_path.name[-6:], tmp_path / "state",
                        plugin_dir="/usr/lib/compute-agent/plugins")
    host = conf.read_text().split("host = ")[1].split()[0]
    log = open(tmp_path / "agent.log", "wb")
    p = subprocess.Popen(without_toolchain(f"/usr/bin/compute-agent --config-file {conf}"), stdout=log,
                         stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while time.time() < deadline and "consuming" not in (tmp_path / "agent.log").read_text():
            assert p.poll() is None, (tmp_path / "agent.log").read_text()
            time.sleep(0.1)
        c = rpc_client(transport, host)
        assert c.call({}, "ping")["pong"] is True
        assert c.call({}, "build_and_run_instance", instance=new_instance())["vm_state"] == "active"
        agent_pid = run("pgrep", "-f", f"compute-agent --config-file {conf}").stdout.split()
        maps = pathlib.Path(f"/proc/{agent_pid[-1]}/maps").read_text()
        assert "/usr/lib/compute-agent/swift/libswiftCore.so" in maps
        assert SWIFT_DIR not in maps
        assert maps.count("libswiftCore.so") == maps.count("/usr/lib/compute-agent/swift/libswiftCore.so")
    finally:
        p.terminate()
        p.wait(20)
        log.close()


def test_plugin_built_out_of_tree_against_the_installed_header(installed, tmp_path):
    cflags = run("pkg-config", "--cflags", "compute-agent-plugin").stdout.split()
    assert cflags == ["-I/usr/include/compute-agent"]
    plugins = tmp_path / "plugins"
    plugins.mkdir(mode=0o755)
    os.chmod(plugins, 0o755)
    example = "/usr/share/doc/compute-agent-dev/examples/noop.c"
    built = run("gcc", "-shared", "-fPIC", *cflags, "-o", str(plugins / "libcompute_network_noop.so"), example)
    assert built.returncode == 0, built.stderr
    for name in ["libcompute_hypervisor_libvirt.so", "libcompute_image_file.so"]:
        shutil.copy(f"/usr/lib/compute-agent/plugins/{name}", plugins / name)
    conf = write_config(tmp_path / "agent.conf", "deb-plugin-" + tmp_path.name[-6:], tmp_path / "state", plugin_dir=plugins)
    log = open(tmp_path / "agent.log", "wb")
    p = subprocess.Popen(["/usr/bin/compute-agent", "--config-file", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while time.time() < deadline and "consuming" not in (tmp_path / "agent.log").read_text():
            assert p.poll() is None, (tmp_path / "agent.log").read_text()
            time.sleep(0.1)
        text = (tmp_path / "agent.log").read_text()
        assert f"kind=network path={plugins}/libcompute_network_noop.so plugin=noop" in text
    finally:
        p.terminate()
        p.wait(20)
        log.close()
