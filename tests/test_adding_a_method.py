"""The guide ``docs/adding-a-method.md`` and its worked example ``docs/examples/knn_patch.py``.

The example runs as a researcher's own method would: its YAML becomes ``cfg.model`` of the real
config, one job goes through :func:`ulsad_bench.runner.run`, the record must be ok and the method
must detect, and the report must tabulate it. The guide's excerpts and commands are checked
against the files, so the guide cannot drift from the code.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from tests.conftest import TINY_DATA, compose_config
from ulsad_bench import runner
from ulsad_bench.data import NORMAL, ImageSet, Sample
from ulsad_bench.features import FeatureCache
from ulsad_bench.models.backbone import BackboneSpec, WeightsInfo
from ulsad_bench.models.base import AnomalyModel, RunContext
from ulsad_bench.report.build import main as report_main
from ulsad_bench.report.naming import method_name
from ulsad_bench.spec import model_from_config

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "adding-a-method.md"
EXAMPLE = REPO / "docs" / "examples" / "knn_patch.py"
EXAMPLE_CONFIG = REPO / "docs" / "examples" / "knn_patch.yaml"
# a fenced block right after this marker must appear verbatim in the file it names
EXCERPT = re.compile(r"<!-- excerpt: (\S+) -->\n```\w*\n(.*?)```", re.DOTALL)
# the files the guide tells the reader to create: not in the repository
TO_CREATE = {"conf/model/knn_patch.yaml"}


def knn_cfg(cache: Path, outputs: Path, *overrides: str) -> DictConfig:
    """The real config on the tiny synthetic set, with the example's YAML as ``cfg.model``."""
    cfg = compose_config([*TINY_DATA, f"cache_dir={cache}", f"output_root={outputs}", *overrides])
    cfg.model = OmegaConf.load(EXAMPLE_CONFIG)
    return cfg


@pytest.fixture(scope="module")
def knn_job(shared_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """One job of the example on the synthetic ``texture`` category: ``(record, results folder)``."""
    outputs = tmp_path_factory.mktemp("knn_outputs")
    cfg = knn_cfg(shared_cache, outputs, "dataset.category=texture")
    record = runner.run(cfg, outputs / "synthetic" / "texture" / "knn_patch" / "seed=0")
    return record, outputs


def runs_as_main(module: str) -> bool:
    """Whether ``python -m module`` runs something: a package's ``__main__`` or a module's main block."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        return False
    if spec.submodule_search_locations is not None:
        return importlib.util.find_spec(f"{module}.__main__") is not None
    return spec.origin is not None and 'if __name__ == "__main__":' in Path(spec.origin).read_text()


def test_config_names_the_example_class() -> None:
    config = OmegaConf.load(EXAMPLE_CONFIG)
    cls = get_class(str(config._target_))
    assert issubclass(cls, AnomalyModel)
    assert config.name == cls.name == "knn_patch"
    model = model_from_config(config)  # every other key is an __init__ argument
    assert model.hyperparameters() == {"layers": ["layer2", "layer3"], "bank_size": None}


def test_model_contract_on_random_images() -> None:
    """setup / fit / predict as the guide states them: shapes, dtypes, a buffer memory bank."""
    model = model_from_config(OmegaConf.load(EXAMPLE_CONFIG))
    spec = BackboneSpec("resnet18", WeightsInfo(policy="random", random_init_seed=0))
    ctx = RunContext(torch.device("cpu"), 0, 32, spec, FeatureCache(None, enabled=False), progress=False)
    model.setup(ctx)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=generator)
    samples = [Sample(Path(f"{i}.png"), 0, "good", NORMAL) for i in range(3)]
    train = ImageSet(samples=samples, images=images, masks=None, key="random")
    summary = model.fit(train, train)
    assert summary == {"train_images": 3, "memory_bank": 3 * 4 * 4}  # layer2 of 32 px: a 4 x 4 grid
    buffers = dict(model.inference_modules()[0].named_buffers())
    assert buffers["memory_bank"].shape == (48, 128 + 256)  # resnet18: layer2 + layer3 channels
    model.eval()
    out = model.predict(train.float_images(slice(None)))
    assert out.maps.shape == (3, 32, 32) and out.maps.dtype == torch.float32
    assert out.scores.shape == (3,)
    unseen = model.predict(torch.full((2, 3, 32, 32), 0.5)).scores  # flat grey, unlike the noise trained on
    assert out.scores.max() < 0.01 * unseen.min()  # each training patch is its own nearest neighbour


def test_example_runs_through_the_harness_and_detects(knn_job: tuple[dict[str, Any], Path]) -> None:
    record, _ = knn_job
    assert record["status"] == "ok", record.get("error")
    assert record["model"] == "knn_patch"
    assert record["config"]["model"]["_target_"] == "docs.examples.knn_patch.KnnPatch"
    assert record["fit"]["memory_bank"] == record["data"]["train"] * 8 * 8  # layer2 of 64 px: 8 x 8
    assert record["val_source"].startswith("none")  # uses_validation = False
    assert record["efficiency"]["throughput_img_s"] > 0
    # with random-init backbones; measured image / pixel AUROC 0.88-1.0 / 0.82-0.91 over
    # backbone.random_init_seed 0-4 and dataset.synthetic.seed 0-4 (this config: 1.0 / 0.88)
    assert record["metrics"]["image_auroc"] > 0.8
    assert record["metrics"]["pixel_auroc"] > 0.75


def test_report_tabulates_the_example(knn_job: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    record, outputs = knn_job
    out = tmp_path / "reports"
    assert report_main([str(outputs), "--out", str(out)]) == 0
    name = method_name("knn_patch")
    header = re.compile(rf"^\|.*\b{re.escape(name)}\b.*\|$", re.MULTILINE)
    assert header.search((out / "metrics_synthetic.md").read_text())
    per_category = (out / "extended_synthetic_image_auroc.md").read_text()
    assert re.search(rf"^\| Category \| {re.escape(name)} \|$", per_category, re.MULTILINE)
    assert f"| texture | {100 * record['metrics']['image_auroc']:.2f}" in per_category
    assert (out / "figures" / "fig9_synthetic_texture.png").is_file()


def test_guide_excerpts_are_in_the_example() -> None:
    guide = GUIDE.read_text()
    assert "docs/examples/knn_patch.py" in guide
    excerpts = EXCERPT.findall(guide)
    assert sum(path == "docs/examples/knn_patch.py" for path, _ in excerpts) >= 5
    assert any(path == "docs/examples/knn_patch.yaml" for path, _ in excerpts)
    for path, block in excerpts:
        assert block in (REPO / path).read_text(), f"the guide's excerpt of {path} is not in it:\n{block}"
    fences = guide.count("```") // 2
    unmarked = fences - len(excerpts)
    assert unmarked == 1  # the one block of commands, checked below


def test_guide_commands_and_paths_exist() -> None:
    guide = GUIDE.read_text()
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.MULTILINE))
    for target in re.findall(r"(?:^|`)make ([a-z][\w-]*)", guide, re.MULTILINE):
        assert target in targets, f"make {target}: not a Makefile target"
    for module in re.findall(r"python -m ([\w.]+)", guide):
        assert runs_as_main(module), f"python -m {module}"
    for path in re.findall(r"`([\w./-]+/[\w.-]+\.(?:py|yaml|md))`", guide):
        assert path in TO_CREATE or (REPO / path).is_file(), path
    for option in re.findall(r"--([a-z][\w-]+)", guide):
        assert option in ("out", "models"), f"--{option} not checked"
