"""The external inputs a profile's pipeline reads, checked at its first stage before anything is computed.

Without it a paper-profile run without the real data or weights finds each missing input only when the stage
that reads it starts: the DINOv3 weights after the first video is decoded, the official MAE ``_full.pth`` after
every corpus was extracted (issue #23). ``missing_inputs(params, root)`` lists, from the resolved parameters,
every input no stage produces (nothing under ``out/``), and ``check_stage_inputs`` turns those missing into one
``HandEyeError`` line naming each and where to get it. Only a run of a pipeline stage checks them:
``handeye extract-frames`` on a folder of your own needs nothing but that folder and its dedup encoder.

The check is of presence only (a file or folder at the path, HF_TOKEN in the environment): the demo data and
the stand-in weights, which ``dvc pull data.dvc`` puts at the same paths, pass it, as they should for the demo.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from handeye.config import project_root
from handeye.errors import HandEyeError

PRODUCED_ROOT = "out"  # every stage writes under out/: a path there is made by the pipeline, not an input
FRAMES_STAGE = "extract_frames"  # dvc.yaml's stage that extracts each corpus, the first to run
DEMO = "the demo's data and stand-in weights at these paths: `dvc pull data.dvc`"
MAE_RELEASE = "https://dl.fbaipublicfiles.com/mae/pretrain/"
MAE_FULL = "mae_pretrain_vit_base_full.pth"
EPIC_ANNOTATIONS = "https://github.com/epic-kitchens/epic-kitchens-100-annotations"
CORPUS_SOURCES = {  # dvc.yaml's extract_frames item -> where the paper's corpus comes from
    "ego": "Egocentric-10K WebDataset tars, Hugging Face Hub, gated: HF_TOKEN",
    "epic": f"EPIC-KITCHENS-100, https://epic-kitchens.github.io, annotations: {EPIC_ANNOTATIONS}",
    "generic": "the demo's ImageNet stand-in photos",
}
EPIC_FILES = ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv")  # handeye.data.epic reads them per split


class Missing(NamedTuple):
    name: str  # the path (relative to the project root, as params.yaml gives it) or what stands for it
    where: str  # how to get it


# ------------------------------------------------------------------------------------------------ inputs
def frames_inputs(root: Path) -> list[str]:
    """The input folder of each extract_frames stage in ``root``/dvc.yaml (data/ego, data/epic, ...)."""
    path = root / "dvc.yaml"
    if not path.is_file():
        return []
    stage = ((yaml.safe_load(path.read_text()) or {}).get("stages") or {}).get(FRAMES_STAGE) or {}
    items, cmd = stage.get("foreach"), (stage.get("do") or {}).get("cmd", "")
    argv = shlex.split(cmd)
    if not isinstance(items, list) or "extract-frames" not in argv[:-1]:
        return []
    template = argv[argv.index("extract-frames") + 1]  # the positional input folder, e.g. data/${item}
    return [template.replace("${item}", str(item)) for item in items]


def corpus_inputs(root: Path) -> list[Missing]:
    """Every frames input folder absent from ``root``, with where its corpus comes from."""
    return [Missing(folder, CORPUS_SOURCES.get(Path(folder).name, "place the corpus there"))
            for folder in frames_inputs(root) if not (root / folder).exists()]


def dinov3_where(hub_id: str, folder: str | None = None) -> str:
    """folder: where to put the downloaded folder when that is not the missing path itself."""
    at = f"at {folder}" if folder else "there"
    return f"{hub_id}, gated: accept its license on the Hub and set HF_TOKEN, or put its folder {at}"


def dedup_input(frames: dict[str, Any], root: Path) -> list[Missing]:
    """frames.dedup_encoder, resolved as handeye.models.encoders.load_encoder resolves it: a registry name, a
    folder or file, or a DINOv3 Hub id (which needs HF_TOKEN when no folder is in place)."""
    spec = str(frames.get("dedup_encoder") or "")
    if not frames.get("dedup", True) or not spec:
        return []
    from handeye.models import encoders  # torch's import (~2 s): only when there is an encoder to resolve

    token = bool(os.environ.get("HF_TOKEN"))
    if spec in encoders.REGISTRY:
        entry = encoders.REGISTRY[spec]
        if entry.kind == "export":  # out/models/NAME/encoder.pt: a pipeline output
            return []
        folder = (encoders.WEIGHTS_ROOT / spec).as_posix()
        if (root / folder).is_dir() or (entry.hub_id and token):
            return []
        if entry.hub_id:
            return [Missing(f"{folder} or HF_TOKEN", dinov3_where(entry.hub_id))]
        return [Missing(folder, "the demo's stand-in")]
    if spec.startswith(encoders.RANDOM_PREFIX) or (root / spec).exists() or is_produced(spec):
        return []
    if encoders.HUB_DINOV3.fullmatch(spec):
        folder = (encoders.WEIGHTS_ROOT / spec.split("/")[-1]).as_posix()
        where = dinov3_where(spec, f"{folder} and name it in frames.dedup_encoder")
        return [] if token else [Missing(f"HF_TOKEN for {spec}", where)]
    return [Missing(spec, weights_where(spec, spec))]


def weights_where(encoder: str, path: str) -> str:
    """Where a weights file or folder of ``encoder`` comes from."""
    from handeye.models import encoders

    entry = encoders.REGISTRY.get(encoder)
    if entry is not None and entry.hub_id:
        return dinov3_where(entry.hub_id)
    if "standin" in encoder or "standin" in path:
        return "the demo's stand-in"
    name = Path(path).name
    if name.startswith("mae_pretrain_"):
        return f"the official MAE weights, {MAE_RELEASE}{name}"
    return "place the file or folder there (a dependency of its stage in dvc.yaml)"


def init_inputs(params: dict[str, Any], root: Path) -> list[Missing]:
    """pretrain.imagenet_init and every scratch strategy's ``init`` that is a path no stage writes."""
    inits = [str((params.get("pretrain") or {}).get("imagenet_init") or "")]
    strategies = (params.get("pretrain_strategies") or {}).get("scratch") or {}
    inits += [str(s.get("init") or "") for s in strategies.values() if isinstance(s, dict)]
    return [Missing(p, mae_where(p)) for p in inits
            if p not in ("", "random", "imagenet") and not is_produced(p) and not (root / p).exists()]


