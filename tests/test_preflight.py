"""The preflight of a profile's external inputs (issue #23): each input found or named, with where to get it,
at the first stage and before anything is decoded; and the DINOv3 Hub loader failing at once without HF_TOKEN."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from handeye import cli, preflight
from handeye.config import resolve_profile
from handeye.data import frames
from handeye.errors import HandEyeError

ROOT = Path(__file__).resolve().parents[1]
# Every external input of the paper profile, as configs/paper.yaml and dvc.yaml name them (files end in a suffix).
PAPER_INPUTS = ("data/ego", "data/epic", "data/generic", "data/weights/dinov3-vitb16",
                "data/weights/mae_pretrain_vit_base_full.pth",
                *(f"data/epic/annotations/EPIC_100_{n}.csv" for n in ("train", "validation", "verb_classes",
                                                                      "noun_classes")))


def profile(name: str) -> dict:
    return resolve_profile(name, ROOT / "params.yaml", ROOT / "configs")


def make_project(tmp_path: Path, params: dict, inputs: tuple[str, ...] = PAPER_INPUTS) -> Path:
    """A project folder with the repository's dvc.yaml, ``params`` as params.yaml and empty stand-ins of
    ``inputs`` (the preflight checks presence only)."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for name in inputs:
        path = tmp_path / name
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        else:
            path.mkdir(parents=True, exist_ok=True)
    return tmp_path


@pytest.fixture
def no_token(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)


def names(missing: list[preflight.Missing]) -> list[str]:
    return [m.name for m in missing]


# ------------------------------------------------------------------------------------------------ inputs
def test_frames_inputs_follow_dvc_yaml(tmp_path):
    assert preflight.frames_inputs(ROOT) == ["data/ego", "data/epic", "data/generic"]
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    raw["stages"]["extract_frames"]["foreach"] = ["ego", "ego100k"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(raw))
    assert preflight.frames_inputs(tmp_path) == ["data/ego", "data/ego100k"]
    assert preflight.frames_inputs(tmp_path / "nowhere") == []


def test_paper_inputs_all_in_place_pass(tmp_path, no_token):
    root = make_project(tmp_path, profile("paper"))
    assert preflight.missing_inputs(profile("paper"), root) == []


@pytest.mark.parametrize(("absent", "where"), [
    ("data/ego", "Egocentric-10K"),
    ("data/epic", "https://epic-kitchens.github.io"),
    ("data/generic", "stand-in"),
    ("data/weights/dinov3-vitb16", "facebook/dinov3-vitb16-pretrain-lvd1689m, gated"),
    ("data/weights/mae_pretrain_vit_base_full.pth",
     "https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base_full.pth"),
    ("data/epic/annotations/EPIC_100_verb_classes.csv", "github.com/epic-kitchens/epic-kitchens-100-annotations"),
])
def test_each_missing_paper_input_is_named_once_with_where_to_get_it(tmp_path, no_token, absent, where):
    root = make_project(tmp_path, profile("paper"), tuple(p for p in PAPER_INPUTS if not p.startswith(absent)))
    missing = preflight.missing_inputs(profile("paper"), root)
    assert len(missing) == 1, missing  # data/epic alone, not its annotations; DINOv3 once (dedup and table row)
    assert Path(absent).name in missing[0].name and where in missing[0].where


def test_dinov3_folder_or_token(tmp_path, monkeypatch, no_token):
    """Dedup may fetch DINOv3 from the Hub with HF_TOKEN, but the table row's folder is a DVC dependency."""
    params = profile("paper")
    root = make_project(tmp_path, params, tuple(p for p in PAPER_INPUTS if "dinov3" not in p))
    assert names(preflight.missing_inputs(params, root)) == ["data/weights/dinov3-vitb16 or HF_TOKEN"]
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    assert names(preflight.missing_inputs(params, root)) == ["data/weights/dinov3-vitb16"]
    params["report"]["encoders"].pop("dinov3")
    assert preflight.missing_inputs(params, root) == []  # the token is enough for dedup alone


