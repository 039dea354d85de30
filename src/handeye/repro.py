"""Reproducibility core: seeding, atomic writes and the run manifest every stage writes beside its outputs.

Bits on the CPU depend on the thread count and the instruction set (FIELD_NOTES), so `seed_everything` also
pins the thread count; the manifest records both so that a mismatch can be explained later.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from handeye.errors import HandEyeError

# Packages whose versions decide the bits of an output; recorded in every manifest.
TRACKED_PACKAGES = (
    "handeye", "torch", "torchvision", "timm", "transformers", "numpy", "av", "decord", "mujoco",
    "gymnasium-robotics", "rsl-rl-lib", "dvc", "dvclive", "matplotlib", "seaborn", "scikit-image", "pillow",
)
DEFAULT_THREADS = 2


def seed_everything(seed: int, threads: int = DEFAULT_THREADS, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; fix the thread count; ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 -- the global RNG that libraries draw from unseeded
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    if deterministic:
        use_deterministic_kernels()
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False


def use_deterministic_kernels() -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` without importing the compiler.

    The public function imports ``torch._inductor.config`` (and with it Dynamo: 1.4-1.9 s per process, paid by
    every pipeline stage) only to set a flag that matters to ``torch.compile``, which no stage uses.
    So the kernel flag is set directly, and the compiler's flag too when something already imported it.
    warn_only: a few CPU ops have no deterministic twin and we would rather run than refuse.
    """
    import torch

    torch._C._set_deterministic_algorithms(True, warn_only=True)
    inductor_config = sys.modules.get("torch._inductor.config")
    if inductor_config is not None:
        inductor_config.deterministic = True


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: derive python/numpy seeds from torch's per-worker seed."""
    import torch

    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 -- the global RNG that libraries draw from unseeded


def torch_generator(seed: int):
    """A seeded generator for DataLoader shuffling, independent of the global RNG."""
    import torch

    g = torch.Generator()
    g.manual_seed(seed)
    return g


def stage_env(**extra: str) -> dict[str, str]:
    """The environment for `dvc repro`: stage commands call `handeye`, so the one installed beside this
    interpreter comes first on PATH, even where .venv is not activated."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, **extra}


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A crash, an exception or SIGKILL leaves either the old file or nothing: never a half-written file under
    the final name. The temporary name starts with '.' and ends in '.tmp' so globbing skips it.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HandEyeError(f"cannot create output folder {path.parent}: {e.strerror}") from None
    if not os.access(path.parent, os.W_OK):
        raise HandEyeError(f"output folder {path.parent} is not writable")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside ``out_dir``; swap it into place only if the block succeeds.

    The old folder is renamed away before the new one is renamed in, so ``out_dir`` is at every moment either
    the old whole folder, absent, or the new whole folder; a failed or killed run leaves only dot-named
    temp folders, never a partial ``out_dir``.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    except OSError as e:
        raise HandEyeError(f"cannot create output folder {out_dir}: {e.strerror}") from None
    try:
        yield tmp
        for p in tmp.rglob("*"):  # mkstemp's 0600 would make outputs private to their writer
            p.chmod(0o755 if p.is_dir() else 0o644)
        tmp.chmod(0o755)
        old = None
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            os.replace(out_dir, old / out_dir.name)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Stable JSON: sorted keys and a trailing newline, so equal content gives equal bytes."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save of ``canonical(obj)`` through a temp file. The zip's top folder is named after the file
    written (FIELD_NOTES), so we save under the final name inside a private temp folder to keep bytes
    independent of the temp name."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as d:
        staged = Path(d) / path.name
        torch.save(canonical(obj), staged)
        with open(staged, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(staged, path)


def canonical(obj: Any) -> Any:
    """Rebuild containers and intern strings. Pickle writes a repeated *object* as a back-reference, so equal
    content whose strings were built differently (read from a checkpoint on resume, parsed from params.yaml,
    or written as literals) would give different bytes; after this, the bytes depend on the content only."""
    if isinstance(obj, dict):
        return {canonical(k): canonical(v) for k, v in obj.items()}
    if type(obj) in (list, tuple):  # not subclasses such as torch.Size or named tuples
        return type(obj)(canonical(v) for v in obj)
    return sys.intern(obj) if isinstance(obj, str) else obj


def _json_default(o: Any) -> Any:
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def file_md5(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def git_state(cwd: str | os.PathLike | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the checkout, or None values outside a git checkout (a Docker image)."""

    def run(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10,
                                 check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = _installed_version(metadata.distribution(name))
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _installed_version(dist: metadata.Distribution) -> str:
    """``dist.version``, read from the METADATA header alone.

    ``Distribution.version`` runs the email parser over the whole file, long README included: ~4 ms a
    package, 70 ms a manifest, a fixed cost every stage pays (it was a tenth of a short frame-extraction run).
    """
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    match = re.search(r"^Version:[ \t]*(\S+)", text.split("\n\n", 1)[0], re.MULTILINE)
    return match.group(1) if match else dist.version


# CPU flags that change which torch/MKL/oneDNN kernels run, and so the bits of a CPU run.
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


def cpu_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """The CPU model and its KERNEL_FLAGS: two machines agree bit for bit only where these agree, and not
    always then (README, Reproducibility). Elsewhere than Linux, the model as ``platform`` reports it."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return {"model": platform.processor() or None, "flags": None}
    fields = dict(line.split(":", 1) for line in text.split("\n\n", 1)[0].splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {"model": fields.get("model name"), "flags": [f for f in KERNEL_FLAGS if f in flags]}


def run_manifest(stage: str, config: Any, seed: int | None, launch: dict | None = None) -> dict[str, Any]:
    """What produced an output: stage, resolved config, seed, code version, library versions, machine, and
    (``launch``) how a distributed stage was laid out (world size, ...), which is not part of its config.
    torch's thread count and CPU capability (which decide its bits) only when the stage ran torch: a stage
    that did not import it is spared the import (~2.5 s)."""
    torch = sys.modules.get("torch")
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    return {
        "stage": stage,
        "config": cfg,
        "seed": seed,
        "git": git_state(),
        "python": sys.version.split()[0],
        "packages": package_versions(),
        "torch_threads": torch.get_num_threads() if torch else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability() if torch else None,
        "cpu": cpu_description(),
        **({"launch": launch} if launch else {}),
    }


def write_manifest(out_dir: str | os.PathLike, stage: str, config: Any, seed: int | None,
                   name: str = "run_manifest.json", launch: dict | None = None) -> Path:
    """Write ``run_manifest.json`` into ``out_dir`` atomically and return its path.

    Declare it as a DVC output of its own (cached, so that `dvc pull` brings the provenance too); it holds
    the commit, so `handeye verify` exempts it from the bit-for-bit check of the real outputs.
    """
    path = Path(out_dir) / name
    atomic_write_json(path, run_manifest(stage, config, seed, launch))
    return path
