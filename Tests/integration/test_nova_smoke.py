"""The control-plane kit's own acceptance run (../shared/reference/nova-control-plane/
ci_smoke.sh) with the agent as the compute: fresh databases, the real nova 34 services,
and `drive.py`'s ten steps (create, stop, start, reboot soft and hard, pause, unpause,
suspend, resume, delete) — checklist row 18 of nova-dropin.md. Runs after
test_nova_dropin.py has stopped its control plane (same ports)."""
import os
import pathlib
import shutil
import signal
import subprocess

from conftest import AGENT, BUILD, ROOT


def agents_running(conf):
    """PIDs of agents started with this config file."""
    pids = []
    for d in pathlib.Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if str(conf).encode() in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def test_the_kits_ci_smoke_passes_with_the_agent_as_nova_compute(tmp_path):
    subprocess.run(["bash", str(ROOT / "scripts" / "nova-control-plane.sh"), "install"], check=True, capture_output=True)
    shared = ROOT.parent / "shared"
    ref = (shared if shared.is_dir() else pathlib.Path("/work/shared")) / "reference" / "nova-control-plane"
    kit = tmp_path / "kit"
    shutil.copytree(ref, kit)
    for p in [kit, *kit.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)
    state = tmp_path / "agent-state"
    conf = tmp_path / "agent.conf"
    conf.write_text(f"""[DEFAULT]
control_plane = nova
state_path = {state}
plugin_dir = {BUILD}
compute_driver = libvirt
image_fetcher = glance

[libvirt]
connection_uri = test:///default

[glance]
api_servers = http://127.0.0.1:9292
cache_dir = {state}/_base
""")
    # ci_smoke.sh runs the command from its ci-run/ folder, where nova's files are.
    # `exec`: the agent is the process ci_smoke.sh's stop_all.sh signals.
    cmd = f"exec {AGENT} --config-file nova.conf --config-file nova-services.conf --config-file {conf}"
    env = {**os.environ, "COMPUTE_CMD": cmd, "NOVA_VENV": "/var/lib/compute-agent-test/nova-venv",
           "GLANCE_VENV": "/var/lib/compute-agent-test/glance-venv", "PYTHONWARNINGS": "ignore",
           # the kit's private MariaDB (the drop-in issue: sqlite locks up under concurrent writes)
           "DB": "mariadb", "MARIADB_SOCKET": str(tmp_path / "mysqld.sock")}
    try:
        p = subprocess.run(["sh", str(kit / "ci_smoke.sh")], capture_output=True, text=True, timeout=600, env=env, cwd=kit)
    finally:
        left = agents_running(conf)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        # a run that failed before its stop_all.sh leaves its MariaDB running: stop it by its PID
        if (kit / "ci-run" / "db" / "mariadb" / "mysqld.pid").exists():
            subprocess.run(["sh", "mariadb.sh", "stop"], cwd=kit / "ci-run", env=env, capture_output=True, timeout=60)
    assert not left, f"stop_all.sh left the agent running: {left}"
    out = p.stdout + p.stderr
    log = (kit / "ci-run" / "log" / "compute.out")
    print(out[-2000:])
    assert p.returncode == 0, out[-3000:] + "\n--- agent ---\n" + (log.read_text()[-3000:] if log.exists() else "")
    assert "all 10 steps reached their target state" in out
    assert "nova: instance built" in log.read_text()