def mae_where(path: str) -> str:
    name = Path(path).name
    url = MAE_RELEASE + (name if name.startswith("mae_pretrain_") else MAE_FULL)
    return f"the official MAE weights, {url}"


def report_inputs(params: dict[str, Any], root: Path) -> list[Missing]:
    """Each table row's weights (stage features depends on them) that no stage writes."""
    rows = (params.get("report") or {}).get("encoders") or {}
    return [Missing(str(row["weights"]), weights_where(str(row.get("encoder", "")), str(row["weights"])))
            for row in rows.values()
            if isinstance(row, dict) and row.get("weights") and not is_produced(str(row["weights"]))
            and not (root / str(row["weights"])).exists()]


def annotation_inputs(params: dict[str, Any], root: Path) -> list[Missing]:
    """The EPIC-KITCHENS-100 annotation CSVs stage features reads (skipped while their corpus is missing:
    it is named already, and its annotations come with it)."""
    from handeye.data.epic import SPLIT_FILES

    features = params.get("features") or {}
    data_dir = str(features.get("data_dir") or "data/epic")
    if not (root / data_dir).exists():
        return [Missing(data_dir, CORPUS_SOURCES["epic"])]
    ann = Path(str(features.get("annotations_dir") or Path(data_dir) / "annotations"))
    names = [SPLIT_FILES.get(s, s) for s in features.get("splits") or []] + list(EPIC_FILES)
    absent = [n for n in names if not (root / ann / n).is_file()]
    if not absent:
        return []
    name = ann.as_posix() if not (root / ann).is_dir() else f"{ann.as_posix()}/{{{','.join(absent)}}}"
    return [Missing(name, f"the EPIC-KITCHENS-100 annotations, {EPIC_ANNOTATIONS}")]


def is_produced(path: str) -> bool:
    parts = Path(path).parts
    return bool(parts) and parts[0] == PRODUCED_ROOT


def missing_inputs(params: dict[str, Any], root: Path) -> list[Missing]:
    """Every external input of the pipeline under ``params`` absent from ``root``, in the order the stages
    read them (corpora, dedup encoder, MAE init, table rows' weights, EPIC annotations), each named once."""
    found = [*corpus_inputs(root), *dedup_input(params.get("frames") or {}, root), *init_inputs(params, root),
             *report_inputs(params, root), *annotation_inputs(params, root)]
    seen: set[str] = set()
    unique = []
    for item in found:
        key = item.name.split(" ")[0]  # "data/weights/dinov3-vitb16 or HF_TOKEN" and the row's folder: once
        if key not in seen:
            seen.add(key)
            unique.append(item)
    return unique


# ------------------------------------------------------------------------------------------------- check
def message(missing: list[Missing]) -> str:
    listed = "; ".join(f"{m.name} ({m.where})" for m in missing)
    demo = any(Path(m.name).parts[0] == "data" for m in missing)
    return f"missing input(s), nothing computed: {listed}" + (f"; {DEMO}" if demo else "")


def is_stage_input(input_dir: str | Path, root: Path) -> bool:
    """``input_dir`` is the input folder of one of dvc.yaml's extract_frames stages."""
    here = (Path.cwd() / input_dir).resolve()
    return any(here == (root / folder).resolve() for folder in frames_inputs(root))


def check_stage_inputs(input_dir: str | Path, params: dict[str, Any]) -> None:
    """Raise one HandEyeError naming every missing external input when ``input_dir`` is a pipeline stage's.

    params: the resolved parameters (params.yaml), the running stage's section as it runs (CLI flags applied)."""
    root = project_root()
    if root is None or not is_stage_input(input_dir, root):
        return
    missing = missing_inputs(params, root)
    if missing:
        raise HandEyeError(message(missing))
