"""HANDEYE_PORTABLE_BITS=1 caps each math library at AVX2 before it loads (handeye.PORTABLE_BITS_ENV)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = ("import handeye, json, os, torch; "
         "print(json.dumps({'env': {k: os.environ.get(k) for k in handeye.PORTABLE_BITS_ENV}, "
         "'torch': torch.backends.cpu.get_cpu_capability()}))")


def probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k != "HANDEYE_PORTABLE_BITS"}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_portable_mode_sets_every_cap_and_torch_obeys():
    import handeye

    on = probe(HANDEYE_PORTABLE_BITS="1")
    assert on["env"] == handeye.PORTABLE_BITS_ENV
    assert on["torch"] in ("AVX2", "DEFAULT")  # never above AVX2, whatever this CPU has


def test_portable_mode_is_off_by_default_and_a_user_setting_wins():
    off = probe()
    assert all(off["env"][k] == os.environ.get(k) for k in off["env"])
    mine = probe(HANDEYE_PORTABLE_BITS="1", MKL_CBWR="AVX2,STRICT")
    assert mine["env"]["MKL_CBWR"] == "AVX2,STRICT"
