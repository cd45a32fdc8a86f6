"""Drift check: does the project still work with the newest versions pyproject.toml allows, and if not, which package
broke it? `make test-drift` builds that environment (no lock) and runs this file in it:

    python tests/drift.py --lock requirements/cpu.txt -- tests/test_install.py tests/test_verify.py ...

1. Lists every installed package whose version differs from the lock (and the ones the lock does not know).
2. Runs the smoke (the pytest arguments after --). Passing: exit 0.
3. Failing: for each drifted package alone, installs its locked version (pip --no-deps), reruns the tests that failed,
   and puts the newest version back. A package whose locked version makes them pass is named as the cause, with the
   failing tests; exit 1. Users keep working meanwhile: `make setup` installs the lock.
"""

import argparse
import importlib.metadata
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version


def locked_versions(text: str) -> dict[str, str]:
    """name -> pinned version of a uv/pip-compile lock, for the lines whose markers hold in this interpreter."""
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        (spec,) = req.specifier  # a lock pins each package with one ==
        pins[canonicalize_name(req.name)] = spec.version
    return pins


def installed_versions() -> dict[str, str]:
    return {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}


def drift(locked: dict[str, str], installed: dict[str, str], own: str = "mathrl") -> list[tuple[str, str | None, str]]:
    """(name, locked version or None when the lock lacks it, installed version) for each package that differs.
    A local label does not count (torch 2.13.0+cpu is the lock's torch 2.13.0)."""
    rows = []
    for name, version in sorted(installed.items()):
        if name in (own, "pip"):
            continue
        pinned = locked.get(name)
        if pinned is None or Version(pinned).public != Version(version).public:
            rows.append((name, pinned, version))
    return rows


def failing_tests(junit: Path) -> dict[str, str]:
    """Node id (file::name) -> the first line of its error, for the failed and errored tests of a JUnit XML report."""
    failed = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if problem is not None:
            path = case.get("classname", "").replace(".", "/")
            failed[f"{path}.py::{case.get('name')}"] = (problem.get("message") or "").split("\n")[0][:200]
    return failed


def pytest(args: list[str], junit: Path) -> bool:
    """True when the tests pass, False when some fail; a usage error or an empty selection stops the check."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *args]
    code = subprocess.run(cmd).returncode
    if code not in (0, 1):
        sys.exit(f"drift check: pytest {' '.join(args)} exited {code} (no test run or a usage error): fix the smoke")
    return code == 0


def pip_install(name: str, version: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", f"{name}=={version}"], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lock", required=True, help="the lock to compare with (requirements/cpu.txt)")
    ap.add_argument("pytest_args", nargs="+", help="the smoke: pytest arguments (after --)")
    args = ap.parse_args()
    rows = drift(locked_versions(Path(args.lock).read_text()), installed_versions())
    print(f"drift: {len(rows)} installed packages differ from {args.lock}")
    for name, pinned, version in rows:
        print(f"  {name:28s} {pinned or '(not in the lock)':>20s} -> {version}")
    tmp = Path(tempfile.mkdtemp(prefix="drift-"))
    if pytest(args.pytest_args, tmp / "smoke.xml"):
        print(f"drift check passed: the newest allowed versions pass the smoke ({len(rows)} packages differ from the lock)")
        return 0
    why = failing_tests(tmp / "smoke.xml")
    failed = list(why) or args.pytest_args
    print(f"drift check FAILED: {len(failed)} smoke tests fail with the newest versions; trying each locked version")
    causes = []
    for name, pinned, version in rows:
        if pinned is None:
            continue
        pip_install(name, pinned)
        try:
            if pytest(failed, tmp / f"{name}.xml"):
                causes.append((name, pinned, version))
        finally:
            pip_install(name, version)
    for name, pinned, version in causes:
        print(f"drift check FAILED: {name} {version} breaks the smoke ({name} {pinned}, the lock's, passes it)")
    if not causes:
        print("drift check FAILED: no single package's locked version makes the smoke pass; the packages above differ")
    print("failing tests:\n  " + "\n  ".join(f"{t}: {why.get(t, '')}" for t in failed))
    print("users are not affected while they install the lock (make setup); fix the code, or exclude the release in "
          "pyproject.toml, then `make lock`")
    return 1


if __name__ == "__main__":
    sys.exit(main())
