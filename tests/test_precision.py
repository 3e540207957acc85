"""``precision=bf16`` is every model's mixed-precision policy (:mod:`ulsad_bench.models.precision`).

For each model, one fitted model is scored at fp32 and under its bf16 policy (CPU autocast: the
same code path as CUDA's) on a test set of 20 normal and 24 anomalous images, where one swapped
pair moves the image AUROC by 0.2 points (EfficientAD, which scores at 256 px, on 4 and 8). The
policy must engage (convolutions run in bf16), keep what bf16 breaks in fp32 (every matrix
product: PatchCore's nearest-neighbour distances, PaDiM's Mahalanobis distances, DFR's
resize-and-pool matrices; EfficientAD's autoencoder), and move the image AUROC by less than 0.5
points, with scores ranked as at fp32 (Spearman >= 0.995; PatchCore under whole-model autocast:
0.987, the policies here: 0.999 and above). Before the policy, PaDiM, PatchCore and EfficientAD
ignored ``precision=bf16`` (no convolution in bf16), DFR refused it, and ``make bench`` autocast
whole models (PatchCore's distances in bf16).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from scipy.stats import spearmanr
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from tests.test_baselines import EFFICIENTAD_FAST
from ulsad_bench import runner
from ulsad_bench.metrics import image_auroc
from ulsad_bench.models.anomalib_adapter import efficientad_autoencoder
from ulsad_bench.spec import JobSpec

aten = torch.ops.aten
CONVOLUTIONS = {aten.convolution.default, aten.mkldnn_convolution.default, aten._convolution.default}
MATRIX_PRODUCTS = {
    aten.mm.default,
    aten.bmm.default,
    aten.addmm.default,
    aten.baddbmm.default,
    aten.matmul.default,
    aten._cdist_forward.default,
    aten.linalg_vector_norm.default,
}
TEST_SET = ["dataset.category=texture", "dataset.synthetic.n_test_good=20", "dataset.synthetic.n_per_defect=6"]
SMALL_TEST_SET = ["dataset.category=texture", "dataset.synthetic.n_test_good=4", "dataset.synthetic.n_per_defect=2"]
MODELS = {
    "ulsad": [
        "model=ulsad",
        "model.feature_dim=32",
        "model.epochs=4",
        "model.batch_size=4",
        "model.blur_sigma=1",
        "model.output_relu=false",
    ],
    "padim": ["model=padim"],
    "patchcore": ["model=patchcore"],
    "dfr": ["model=dfr", "model.epochs=2", "model.layers=[relu1_1,relu1_2,relu2_1,relu2_2]"],
    "efficientad": EFFICIENTAD_FAST,
}


class OperatorDtypes(TorchDispatchMode):
    """Counts ``(operator, dtype of its first floating operand, inside an fp32 module)``."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter[tuple[Any, torch.dtype, bool]] = Counter()
        self.in_fp32_module = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        floating = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor) and t.is_floating_point()]
        if floating:
            self.seen[(func, floating[0].dtype, self.in_fp32_module > 0)] += 1
        return func(*args, **(kwargs or {}))

    def dtypes(self, operators: set[Any], in_fp32_module: bool | None = None) -> set[torch.dtype]:
        return {
            dtype
            for (func, dtype, inside) in self.seen
            if func in operators and (in_fp32_module is None or inside == in_fp32_module)
        }


@contextmanager
def fp32_module(module: nn.Module | None, recorder: OperatorDtypes) -> Iterator[None]:
    """Mark the operators run inside ``module`` (one that the policy keeps in fp32)."""
    if module is None:
        yield
        return

    def enter(*_: Any) -> None:
        recorder.in_fp32_module += 1

    def leave(*_: Any) -> None:
        recorder.in_fp32_module -= 1

    handles = [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("name", list(MODELS))
def test_bf16_policy_engages_keeps_distances_in_fp32_and_keeps_the_auroc(tiny_cfg, name: str) -> None:
    test_set = TEST_SET if name != "efficientad" else SMALL_TEST_SET  # EfficientAD scores at 256 px: slow on a CPU
    job = runner.prepare(JobSpec.from_config(tiny_cfg(*MODELS[name], *test_set, "profile.enabled=false")))
    model, test, device = job.model, job.test, job.device
    model.fit(job.train, job.val)
    kept_fp32 = efficientad_autoencoder(model.model) if name == "efficientad" else None
    aurocs, recorders, ranked = {}, {}, {}
    for precision in ("fp32", "bf16"):
        model.set_precision(precision)
        recorder = OperatorDtypes()
        with fp32_module(kept_fp32, recorder), recorder:
            _, scores, _ = runner.predict_all(model, test, device, batch_size=16, progress=False)
            out = model.predict(test.float_images(slice(0, 2)).to(device))
        assert out.maps.dtype == torch.float32 and out.scores.dtype == torch.float32
        aurocs[precision], recorders[precision], ranked[precision] = image_auroc(test.labels, scores), recorder, scores
    rank_correlation = spearmanr(ranked["fp32"], ranked["bf16"])[0]
    print(f"\n{name}: I-AUROC fp32 {aurocs['fp32']:.4f}, bf16 {aurocs['bf16']:.4f}, Spearman {rank_correlation:.5f}")
    assert torch.bfloat16 not in {dtype for (_, dtype, _) in recorders["fp32"].seen}  # fp32 is fp32
    bf16 = recorders["bf16"]
    assert torch.bfloat16 in bf16.dtypes(CONVOLUTIONS), "precision=bf16 ran no convolution in bf16"
    assert bf16.dtypes(MATRIX_PRODUCTS) <= {torch.float32, torch.float64}, "a distance or statistic ran in bf16"
    if kept_fp32 is not None:
        assert bf16.dtypes(CONVOLUTIONS, in_fp32_module=True) == {torch.float32}
    assert aurocs["fp32"] > 0.7  # a detector that detects, so the comparison means something
    assert abs(aurocs["fp32"] - aurocs["bf16"]) * 100 < 0.5
    assert rank_correlation >= 0.995
