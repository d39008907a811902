"""The C and Java DLN-1 ports reproduce the golden vectors bit for bit.

Both ports are built from ports/dln1/ into a temporary folder, their vector programs print the candidate
JSON, and `verify_vectors` (the check behind `dreamlite parity vectors`) must find no mismatch. A missing
compiler fails the test: these ports are what the phone teams copy, so they are never silently unchecked.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from model_runtime.noise_dln1 import verify_vectors

PORTS = Path(__file__).resolve().parents[2] / "ports" / "dln1"
C_DIR = PORTS / "c"
JAVA_DIR = PORTS / "java"
TIMEOUT_S = 180


def _tool(name: str, install_hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not on PATH; the DLN-1 port tests need it ({install_hint})", pytrace=False)
    return path


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _check(stdout: str) -> dict[str, Any]:
    candidate = json.loads(stdout)
    problems = verify_vectors(candidate)
    assert problems == [], "\n".join(problems)
    return dict(candidate)


def _build_c(tmp_path: Path, flags: list[str]) -> Path:
    cc = _tool("cc", "apt-get install gcc")
    exe = tmp_path / "dln1_vectors"
    _run(
        [
            cc,
            "-std=c99",
            *flags,
            "-Wall",
            "-Wextra",
            "-pedantic",
            "-Werror",
            str(C_DIR / "dln1.c"),
            str(C_DIR / "dln1_vectors.c"),
            "-o",
            str(exe),
            "-lm",
        ]
    )
    return exe


@pytest.mark.parametrize("opt", ["-O2", "-O0"])
def test_c_port_matches_golden_vectors(tmp_path: Path, opt: str) -> None:
    exe = _build_c(tmp_path, [opt, "-ffp-contract=off"])
    candidate = _check(_run([str(exe)]))
    assert candidate["generated_by"].startswith("ports/dln1/c")


def test_java_port_matches_golden_vectors(tmp_path: Path) -> None:
    javac = _tool("javac", "apt-get install openjdk-17-jdk-headless")
    java = _tool("java", "apt-get install openjdk-17-jre-headless")
    sources = sorted(str(p) for p in (JAVA_DIR / "com" / "dreamlite" / "noise").glob("*.java"))
    assert len(sources) == 2, sources
    _run([javac, "-Xlint:all", "-Werror", "-d", str(tmp_path), *sources])
    candidate = _check(_run([java, "-cp", str(tmp_path), "com.dreamlite.noise.Dln1Vectors"]))
    assert candidate["generated_by"].startswith("ports/dln1/java")


def test_float64_vectors_catch_an_fma_build(tmp_path: Path) -> None:
    """Breaking the -ffp-contract=off rule is visible in the float64 fields of the vector file."""
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    if "fma" not in flags:
        pytest.skip("this CPU cannot run an FMA build (no `fma` flag in /proc/cpuinfo)")
    exe = _build_c(tmp_path, ["-O2", "-ffp-contract=fast", "-mfma"])
    problems = verify_vectors(json.loads(_run([str(exe)])))
    assert problems, "an FMA-contracted build went unnoticed"
    assert any(".float64_hex[" in p for p in problems)