def test_dedup_encoder_specs(tmp_path, monkeypatch, no_token):
    params = profile("paper")
    root = make_project(tmp_path, params)
    params["frames"]["dedup_encoder"] = "facebook/dinov3-vits16-pretrain-lvd1689m"
    assert names(preflight.missing_inputs(params, root)) == ["HF_TOKEN for facebook/dinov3-vits16-pretrain-lvd1689m"]
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    assert preflight.missing_inputs(params, root) == []
    params["frames"]["dedup_encoder"] = "data/weights/elsewhere"
    assert names(preflight.missing_inputs(params, root)) == ["data/weights/elsewhere"]
    params["frames"]["dedup"] = False  # no encoder is loaded
    assert preflight.missing_inputs(params, root) == []


def test_demo_inputs_of_an_empty_project_say_dvc_pull(tmp_path, no_token):
    """Pipeline outputs (the demo's imagenet_init and every table row's weights are under out/) are not inputs."""
    params = profile("demo")
    missing = preflight.missing_inputs(params, make_project(tmp_path, params, ()))
    assert names(missing) == ["data/ego", "data/epic", "data/generic", params["frames"]["dedup_encoder"]]
    assert "dvc pull data.dvc" in preflight.message(missing)


@pytest.mark.parametrize("name", ["demo", "demo-long"])
def test_the_pulled_demo_data_passes(name):
    if not (ROOT / "data" / "weights" / "dinov3-standin").is_dir():
        pytest.skip("demo data not pulled (dvc pull data.dvc)")
    assert preflight.missing_inputs(profile(name), ROOT) == []


# ------------------------------------------------------------------------------------------ stage check
def test_only_a_stage_input_is_checked(tmp_path, monkeypatch, no_token):
    params = profile("paper")
    monkeypatch.chdir(make_project(tmp_path, params, ()))
    preflight.check_stage_inputs("clips", params)  # a folder of one's own: no profile inputs needed
    with pytest.raises(HandEyeError, match=r"data/ego \(Egocentric-10K.*HF_TOKEN.*dl\.fbaipublicfiles\.com"):
        preflight.check_stage_inputs("./data/ego/", params)


def test_extract_frames_stops_before_decoding(tmp_path, monkeypatch, capsys, no_token):
    params = profile("paper")
    absent = params["pretrain"]["imagenet_init"]
    monkeypatch.chdir(make_project(tmp_path, params, tuple(p for p in PAPER_INPUTS if p != absent)))

    def decode(*args, **kwargs):
        raise RuntimeError("decoding started")

    monkeypatch.setattr(frames, "run_frames", decode)
    assert cli.main(["extract-frames", "data/epic", "--out", "out/frames/epic", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and absent in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    (tmp_path / absent).touch()
    with pytest.raises(RuntimeError, match="decoding started"):  # all in place: the stage goes on
        cli.main(["extract-frames", "data/epic", "--out", "out/frames/epic", "--no-progress"])


# ------------------------------------------------------------------------------------- DINOv3 fail-fast
def fake_hub(monkeypatch, cache: Path) -> list[dict]:
    """DINOv3ViTModel.from_pretrained recorded instead of run, over an HF cache at ``cache``."""
    from huggingface_hub import constants
    from transformers import DINOv3ViTModel

    calls: list[dict] = []

    def fake(source, **kw):
        calls.append({"source": source, **kw})
        raise OSError("offline")

    monkeypatch.setattr(DINOv3ViTModel, "from_pretrained", fake)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return calls


def test_hub_dinov3_without_token_fails_at_once(tmp_path, monkeypatch, no_token):
    from handeye.models.encoders import load_encoder

    calls = fake_hub(monkeypatch, tmp_path / "cache")
    with pytest.raises(HandEyeError, match=r"gated.*HF_TOKEN is not set"):
        load_encoder("dinov3-vitb16", weights_root=tmp_path)
    assert calls == []  # the Hub was not asked


def test_hub_dinov3_in_the_cache_loads_without_token(tmp_path, monkeypatch, no_token):
    from handeye.models.encoders import load_encoder

    cache = tmp_path / "cache"
    repo = cache / "models--facebook--dinov3-vitb16-pretrain-lvd1689m"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "config.json").write_text("{}")
    calls = fake_hub(monkeypatch, cache)
    with pytest.raises(HandEyeError, match=r"cannot load DINOv3"):
        load_encoder("dinov3-vitb16", weights_root=tmp_path)
    assert calls == [{"source": "facebook/dinov3-vitb16-pretrain-lvd1689m", "token": None}]
