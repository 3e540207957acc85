"""Each model declares its settings once (a frozen dataclass): its constructor takes them, checks
them there, and its ``hyperparameters()`` record lists every one of them."""

from __future__ import annotations

from dataclasses import fields

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config
from ulsad_bench import runner
from ulsad_bench.models.cflow.model import Cflow, CflowSettings
from ulsad_bench.models.dfr.model import Dfr, DfrSettings
from ulsad_bench.models.draem.model import Draem, DraemSettings
from ulsad_bench.models.efficientad.model import EfficientAd, EfficientAdSettings
from ulsad_bench.models.fastflow.model import Fastflow, FastflowSettings
from ulsad_bench.models.padim import Padim, PadimSettings
from ulsad_bench.models.patchcore import Patchcore, PatchcoreSettings
from ulsad_bench.models.reverse_distillation.model import ReverseDistillation, ReverseDistillationSettings
from ulsad_bench.models.settings import training_settings
from ulsad_bench.models.ulsad.model import Ulsad
from ulsad_bench.models.ulsad.settings import TRAINED_BY, UlsadSettings
from ulsad_bench.spec import MODEL_KEYS_NOT_SETTINGS, JobSpec

MODELS = {
    "ulsad": (Ulsad, UlsadSettings),
    "padim": (Padim, PadimSettings),
    "patchcore": (Patchcore, PatchcoreSettings),
    "dfr": (Dfr, DfrSettings),
    "efficientad": (EfficientAd, EfficientAdSettings),
    "cflow": (Cflow, CflowSettings),
    "draem": (Draem, DraemSettings),
    "fastflow": (Fastflow, FastflowSettings),
    "reverse_distillation": (ReverseDistillation, ReverseDistillationSettings),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_the_yaml_the_settings_and_the_record_name_the_same_values(tiny_cfg, name: str) -> None:
    model_class, settings_class = MODELS[name]
    yaml = OmegaConf.to_container(compose_config([f"model={name}"]).model, resolve=True)
    declared = {f.name for f in fields(settings_class)}
    assert set(yaml) - set(MODEL_KEYS_NOT_SETTINGS) == declared  # conf/model/<name>.yaml sets every one
    with pytest.raises(TypeError, match="no_such_setting"):
        model_class(no_such_setting=1)
    overrides = ["model.steps=1", "model.distillation.steps=1"] if name == "efficientad" else []
    job = runner.prepare(JobSpec.from_config(tiny_cfg(f"model={name}", *overrides)))
    assert declared <= set(job.model.hyperparameters())  # the record lists every setting


def test_ulsads_trained_model_depends_on_the_settings_marked_so() -> None:
    assert training_settings(UlsadSettings) == TRAINED_BY
    assert {"epochs", "lr", "loss_pg", "precompute_features"} <= set(TRAINED_BY)
    assert not {"alpha", "beta", "branch", "blur_sigma", "quantiles_on"} & set(TRAINED_BY)  # scoring only
    with pytest.raises(ValueError, match="need 0 <= alpha < beta <= 1"):
        Ulsad(alpha=0.99, beta=0.9)
