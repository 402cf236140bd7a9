"""The README's quick start: examples/quickstart.py serves /debug/pprof/ and shows its work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import requests
from support import go_pprof, top_table

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"


def test_quickstart_serves_profiles_of_its_workers(tmp_path):
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--port", "0", "--duration", "20"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = process.stdout.readline().split()[-1]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/debug/pprof/")
        index = requests.get(url, timeout=10)
        assert index.status_code == 200 and "goroutine?debug=2" in index.text
        profile = requests.get(url + "profile?seconds=2", timeout=30)
        assert profile.status_code == 200
        path = tmp_path / "cpu.pb.gz"
        path.write_bytes(profile.content)
        assert "__main__.render_report" in top_table(go_pprof(["-top"], path))
    finally:
        process.terminate()
        process.wait(timeout=30)
