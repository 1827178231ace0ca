"""Headless Chromium (Debian's `chromium` package) screenshots, and what is drawn in them."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest


def chromium() -> str:
    """The browser; under CI its absence is a failure (tests/run installs it), elsewhere the
    test is skipped with the command that installs it."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    message = ("headless Chromium is missing: apt-get install -y --no-install-recommends "
               "chromium (tests/run does this when run as root)")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def screenshot(page: Path, png: Path, width: int = 1400, height: int = 2000) -> Path:
    """Renders `page` with the network cut off (every host name resolves nowhere), giving
    scripts virtual time to draw, and saves a PNG."""
    command = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        "--no-first-run", "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={png.parent / 'chromium-profile'}",
        f"--window-size={width},{height}", "--virtual-time-budget=20000",
        f"--screenshot={png}", page.resolve().as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert png.is_file(), f"no screenshot ({result.returncode}):\n{result.stderr[-2000:]}"
    return png


def colour_counts(png: Path) -> Counter:
    """Pixels per exact RGB colour."""
    from PIL import Image

    with Image.open(png) as image:
        rgb = image.convert("RGB")
        return Counter({colour: n for n, colour in rgb.getcolors(rgb.width * rgb.height)})


def hex_rgb(colour: str) -> tuple[int, int, int]:
    colour = colour.lstrip("#")
    return tuple(int(colour[i:i + 2], 16) for i in (0, 2, 4))


def missing_colours(counts: Counter, colours: dict[str, str], min_pixels: int) -> dict[str, int]:
    """The pixel count of each named chart colour that has fewer than `min_pixels`: empty
    when every chart put its colour on the page."""
    return {name: counts[hex_rgb(c)] for name, c in colours.items()
            if counts[hex_rgb(c)] < min_pixels}
