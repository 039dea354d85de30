import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from handeye import repro
from handeye.errors import HandEyeError


def draw():
    return random.random(), float(np.random.rand())  # noqa: NPY002 -- the global RNG is what seed_everything seeds, float(torch.rand(1))


def test_seed_everything_repeats_python_numpy_torch():
    repro.seed_everything(123)
    a = draw()
    repro.seed_everything(123)
    assert draw() == a
    repro.seed_everything(124)
    assert draw() != a


def test_seed_everything_fixes_threads_and_determinism():
    repro.seed_everything(0, threads=1)
    assert torch.get_num_threads() == 1
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    repro.seed_everything(0)
    assert torch.get_num_threads() == repro.DEFAULT_THREADS


def test_seeded_dataloader_workers_repeat():
    ds = torch.utils.data.TensorDataset(torch.arange(32))

    def order(seed):
        dl = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, num_workers=2,
                                         worker_init_fn=repro.seed_worker, generator=repro.torch_generator(seed))
        return torch.cat([b[0] for b in dl]).tolist()

    assert order(5) == order(5)
    assert order(5) != order(6)


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "sub" / "a.json"
    repro.atomic_write_json(p, {"b": 1, "a": [1, 2]})
    assert json.loads(p.read_text()) == {"a": [1, 2], "b": 1}
    assert p.read_text().startswith('{\n  "a"')  # sorted keys: equal content, equal bytes
    assert [f.name for f in p.parent.iterdir()] == ["a.json"]


def test_atomic_path_exception_leaves_old_file_and_no_temp(tmp_path):
    p = tmp_path / "out.bin"
    p.write_bytes(b"old")
    def crash_mid_write():
        with repro.atomic_path(p) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError, match="crash mid-write"):
        crash_mid_write()
    assert p.read_bytes() == b"old"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["out.bin"]


def test_sigkill_mid_write_leaves_no_complete_looking_file(tmp_path):
    target = tmp_path / "model.pt"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from handeye.repro import atomic_path
        with atomic_path({str(target)!r}) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"x" * 1000)
                f.flush()
                print("written", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert proc.returncode == -signal.SIGKILL
    assert "written" in proc.stdout
    assert not target.exists()
    leftovers = list(tmp_path.iterdir())
    assert all(f.name.startswith(".") and f.name.endswith(".tmp") for f in leftovers)


def test_atomic_torch_save_bytes_do_not_depend_on_temp_name(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    repro.atomic_torch_save(state, tmp_path / "a" / "m.pt")
    repro.atomic_torch_save(state, tmp_path / "b" / "m.pt")
    assert (tmp_path / "a" / "m.pt").read_bytes() == (tmp_path / "b" / "m.pt").read_bytes()
    assert torch.equal(torch.load(tmp_path / "a" / "m.pt", weights_only=True)["w"], state["w"])
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["m.pt"]


def test_atomic_torch_save_bytes_do_not_depend_on_object_identity(tmp_path):
    """A resumed run reads its strings back from a checkpoint; an uninterrupted one shares them. Pickle writes
    a shared object as a back-reference, so without canonicalising the two would differ in bytes."""
    name = "".join(["vit", "_demo"])
    shared = {"arch": name, "config": {"arch": name}, "dims": (1, 2)}
    separate = {"arch": "".join(["vit_", "demo"]), "config": {"arch": "vit_demo"}, "dims": (1, 2)}
    assert shared["arch"] is shared["config"]["arch"] and separate["arch"] is not separate["config"]["arch"]
    repro.atomic_torch_save(shared, tmp_path / "a" / "m.pt")
    repro.atomic_torch_save(separate, tmp_path / "b" / "m.pt")
    assert (tmp_path / "a" / "m.pt").read_bytes() == (tmp_path / "b" / "m.pt").read_bytes()
    assert torch.load(tmp_path / "b" / "m.pt", weights_only=True) == shared


def test_unwritable_output_folder_is_one_line_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        with pytest.raises(HandEyeError, match="not writable"):
            repro.atomic_write_text(ro / "x.txt", "x")
    finally:
        ro.chmod(0o700)


def test_manifest_records_commit_versions_seed_and_config(tmp_path):
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Cfg:
        lr: float = 0.1
        out: Path = Path("out/x")

    path = repro.write_manifest(tmp_path, "unit", Cfg(), seed=7)
    m = json.loads(path.read_text())
    assert m["stage"] == "unit" and m["seed"] == 7
    assert m["config"] == {"lr": 0.1, "out": "out/x"}
    assert m["packages"]["torch"] == torch.__version__.split("+")[0] or m["packages"]["torch"].startswith(
        torch.__version__.split("+")[0])
    assert set(m["git"]) == {"commit", "dirty"}
    assert m["torch_threads"] >= 1
    assert set(m["cpu"]) == {"model", "flags"}


def test_cpu_description_reads_model_and_kernel_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu avx2 avx512f amx_tile sse\n\n"
                    "processor\t: 1\nmodel name\t: Other\n")
    assert repro.cpu_description(info) == {"model": "Some Xeon", "flags": ["avx2", "avx512f", "amx_tile"]}
    assert repro.cpu_description(tmp_path / "missing")["flags"] is None


def test_file_md5(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert repro.file_md5(p) == "900150983cd24fb0d6963f7d28e17f72"


def test_output_folder_that_cannot_be_created_is_one_line_error(tmp_path):
    """Works as root too: a path under a regular file cannot become a folder."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(HandEyeError, match="cannot create output folder"):
        repro.atomic_write_text(blocker / "sub" / "x.txt", "x")


def test_deterministic_kernels_do_not_import_the_compiler():
    # Each pipeline stage is a fresh process: importing Dynamo/Inductor here would cost ~1.5 s per stage.
    code = ("import sys, torch; from handeye import repro; repro.use_deterministic_kernels(); "
            "assert torch.are_deterministic_algorithms_enabled(); print('torch._inductor.config' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_deterministic_kernels_reach_an_imported_compiler():
    import torch._inductor.config as inductor_config

    repro.use_deterministic_kernels()
    assert inductor_config.deterministic


def test_package_versions_agree_with_importlib_metadata():
    from importlib import metadata

    names = ("torch", "numpy", "dvc", "pillow", "rsl-rl-lib", "no-such-package-xyz")
    expected = {n: metadata.version(n) for n in names[:-1]} | {names[-1]: None}
    assert repro.package_versions(names) == expected


@pytest.mark.parametrize(("given", "seen"), [(None, "PASSIVE"), ("", None), ("ACTIVE", "ACTIVE")])
def test_omp_wait_policy_defaults_to_passive_and_empty_opts_out(given, seen):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    code = "import os, handeye; print(repr(os.environ.get('OMP_WAIT_POLICY')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == repr(seen)
