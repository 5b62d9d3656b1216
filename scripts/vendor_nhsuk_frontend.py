"""Vendor the NHS.UK frontend's built CSS and JavaScript into gateway/web/static/nhsuk.

    python scripts/vendor_nhsuk_frontend.py [--version 10.6.1]

Fetches the `nhsuk-frontend` package with `npm pack` (MIT licence), and writes its minified CSS and
JavaScript and the images the CSS uses. The CSS is rewritten so the pages need nothing from another
host: the @font-face rules (which load Frutiger from assets.nhs.uk) are dropped, so the font stack
falls back to Arial / the system sans-serif, and image URLs point at the vendored copies.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

TARGET = Path(__file__).resolve().parents[1] / "gateway" / "web" / "static" / "nhsuk"
_FONT_FACE = re.compile(r"@font-face\{[^}]*\}")
_IMAGE_URL = re.compile(r"url\(/assets/images/([a-z0-9-]+\.svg)\)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", default="10.6.1")
    version = parser.parse_args().version
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(
            ["npm", "pack", "--silent", f"nhsuk-frontend@{version}"],
            cwd=scratch,
            check=True,
            capture_output=True,
        )
        with tarfile.open(next(Path(scratch).glob("nhsuk-frontend-*.tgz"))) as archive:
            archive.extractall(scratch, filter="data")
        dist = Path(scratch) / "package" / "dist" / "nhsuk"
        css = (dist / "nhsuk-frontend.min.css").read_text(encoding="utf-8")
        css = _FONT_FACE.sub("", css)
        images = sorted(set(_IMAGE_URL.findall(css)))
        css = _IMAGE_URL.sub(r"url(assets/images/\1)", css)
        if "https://" in css or "url(/" in css:
            raise SystemExit("the CSS still names another host or an absolute path: check the rewrite")
        if TARGET.exists():
            shutil.rmtree(TARGET)
        (TARGET / "assets" / "images").mkdir(parents=True)
        (TARGET / "nhsuk-frontend.min.css").write_text(css, encoding="utf-8")
        shutil.copy(dist / "nhsuk-frontend.min.js", TARGET / "nhsuk-frontend.min.js")
        for name in [*images, "favicon.svg"]:
            shutil.copy(dist / "assets" / "images" / name, TARGET / "assets" / "images" / name)
        (TARGET / "VERSION").write_text(
            f"nhsuk-frontend {version} (MIT licence), vendored by scripts/vendor_nhsuk_frontend.py:\n"
            "minified CSS without @font-face rules, minified JS, and the images the CSS uses.\n",
            encoding="utf-8",
        )
    print(f"vendored nhsuk-frontend {version} into {TARGET}")


if __name__ == "__main__":
    main()
