"""A bad configuration is reported with file, line and option, and the agent exits 2."""
import subprocess

from conftest import AGENT


def run(tmp_path, text):
    conf = tmp_path / "bad.conf"
    conf.write_text(text)
    p = subprocess.run([str(AGENT), "--config-file", str(conf)], capture_output=True, text=True, timeout=20)
    return p.returncode, p.stderr, conf


def test_bad_value_names_file_line_option(tmp_path):
    code, err, conf = run(tmp_path, "[DEFAULT]\nhost = h\nreport_interval = soon\n")
    assert code == 2
    assert f"{conf}:3: [DEFAULT] report_interval: expected a number of seconds, got 'soon'" in err


def test_unknown_option(tmp_path):
    code, err, conf = run(tmp_path, "[DEFAULT]\nperiodic_intervall = 5\n")
    assert code == 2 and f"{conf}:2: [DEFAULT] periodic_intervall: unknown option" in err


def test_unknown_section(tmp_path):
    code, err, conf = run(tmp_path, "[DEFAULT]\n[neutron]\nurl = x\n")
    assert code == 2 and f"{conf}:2: [neutron]: unknown section" in err


def test_bad_transport_url_does_not_echo_the_password(tmp_path):
    code, err, conf = run(tmp_path, "[DEFAULT]\ntransport_url = rabbit://u:hunter2@h:notaport/\n")
    assert code == 2 and f"{conf}:2: [DEFAULT] transport_url: invalid port" in err
    assert "hunter2" not in err


def test_missing_config_file(tmp_path):
    p = subprocess.run([str(AGENT), "--config-file", str(tmp_path / "nope.conf")], capture_output=True, text=True)
    assert p.returncode == 2 and "cannot read the file: No such file or directory" in p.stderr


def test_config_file_is_required():
    p = subprocess.run([str(AGENT)], capture_output=True, text=True)
    assert p.returncode == 2 and "--config-file is required" in p.stderr


def test_resource_and_notification_options_are_checked(tmp_path):
    code, err, conf = run(tmp_path, "[DEFAULT]\ncpu_allocation_ratio = -1\n")
    assert code == 2 and f"{conf}:2: [DEFAULT] cpu_allocation_ratio: -1 is out of range (0, 1000]" in err
    code, err, conf = run(tmp_path, "[DEFAULT]\n\nnotification_driver = log\n")
    assert code == 2 and f"{conf}:3: [DEFAULT] notification_driver: 'log' is not one of: messagingv2, noop" in err
    code, err, conf = run(tmp_path, "[DEFAULT]\nmax_concurrent_builds = 0\n")
    assert code == 2 and f"{conf}:2: [DEFAULT] max_concurrent_builds: 0 is out of range 1...1000" in err


def test_every_option_of_the_shipped_config_is_known(tmp_path):
    """packaging/compute-agent.conf with every option uncommented is a valid configuration."""
    from conftest import ROOT
    lines = []
    for line in (ROOT / "packaging" / "compute-agent.conf").read_text().splitlines():
        if line.startswith("#") and "=" in line and not line.startswith("# "):
            key, value = line[1:].split("=", 1)
            if key.strip() == "host":
                value = " shipped-test"
            if key.strip() in ("state_path",):
                value = f" {tmp_path}/state"
            if key.strip() == "plugin_dir":
                value = " /nonexistent-plugins"
            line = f"{key.strip()} ={value}"
        lines.append(line)
    code, err, conf = run(tmp_path, "\n".join(lines) + "\n")
    # Parsing succeeded: the agent got as far as loading plugins (exit 1, not a config error 2).
    assert code == 1, err
    assert "configuration error" not in err
