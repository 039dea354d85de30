"""``handeye verify`` (`make verify`): re-execute the pipeline and check it at two levels.

Bits: every output file against the md5 dvc.lock records. Claims (handeye.claims): every number of the
table and the reward curves against the band that seed variation spans (reference/claims-demo.json), and
every ordering that held on all seeds. Bits repeat only on a CPU like the one that wrote dvc.lock; claims
should hold anywhere. Exit status 1 when a claim fails, or when bits differ on a CPU like dvc.lock's.

Bits: reads dvc.lock *before* ``dvc repro -f`` rewrites it, then compares the md5 of every output file with what
that lock recorded. A directory output is compared file by file through its ``.dir`` listing in the DVC
cache, so a changed wall-clock file inside a folder neither hides nor causes a difference in its neighbours.
A checkout without that cache (a container) takes the listing from paper_figs/folders.json instead (stage
``folders``, committed with dvc.lock).
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

from handeye import claims
from handeye.errors import HandEyeError
from handeye.repro import atomic_write_json, cpu_description, file_md5, stage_env

# Matched against the path relative to the project root, from the right (PurePosixPath.match).
EXEMPT_PATTERNS = ("timings.json", "paper_figs/*wall*", "run_manifest.json", "paper_figs/machine.json")
FOLDERS_FILE = "paper_figs/folders.json"


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


def folder_listings(project: Path) -> dict[str, dict[str, str]]:
    """{folder: {relpath: md5}} of every folder that a stage of dvc.yaml writes, exempt files left out: the
    ``.dir`` listings that a checkout without the DVC cache needs to compare those folders file by file. Without
    the exempt files it is the same on every run of a like CPU, so its own md5 is checked like any output's."""
    from dvc.repo import Repo

    root = project.resolve()
    with Repo(str(root)) as repo:
        paths = sorted({Path(out.fs_path).relative_to(root).as_posix()
                        for stage in repo.index.stages if getattr(stage, "cmd", None) for out in stage.outs})
    return {path: {rel: md5 for rel, md5 in _workspace_listing(root, path).items() if not is_exempt(f"{path}/{rel}")}
            for path in paths if (root / path).is_dir()}


def read_folders(path: Path) -> dict[str, dict[str, str]]:
    """A folders file (stage ``folders``); empty when absent (a lock from before that stage)."""
    return json.loads(path.read_text()) if path.is_file() else {}


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


def expected_files(outs: Iterable[dict], project: Path, listing: Callable[[str], dict[str, str] | None],
                   folders: dict[str, dict[str, str]] | None = None) -> dict[str, str]:
    """{file path relative to the project: md5} for every file the lock records, directories expanded.

    A folder whose ``.dir`` listing is not in the cache (``cache: false``, or a container whose fresh cache
    holds only the listings of its own outputs) takes its listing from the workspace, provided the workspace
    folder hashes to what the lock records; else from ``folders`` (the lock's folders file, exempt files left
    out); else it is checked as a whole, under the key ``<path>/``.
    """
    folders = folders or {}
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
                if path in folders:
                    files.update({f"{path}/{rel}": m for rel, m in folders[path].items()})
                else:
                    files[f"{path}/"] = md5
                continue
        files.update({f"{path}/{rel}": m for rel, m in entries.items()})
    return files


def check_files(expected: dict[str, str], outs: Iterable[dict], root: Path) -> Report:
    """Compare the files under ``root`` with ``expected``; files found in an output folder but not in the
    lock count as mismatches too."""
    report = Report()
    whole = [rel for rel in expected if rel.endswith("/")]
    found = {p for out in outs for p in _files_under(root, out["path"])
             if not any(p.startswith(folder) for folder in whole)}
    for rel in whole:
        have = dir_md5(_workspace_listing(root, rel[:-1])) if (root / rel).is_dir() else None
        report.checked.append(rel)
        if have != expected[rel]:
            report.mismatches.append(Mismatch(rel, expected[rel], have))
    for rel in sorted((set(expected) - set(whole)) | found):
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
    env = stage_env()
    removed = remove_persisted_outputs(project)
    if removed:
        print(f"verify: removed {len(removed)} persisted outputs so that their stages re-execute: "
              f"{', '.join(removed)}")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "dvc", "repro", "-f"], cwd=project, env=env, check=False)
    if result.returncode != 0:
        raise HandEyeError(f"`dvc repro -f` failed (exit {result.returncode}) in {project}; see above")
    print(f"verify: `dvc repro -f` took {time.perf_counter() - start:.1f} s")


def run_verify(project: Path, lock: Path, outputs: Path | None = None, repro: bool = True,
               folders: Path | None = None) -> Report:
    """``folders``: the lock's folders file (default: the project's, read before the repro rewrites it)."""
    outs = locked_outputs(lock)
    # Loaded before the repro, which rewrites dvc.lock and the folders file.
    expected = expected_files(outs, project, dvc_dir_listing(project),
                              read_folders(folders or project / FOLDERS_FILE))
    if repro:
        repro_all(project)
    return check_files(expected, outs, outputs or lock.parent)


def lock_cpu(outs: Iterable[dict], project: Path) -> dict | None:
    """The CPU that wrote dvc.lock: its paper_figs/machine.json (stage machine, committed with the lock), else
    a run_manifest.json it records; each taken from the DVC cache or the workspace where its md5 matches the
    lock's, so call it before a repro rewrites them."""
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        odb = repo.cache.repo
    outs = sorted((o for o in outs if "md5" in o and PurePosixPath(o["path"]).name in
                   ("machine.json", "run_manifest.json")), key=lambda o: not o["path"].endswith("machine.json"))
    for out in outs:
        for path in (Path(odb.oid_to_path(out["md5"])), project / out["path"]):
            if path.is_file() and file_md5(path) == out["md5"]:
                record = json.loads(path.read_text())
                return record if out["path"].endswith("machine.json") else record.get("cpu")
    return None


