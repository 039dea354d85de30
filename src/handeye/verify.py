"""``handeye verify`` (`make verify`): re-execute the pipeline and check it bit for bit against dvc.lock.

Reads dvc.lock *before* ``dvc repro -f`` rewrites it, then compares the md5 of every output file with what
that lock recorded. A directory output is compared file by file through its ``.dir`` listing in the DVC
cache, so a changed wall-clock file inside a folder neither hides nor causes a difference in its neighbours.
Exempt, and listed: wall-clock timing files, the wall-time figures drawn from them, and run manifests (they
record the git commit). ``--no-repro --outputs DIR`` checks a copy of the outputs instead (docker_test.sh
checks the container's this way).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml

from handeye.errors import HandEyeError
from handeye.repro import file_md5

# Matched against the path relative to the project root, from the right (PurePosixPath.match).
EXEMPT_PATTERNS = ("timings.json", "paper_figs/*wall*", "run_manifest.json")


def is_exempt(relpath: str) -> bool:
    return any(PurePosixPath(relpath).match(p) for p in EXEMPT_PATTERNS)


@dataclass(frozen=True)
class Mismatch:
    path: str
    expected: str | None  # None: a file the lock does not know
    actual: str | None  # None: missing

    def __str__(self) -> str:
        if self.actual is None:
            return f"{self.path}: missing (dvc.lock has md5 {self.expected})"
        if self.expected is None:
            return f"{self.path}: not in dvc.lock (md5 {self.actual})"
        return f"{self.path}: md5 {self.actual}, dvc.lock has {self.expected}"


@dataclass
class Report:
    checked: list[str] = field(default_factory=list)
    exempt: list[str] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def locked_outputs(lock_path: Path) -> list[dict]:
    """Every ``outs`` entry of every stage in a dvc.lock (``path``, ``md5``, ...)."""
    if not lock_path.is_file():
        raise HandEyeError(f"{lock_path} not found: run `dvc repro` and commit dvc.lock before verifying")
    lock = yaml.safe_load(lock_path.read_text()) or {}
    outs = [o for stage in (lock.get("stages") or {}).values() for o in stage.get("outs", [])]
    if not outs:
        raise HandEyeError(f"{lock_path} records no stage outputs: nothing to verify")
    return outs


def dvc_dir_listing(project: Path) -> Callable[[str], dict[str, str] | None]:
    """A loader of ``.dir`` listings ({relpath: md5}) from the project's DVC cache; None when absent."""
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        odb = repo.cache.repo

    def load(dir_md5: str) -> dict[str, str] | None:
        path = Path(odb.oid_to_path(dir_md5))
        if not path.is_file():
            return None
        return {e["relpath"]: e["md5"] for e in json.loads(path.read_text())}

    return load


def dir_md5(listing: dict[str, str]) -> str:
    """DVC's hash of a folder from its {relpath: md5} listing (computed by dvc-data itself)."""
    from dvc_data.hashfile.tree import Tree

    tree = Tree.from_list([{"relpath": r, "md5": m} for r, m in listing.items()], hash_name="md5")
    tree.digest()
    return tree.hash_info.value


def _files_under(root: Path, rel: str) -> Iterable[str]:
    base = root / rel
    if base.is_file():
        yield rel
        return
    for dirpath, _, names in os.walk(base):
        for name in names:
            yield (Path(dirpath) / name).relative_to(root).as_posix()


def _workspace_listing(project: Path, path: str) -> dict[str, str]:
    return {f[len(path) + 1:]: file_md5(project / f) for f in _files_under(project, path)}


def expected_files(outs: Iterable[dict], project: Path,
                   listing: Callable[[str], dict[str, str] | None]) -> dict[str, str]:
    """{file path relative to the project: md5} for every file the lock records, directories expanded.

    A folder declared ``cache: false`` has no ``.dir`` listing in the cache; its listing is then taken from
    the workspace, provided the workspace folder hashes to what the lock records.
    """
    files: dict[str, str] = {}
    for out in outs:
        path, md5 = out["path"], out.get("md5")
        if md5 is None:
            raise HandEyeError(f"dvc.lock has no md5 for output {path}; run `dvc repro` first")
        if not md5.endswith(".dir"):
            files[path] = md5
            continue
        entries = listing(md5)
        if entries is None:
            entries = _workspace_listing(project, path)
            if dir_md5(entries) != md5:
                raise HandEyeError(f"the file listing {md5} of {path}/ is not in the DVC cache and the "
                                   f"workspace folder differs from dvc.lock: run `dvc fetch` or `dvc repro`")
        files.update({f"{path}/{rel}": m for rel, m in entries.items()})
    return files


