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