def describe_cpu(cpu: dict | None) -> str:
    if not cpu:
        return "an unrecorded CPU"
    return f"{cpu.get('model') or 'unknown model'} ({', '.join(cpu.get('flags') or []) or 'no AVX2'})"


def check_claims(params_path: Path, outputs: Path, reference: Path) -> list[claims.Verdict] | None:
    """Verdicts of the reference's claims on the outputs; None when the reference was made for other params."""
    from handeye.config import read_yaml

    ref = claims.read_reference(reference)
    params = read_yaml(params_path)
    if not claims.applies(ref, params):
        print(f"verify: {reference} was made for other parameters than {params_path}: claims not checked")
        return None
    return claims.check(claims.measure(params, outputs), ref)


def summary(report: Report, verdicts: list[claims.Verdict] | None, here: dict | None,
            locked: dict | None) -> tuple[str, bool]:
    """The one summary line, and whether the run passes: no failed claim, and no bit difference on a CPU
    like the one that wrote dvc.lock."""
    n = len(report.checked)
    like = locked is None or here == locked  # a lock that names no CPU cannot excuse a difference
    if report.ok:
        bits = f"{n}/{n} files identical"
    elif locked is None:
        bits = f"bits differ: {len(report.mismatches)} of {n} files, and dvc.lock's run manifests name no CPU"
    elif like:
        bits = f"bits differ: {len(report.mismatches)} of {n} files on a CPU like dvc.lock's ({describe_cpu(here)})"
    else:
        bits = (f"bits differ ({len(report.mismatches)} of {n} files): other CPU ({describe_cpu(here)}) than "
                f"dvc.lock ({describe_cpu(locked)})")
    bits_ok = report.ok or not like
    if verdicts is None:
        return f"{bits}; claims: not checked", bits_ok
    held = sum(v.ok for v in verdicts)
    return f"{bits}; claims: {held}/{len(verdicts)} within their bands", bits_ok and held == len(verdicts)


def print_report(report: Report) -> None:
    patterns = ", ".join(EXEMPT_PATTERNS)
    print(f"verify: exempt from the bit-for-bit check ({patterns}): {len(report.exempt)} files")
    for rel in report.exempt:
        print(f"  exempt  {rel}")
    if report.ok:
        print(f"verify: OK, {len(report.checked)} files identical to dvc.lock")
        return
    print(f"verify: {len(report.mismatches)} of {len(report.checked)} files differ from dvc.lock:")
    for m in report.mismatches:
        print(f"  differs {m}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lock", type=Path, default=Path("dvc.lock"), help="the lock to check against")
    p.add_argument("--no-repro", dest="repro", action="store_false",
                   help="check the outputs as they are instead of re-executing with `dvc repro -f`")
    p.add_argument("--outputs", type=Path, default=None,
                   help="folder holding the outputs (default: the lock's folder); e.g. a container's copy")
    p.add_argument("--claims", type=Path, default=Path("reference/claims-demo.json"),
                   help="the seed bands of the claims (handeye claims bands), relative to the project")
    p.add_argument("--lock-cpu", type=Path, default=None,
                   help="a JSON description of the CPU that wrote --lock (default: its paper_figs/machine.json)")
    p.add_argument("--lock-folders", type=Path, default=None,
                   help=f"the file listings of --lock's folders (default: its {FOLDERS_FILE})")
    p.add_argument("--write-folders", type=Path, default=None, metavar="FILE",
                   help="write the file listings of the stages' output folders to FILE and exit (stage folders)")
    p.add_argument("--no-claims", dest="claims", action="store_const", const=None,
                   help="check the bits only (a project without a claims reference)")


def main(args: argparse.Namespace) -> int:
    if args.write_folders is not None:
        atomic_write_json(args.write_folders, folder_listings(Path.cwd()))
        return 0
    lock = args.lock.resolve()
    if args.outputs is not None and args.repro:
        raise HandEyeError("--outputs checks a copy of the outputs and needs --no-repro")
    if not (lock.parent / ".dvc").is_dir():
        raise HandEyeError(f"{lock.parent} is not the root of a DVC project: --lock must be the dvc.lock of the "
                           f"project to verify (beside its .dvc/ folder)")
    project = lock.parent
    reference = None
    if args.claims is not None:
        reference = args.claims if args.claims.is_absolute() else project / args.claims
        claims.read_reference(reference)  # a missing or broken reference stops here, before the repro
    for option, path in (("--lock-cpu", args.lock_cpu), ("--lock-folders", args.lock_folders)):
        if path is not None and not path.is_file():
            raise HandEyeError(f"{option} {path} not found")
    locked = json.loads(args.lock_cpu.read_text()) if args.lock_cpu else lock_cpu(locked_outputs(lock), project)
    report = run_verify(project, lock, args.outputs, repro=args.repro, folders=args.lock_folders)
    print_report(report)
    verdicts = None
    if reference is not None:
        verdicts = check_claims(project / "params.yaml", args.outputs or project, reference)
        for v in verdicts or []:
            print(v)
    line, ok = summary(report, verdicts, cpu_description(), locked)
    print(f"verify: {line}")
    return 0 if ok else 1