def check_files(expected: dict[str, str], outs: Iterable[dict], root: Path) -> Report:
    """Compare the files under ``root`` with ``expected``; files found in an output folder but not in the
    lock count as mismatches too."""
    report = Report()
    found = {p for out in outs for p in _files_under(root, out["path"])}
    for rel in sorted(set(expected) | found):
        if is_exempt(rel):
            report.exempt.append(rel)
            continue
        want = expected.get(rel)
        have = file_md5(root / rel) if rel in found else None
        report.checked.append(rel)
        if want != have:
            report.mismatches.append(Mismatch(rel, want, have))
    return report


def remove_persisted_outputs(project: Path) -> list[str]:
    """Delete the outputs marked ``persist`` (pretraining checkpoints): ``dvc repro -f`` keeps them, and a
    stage would then resume a finished run instead of re-executing it."""
    from dvc.repo import Repo

    removed = []
    with Repo(str(project)) as repo:
        for stage in repo.index.stages:
            for out in stage.outs:
                if out.persist and Path(out.fs_path).exists():
                    Path(out.fs_path).unlink()
                    removed.append(str(Path(out.fs_path).relative_to(project.resolve())))
    return removed


def repro_all(project: Path) -> None:
    """``dvc repro -f``: re-execute every stage; a plain repro could restore outputs from the run-cache."""
    # Stage commands call `handeye`: the one installed beside this interpreter, even if .venv is not active.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    removed = remove_persisted_outputs(project)
    if removed:
        print(f"verify: removed {len(removed)} persisted outputs so that their stages re-execute: "
              f"{', '.join(removed)}")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "dvc", "repro", "-f"], cwd=project, env=env, check=False)
    if result.returncode != 0:
        raise HandEyeError(f"`dvc repro -f` failed (exit {result.returncode}) in {project}; see above")
    print(f"verify: `dvc repro -f` took {time.perf_counter() - start:.1f} s")


def run_verify(project: Path, lock: Path, outputs: Path | None = None, repro: bool = True) -> Report:
    outs = locked_outputs(lock)
    # Loaded before the repro, which rewrites dvc.lock; this also fails fast on a missing .dir listing.
    expected = expected_files(outs, project, dvc_dir_listing(project))
    if repro:
        repro_all(project)
    return check_files(expected, outs, outputs or lock.parent)


def print_report(report: Report) -> None:
    patterns = ", ".join(EXEMPT_PATTERNS)
    print(f"verify: exempt from the bit-for-bit check ({patterns}): {len(report.exempt)} files")
    for rel in report.exempt:
        print(f"  exempt  {rel}")
    if report.ok:
        print(f"verify: OK, {len(report.checked)} files identical to dvc.lock")
        return
    print(f"verify: FAILED, {len(report.mismatches)} of {len(report.checked)} files differ from dvc.lock:")
    for m in report.mismatches:
        print(f"  differs {m}")
    print("verify: bits repeat only on a CPU like the one that wrote dvc.lock (README, Reproducibility); "
          "each run_manifest.json names its CPU")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lock", type=Path, default=Path("dvc.lock"), help="the lock to check against")
    p.add_argument("--no-repro", dest="repro", action="store_false",
                   help="check the outputs as they are instead of re-executing with `dvc repro -f`")
    p.add_argument("--outputs", type=Path, default=None,
                   help="folder holding the outputs (default: the lock's folder); e.g. a container's copy")


def main(args: argparse.Namespace) -> int:
    lock = args.lock.resolve()
    if args.outputs is not None and args.repro:
        raise HandEyeError("--outputs checks a copy of the outputs and needs --no-repro")
    if not (lock.parent / ".dvc").is_dir():
        raise HandEyeError(f"{lock.parent} is not the root of a DVC project: --lock must be the dvc.lock of the "
                           f"project to verify (beside its .dvc/ folder)")
    report = run_verify(lock.parent, lock, args.outputs, repro=args.repro)
    print_report(report)
    return 0 if report.ok else 1
