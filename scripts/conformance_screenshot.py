"""The README's picture of a conformance run: the suite against the demo, its HTML report in Chromium.

    python scripts/conformance_screenshot.py [--out docs/images/conformance-report.png] [--port 8000] [--keep DIR]

Does what `make demo` and `make conformance` do, in a temporary folder and on free ports so that it
never meets a demo already running: starts `homecare-gateway demo`, registers the suite's clients
and providers (`homecare-conformance init-gateway --register`), runs the gateway role with the
project's waivers, then has headless Chromium (Debian's `chromium`, no download) take a screenshot
of `conformance-gateway.html`. Every value in it is synthetic (the suite's own test data).
Prints the suite's summary; exits non-zero if the run or the screenshot fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer in {seconds:.0f} s")


def run_suite(folder: Path, environment: dict[str, str], target: str) -> Path:
    """Register the suite at the demo and run the gateway role; returns the reports' folder."""
    config_dir, reports = folder / "conformance", folder / "reports"
    subprocess.run(
        [BIN / "homecare-conformance", "init-gateway", "--dir", config_dir, "--provider-listen",
         f"127.0.0.1:{free_port()}", "--register", "--gateway-command", BIN / "homecare-gateway"],
        env=environment, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    run = subprocess.run(
        [BIN / "homecare-conformance", "run", "--target", target, "--role", "gateway", "--config",
         config_dir / "conformance.toml", "--report-dir", reports, "--waivers",
         ROOT / "conformance" / "waivers" / "homecare-gateway.toml"],
        env=environment, capture_output=True, text=True, check=False,
    )  # fmt: skip
    print(run.stdout[-3000:], run.stderr[-2000:], sep="\n")
    if run.returncode != 0:
        raise SystemExit(f"the conformance run failed (exit {run.returncode})")
    return reports


def screenshot(page: Path, out: Path, *, width: int, height: int) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs Debian's chromium: apt-get install -y chromium")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
             f"--screenshot={out}", page.resolve().as_uri()],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    if not out.exists() or out.stat().st_size == 0:
        raise SystemExit("chromium wrote no screenshot")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "conformance-report.png")
    parser.add_argument("--keep", type=Path, help="keep the demo's data and the reports in this folder")
    parser.add_argument("--port", type=int, default=0, help="the demo's port (default: any free one)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1500)
    arguments = parser.parse_args()
    folder = arguments.keep or Path(tempfile.mkdtemp(prefix="conformance-screenshot-"))
    folder.mkdir(parents=True, exist_ok=True)
    port = arguments.port or free_port()
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith("HOMECARE_") and k != "DATABASE_URL"
    }
    environment["HOMECARE_DATA_DIR"] = str(folder / "demo")
    demo = subprocess.Popen(
        [BIN / "homecare-gateway", "demo", "--port", str(port)],
        env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
    )  # fmt: skip
    try:
        wait_for(f"http://127.0.0.1:{port}/fhir/metadata")
        reports = run_suite(folder, environment, f"http://127.0.0.1:{port}")
        screenshot(
            reports / "conformance-gateway.html",
            arguments.out,
            width=arguments.width,
            height=arguments.height,
        )
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(timeout=20)
        except subprocess.TimeoutExpired:
            demo.kill()
        if arguments.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"screenshot: {arguments.out}")


if __name__ == "__main__":
    main()
