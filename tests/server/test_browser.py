#!/usr/bin/env python3
"""Runs the browser test (tests/browser/test_page.py) against a freshly started
`tokenwise serve`.

    python3 tests/server/test_browser.py [path/to/tokenwise] [screenshot.png]
"""

import os
import subprocess
import sys
import tempfile

from serve import running_server

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release/tokenwise")
    shot = sys.argv[2] if len(sys.argv) > 2 else os.path.join(tempfile.gettempdir(), "tokenwise-playground.png")
    with running_server(binary) as base:
        r = subprocess.run([sys.executable, os.path.join(ROOT, "tests/browser/test_page.py"),
                            "--url", base, "--screenshot", shot], timeout=300)
    sys.exit(r.returncode)


if __name__ == "__main__":
    main()
