"""The end-to-end demo on the tiny model, the report it writes, and a browser check of the HTML."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgehydra.commands import cli


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    r = CliRunner().invoke(cli, ["demo", "--fast", "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out, r.output


def test_demo_fast_end_to_end(demo_run):
    out, output = demo_run
    for stage in ("data", "train", "ptq", "qat", "sensitivity", "mixed", "export", "bench", "calibrate", "check",
                  "report"):
        assert re.search(rf"{stage}: (done|skipped|reused)", output), stage
    assert (out / "fp32.pt").is_file() and (out / "qat" / "program.pt2").is_file()
    assert (out / "export" / "manifest.json").is_file() and (out / "check.json").is_file()
    # the terminal ends with the answer: per artifact accuracy vs FP32 and latency, per device the verdict and the
    # budget that decided it, then where the report is (stage times in one line before it)
    lines = output.strip().splitlines()
    assert lines[-1].startswith("report: ") and lines[-2].startswith("stages ("), lines[-3:]
    answer = output[output.index("artifacts: accuracy vs FP32"):]
    assert "devices: verdict and the budget that decided it" in answer
    assert all(d in answer for d in ("host_cpu", "raspberrypi5")) and ("PASS" in answer or "FAIL" in answer)
    # check judged only what the demo shipped, at each budget's size, and every latency row names its source
    import json

    for dev in json.loads((out / "check.json").read_text()):
        if dev["verdict"] == "NOT JUDGED":
            assert not dev.get("rows"), dev
            continue
        hw = "x".join(map(str, dev["size"]))
        assert f"_{hw}." in dev["artifact"], (dev["device"], dev["artifact"])
        for r in dev["rows"]:
            if r["budget"].startswith("latency"):
                assert re.match(rf"(measured on \S+ by .+ at {hw}|estimated at {hw} )", r["note"]), r
            if r["budget"] in ("mIoU", "depth RMSE", "depth abs rel"):
                assert r["note"].endswith(f"at {hw}") and "artifact run in its runtime" in r["note"], r


def test_report_has_every_section_and_image(demo_run):
    from edgehydra.pipeline.report import SECTIONS

    out, _ = demo_run
    md = (out / "report" / "report.md").read_text()
    html = (out / "report" / "report.html").read_text()
    for s in SECTIONS:
        assert f"## {s}" in md and f"<h2>{s}</h2>" in html, s
    # the answer opens the report, stage times and settings close it
    heads = re.findall(r"^## (.+)$", md, flags=re.M)
    assert heads[0] == "The answer" and heads[-1] == SECTIONS[-1], heads
    # issue 17/18 sections: the mixed-precision front for one device, the per-op profile, the sustained run
    for s in ("Mixed precision on host_cpu", "Where the time goes", "Sustained load", "Reference I/O where it runs"):
        assert f"## {s}" in md, s
    for img in ("mixed_host_cpu.png", "opprofile.png", "sustained.png"):
        assert (out / "report" / img).is_file(), img
    imgs = re.findall(r'<img src="([^"]+)"', html)
    assert len(imgs) >= 4
    assert any(i.startswith("panel_nyud_") for i in imgs) or not Path("../shared/samples").exists()
    for i in imgs:
        p = out / "report" / i
        assert p.is_file() and p.stat().st_size > 1000, i
        assert "/" not in i  # relative, beside the report: opens offline
    assert "http://" not in html and "https://" not in html


def test_demo_rerun_reuses_stages(demo_run):
    out, _ = demo_run
    r = CliRunner().invoke(cli, ["demo", "--fast", "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0
    for stage in ("train", "ptq", "qat", "export"):
        assert f"{stage}: reused" in r.output


def test_report_renders_in_chromium(demo_run, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("Chromium not installed (apt-get install chromium) - browser check not run")
    out, _ = demo_run
    shot = tmp_path / "report.png"
    html = (out / "report" / "report.html").resolve()
    r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,3000",
                        f"--screenshot={shot}", f"file://{html}"], capture_output=True, text=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 20_000, r.stderr[-500:]
    # images load: render a probe page that reports broken <img> elements via the DOM
    probe = html.with_name("probe.html")
    probe.write_text(html.read_text().replace("</body>", "<script>window.onload=()=>{const b=[...document.images]"
                                              ".filter(i=>!i.complete||i.naturalWidth===0).length;"
                                              "document.title='broken='+b;}</script></body>"))
    r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        f"--user-data-dir={tmp_path / 'profile2'}", "--virtual-time-budget=5000", "--dump-dom",
                        f"file://{probe}"], capture_output=True, text=True, timeout=120)
    assert "<title>broken=0</title>" in r.stdout, r.stdout[:300]
