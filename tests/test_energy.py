"""RAPL energy: the powercap reader on fixture folders, the meter's deltas and wrap-around, and every reason
for no measurement reported as a reason, never an exception."""

import os

import pytest

from edgeprune.energy import (
    RAPL_NOTE,
    RaplMeter,
    counter_delta,
    measured_lines,
    rapl_record,
    rapl_snapshot,
    read_rapl,
)

RANGE = 262_143_328_850  # a real package counter's max_energy_range_uj


def _domain(folder, name, energy, max_range=RANGE):
    folder.mkdir(parents=True)
    (folder / "name").write_text(f"{name}\n")
    (folder / "energy_uj").write_text(f"{energy}\n")
    (folder / "max_energy_range_uj").write_text(f"{max_range}\n")
    return folder


@pytest.fixture
def powercap(tmp_path):
    """Laid out like /sys/class/powercap: two packages, package 0 with core and dram subdomains, psys."""
    root = tmp_path / "powercap"
    (root / "intel-rapl").mkdir(parents=True)  # the control type folder, not a domain
    _domain(root / "intel-rapl:0", "package-0", 1_000_000)
    _domain(root / "intel-rapl:0" / "intel-rapl:0:0", "core", 400_000)
    _domain(root / "intel-rapl:0" / "intel-rapl:0:1", "dram", 50_000, max_range=65_712_999_613)
    _domain(root / "intel-rapl:1", "package-1", 2_000_000)
    _domain(root / "intel-rapl:2", "psys", 9_000_000)
    return root


def _set(root, folder, energy):
    matches = list(root.rglob(folder))
    matches[0].joinpath("energy_uj").write_text(f"{energy}\n")


def test_read_rapl_finds_domains_and_subdomains(powercap):
    domains = read_rapl(powercap)
    assert list(domains) == ["package-0", "package-0/core", "package-0/dram", "package-1", "psys"]
    core = domains["package-0/core"]
    assert (core.name, core.energy_uj, core.max_energy_range_uj, core.reason) == ("core", 400_000, RANGE, None)
    assert domains["package-0/dram"].max_energy_range_uj == 65_712_999_613
    assert rapl_snapshot(powercap)[1] is None


def test_subdomains_listed_at_the_top_too(tmp_path):
    root = tmp_path / "powercap"
    _domain(root / "intel-rapl:0", "package-0", 10)
    real = _domain(root / "intel-rapl:0" / "intel-rapl:0:0", "core", 5)
    (root / "intel-rapl:0:0").symlink_to(real)  # as the kernel lists it: once nested, once at the top
    assert list(read_rapl(root)) == ["package-0", "package-0/core"]


def test_meter_sums_packages_and_reports_each_domain(powercap):
    meter = RaplMeter(powercap)
    meter.start()
    _set(powercap, "intel-rapl:0", 1_600_000)
    _set(powercap, "intel-rapl:1", 2_400_000)
    _set(powercap, "intel-rapl:0:0", 700_000)
    _set(powercap, "intel-rapl:0:1", 80_000)
    reading = meter.stop()
    assert reading["available"] is True
    assert reading["package_uj"] == 1_000_000  # 600 000 + 400 000: both packages, not psys or subdomains
    assert reading["domains_uj"] == {
        "package-0": 600_000,
        "package-0/core": 300_000,
        "package-0/dram": 30_000,
        "package-1": 400_000,
        "psys": 0,
    }
    record = rapl_record({**reading, "seconds": 2.0}, inferences=100)
    assert record["source"] == "rapl" and record["available"] is True and record["note"] == RAPL_NOTE
    assert record["uj_per_inference"] == pytest.approx(10_000)
    assert record["domains"]["package-0/dram"] == pytest.approx(300)
    assert record["average_w"] == pytest.approx(0.5)


def test_counter_wrap_around(powercap):
    _set(powercap, "intel-rapl:0", RANGE - 100)
    meter = RaplMeter(powercap)
    meter.start()
    _set(powercap, "intel-rapl:0", 400)
    reading = meter.stop()
    assert reading["domains_uj"]["package-0"] == 500
    assert counter_delta(10, 30, 1000) == 20 and counter_delta(990, 5, 1000) == 15


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a mode-000 file anyway")
def test_unreadable_counter_is_a_reason(powercap):
    counter = powercap / "intel-rapl:0" / "energy_uj"
    counter.chmod(0)
    try:
        if os.access(counter, os.R_OK):
            pytest.skip("this file system lets us read a mode-000 file")
        domains, reason = rapl_snapshot(powercap)
        assert domains["package-0"].energy_uj is None
        assert "permission denied" in reason and "energy_uj" in reason and "\n" not in reason
        meter = RaplMeter(powercap)
        meter.start()
        reading = meter.stop()
    finally:
        counter.chmod(0o644)
    assert reading == {"available": False, "reason": reason}
    assert rapl_record(reading, 10) == {"source": "rapl", "available": False, "reason": reason}


def test_missing_root_and_no_package_are_reasons(tmp_path):
    missing = tmp_path / "no-powercap"
    assert read_rapl(missing) == {}
    domains, reason = rapl_snapshot(missing)
    assert domains == {} and "no-powercap" in reason
    meter = RaplMeter(missing)
    meter.start()
    assert meter.stop() == {"available": False, "reason": reason}
    assert RaplMeter(missing).stop()["available"] is False  # never started: a reason too
    only_psys = tmp_path / "psys-only"
    _domain(only_psys / "intel-rapl:0", "psys", 1)
    assert "no package-N domain" in rapl_snapshot(only_psys)[1]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no intel-rapl domains" in rapl_snapshot(empty)[1]


def test_a_corrupt_counter_is_a_reason(powercap):
    (powercap / "intel-rapl:1" / "energy_uj").write_text("lots\n")
    reason = rapl_snapshot(powercap)[1]
    assert "intel-rapl:1" in reason and "not a counter" in reason


def test_meter_root_from_the_environment(powercap, monkeypatch):
    monkeypatch.setenv("EDGEPRUNE_POWERCAP", str(powercap))
    assert RaplMeter().root == powercap


def test_measured_lines_say_which_and_why():
    none = {"source": "rapl", "available": False, "reason": "/x: no such folder"}
    assert measured_lines({"torch": none, "onnxruntime": none}) == ["measured energy (RAPL): none, /x: no such folder"]
    some = rapl_record({"available": True, "package_uj": 500.0, "domains_uj": {"package-0": 500.0}, "seconds": 1}, 5)
    lines = measured_lines({"torch": some, "onnxruntime": none})
    assert lines[0].startswith("measured energy per inference (torch, RAPL): 100.0 uJ") and RAPL_NOTE in lines[0]
    assert lines[1] == "measured energy (onnxruntime, RAPL): none, /x: no such folder"


def test_permission_denied_is_a_reason_even_for_root(powercap, monkeypatch):
    from pathlib import Path

    read_text = Path.read_text

    def denied(self, *args, **kwargs):
        if self.name == "energy_uj" and self.parent.name == "intel-rapl:1":
            raise PermissionError(13, "Permission denied")
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)
    domains, reason = rapl_snapshot(powercap)
    assert domains["package-1"].energy_uj is None and domains["package-0"].energy_uj == 1_000_000
    assert reason.startswith(str(powercap / "intel-rapl:1" / "energy_uj")) and "permission denied" in reason
