"""``clinicflow run``: a refused configuration is a short message and exit code 2; the
process is tuned (collector, allocator) before it serves."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from shared import runner


def test_production_without_secrets_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLINICFLOW_ENV", "production")
    monkeypatch.delenv("CLINICFLOW_CREDENTIALS", raising=False)
    assert runner.run(argparse.Namespace(service="flow", port=None)) == 2
    err = capsys.readouterr().err
    assert "refusing to start in production" in err and "CLINICFLOW_CREDENTIALS" in err
    assert "Traceback" not in err


def test_a_bad_setting_is_named_without_echoing_its_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLINICFLOW_CREDENTIALS", "not-json-but-a-secret-token")
    assert runner.run(argparse.Namespace(service="billing", port=None)) == 2
    err = capsys.readouterr().err
    assert "CLINICFLOW_CREDENTIALS" in err
    assert "not-json-but-a-secret-token" not in err


_MMAPPED_AFTER_A_BURST = """
import ctypes, sys
from shared import runner

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "tuned":
    assert runner.tune_malloc()
libc.free(libc.malloc(8 << 20))  # a burst: an 8 MiB buffer, freed
before = libc.mallinfo2().hblkhd
buffer = libc.malloc(1 << 20)  # then a 1 MiB one: its own mapping, or the heap?
print(libc.mallinfo2().hblkhd - before >= 1 << 20)
libc.free(buffer)
"""


@pytest.mark.parametrize(("mode", "mapped"), [("tuned", True), ("untuned", False)])
def test_after_a_burst_big_buffers_still_get_mappings_given_back_when_freed(
    mode: str, mapped: bool
) -> None:
    # glibc alone raises its threshold after the 8 MiB burst and takes the next 1 MiB
    # from the heap, where it stays resident; tuned, the threshold holds
    done = subprocess.run([sys.executable, "-c", _MMAPPED_AFTER_A_BURST, mode],
                          capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.strip() == str(mapped)
