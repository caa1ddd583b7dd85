"""`riskstream demo` as a user runs it: alerts within a minute, nothing left behind on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie has exited; its parent just did not reap
        return stat.read().split()[2] != "Z"


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().split()[3]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


def test_demo_shows_alerts_within_a_minute_and_ctrl_c_stops_everything(tmp_path) -> None:
    environ = {**os.environ, "RISKSTREAM_MODELS_DIR": str(tmp_path / "no-models-here")}
    demo = subprocess.Popen(
        [sys.executable, "-m", "riskstream", "demo", "--rate", "400"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=environ,
        cwd=tmp_path,
    )
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and demo.poll() is None:
            children.update(_children_of(demo.pid))
            time.sleep(1)
        assert demo.poll() is None, "the demo stopped on its own"
        assert len(children) >= 2, "the demo runs a broker and a worker"
        demo.send_signal(signal.SIGINT)
        output = demo.communicate(timeout=40)[0].decode(errors="replace")
    finally:
        if demo.poll() is None:
            demo.kill()
        survivors = [pid for pid in children if _alive(pid)]
        for pid in survivors:  # asserted below, and never left running for the rest of the suite
            os.kill(pid, signal.SIGKILL)
    assert demo.returncode == 0, output[-3000:]
    alerts = [int(n.replace(",", "")) for n in re.findall(r"([\d,]+) alerts", output)]
    assert alerts and max(alerts) > 0, output[-3000:]
    # The shipped tabular model is served beside fraud: the demo's credit requests are scored.
    credit = [int(n.replace(",", "")) for n in re.findall(r"credit ([\d,]+)", output)]
    assert credit and max(credit) > 0, output[-3000:]
    assert "demo stopped" in output
    assert not survivors, f"processes left behind: {survivors}"
