"""The authors' evaluation protocol as an option: each part does what their code does, is recorded,
is marked in the tables and never averaged with clean numbers; the protocol_gap report measures it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ulsad_bench import runner
from ulsad_bench.config import compose
from ulsad_bench.protocol import Protocol, apply_to_splits
from ulsad_bench.report.at_end import WriteReport
from ulsad_bench.spec import JobSpec

TINY_ULSAD = [
    "model=ulsad",
    "model.feature_dim=16",
    "model.epochs=4",
    "model.batch_size=4",
    "model.blur_sigma=1",
    "dataset.category=texture",
    "profile.enabled=false",
]


def _run(tiny_cfg, run_dir: Path, *overrides: str) -> dict:
    record = runner.run(tiny_cfg(*TINY_ULSAD, *overrides), run_dir)
    assert record["status"] == "ok", record.get("traceback")
    return record


def test_selection_on_the_test_set_is_at_least_clean_and_records_its_curve(tiny_cfg, tmp_path: Path) -> None:
    clean = _run(tiny_cfg, tmp_path / "clean", "model.reuse_trained=false")
    selected = _run(tiny_cfg, tmp_path / "selected", "protocol=select_on_test", "protocol.eval_every=1")
    selection = selected["selection"]
    assert [p["epoch"] for p in selection["curve"]] == [1, 2, 3, 4] and selection["last_epoch"] == 4
    # the last point is the clean run itself (same training, same calibration, same test set) ...
    assert selection["curve"][-1]["image_auroc"] == pytest.approx(clean["metrics"]["image_auroc"], abs=1e-6)
    # ... so the best over the curve is >= clean, and the record's metrics are the chosen epoch's
    assert selected["metrics"]["image_auroc"] >= clean["metrics"]["image_auroc"]
    best = max(p["image_auroc"] for p in selection["curve"])
    assert selected["metrics"]["image_auroc"] == pytest.approx(best, abs=1e-6)
    assert selection["curve"][selection["epoch"] - 1]["image_auroc"] == pytest.approx(best, abs=1e-6)
    assert selected["protocol"]["tag"] == "select_on_test" and clean["protocol"]["tag"] == "clean"
    every2 = _run(tiny_cfg, tmp_path / "every2", "protocol=select_on_test", "protocol.eval_every=2")
    assert [p["epoch"] for p in every2["selection"]["curve"]] == [2, 4]


def test_an_earlier_best_epoch_keeps_the_authors_unset_quantiles(tiny_cfg, tmp_path: Path) -> None:
    """A checkpoint of an epoch before the last carries quantiles of 0: its maps are not normalised."""
    record = _run(tiny_cfg, tmp_path / "a", "protocol=authors", "protocol.test_batch_size=4", "model.epochs=3")
    quantiles = record["hyperparameters"]["quantiles"]
    if record["selection"]["epoch"] < record["selection"]["last_epoch"]:
        assert set(quantiles.values()) == {0.0} and record["selection"]["restored_earlier_epoch"]
    else:
        assert quantiles["local_alpha"] < quantiles["local_beta"]
    assert "TEST" in record["val_source"] and record["data"]["val"] == record["data"]["test_normal"]


def test_drop_last_test_scores_the_path_sorted_test_set_cut_to_whole_batches(tiny_cfg) -> None:
    cfg = tiny_cfg(*TINY_ULSAD)
    splits = JobSpec.from_config(cfg).data.splits()
    cut, dropped = apply_to_splits(Protocol(drop_last_test=True, test_batch_size=4), splits)
    ordered = sorted(splits.test, key=lambda s: str(s.path))
    keep = len(ordered) - len(ordered) % 4
    assert cut.test == ordered[:keep] and dropped is not None and dropped["dropped"] == len(ordered) - keep
    assert dropped["dropped_normal"] == sum(s.label == 0 for s in ordered[keep:])
    same, none = apply_to_splits(Protocol(), splits)
    assert same.test == splits.test and none is None
    with pytest.raises(ValueError, match=r"protocol\.test_batch_size"):
        apply_to_splits(Protocol(drop_last_test=True, test_batch_size=10_000), splits)
    with pytest.raises(ValueError, match=r"protocol\.eval_every"):
        Protocol.from_config({"protocol": {"eval_every": 0}})


def test_dfr_and_models_without_epochs_follow_the_protocol(tiny_cfg, tmp_path: Path) -> None:
    dfr = runner.run(
        tiny_cfg(
            "model=dfr",
            "model.epochs=2",
            "model.latent_dim=8",
            "profile.enabled=false",
            "protocol=authors",
            "protocol.test_batch_size=4",
        ),
        tmp_path / "dfr",
    )
    assert dfr["status"] == "ok", dfr.get("traceback")
    assert [p["epoch"] for p in dfr["selection"]["curve"]] == [1, 2] and dfr["test_subset"]["batch_size"] == 4
    padim = runner.run(
        tiny_cfg("model=padim", "profile.enabled=false", "protocol=authors", "protocol.test_batch_size=4"),
        tmp_path / "padim",
    )
    assert padim["status"] == "ok", padim.get("traceback")
    assert padim["selection"]["applies"] is False  # no epochs to choose from: only the test cut applies
    assert "selection_s" not in padim["timing"] and "selection_s" in dfr["timing"]
    assert padim["data"]["test_normal"] + padim["data"]["test_anomalous"] == padim["test_subset"]["scored"]


def test_report_marks_authors_numbers_and_measures_the_gap(tiny_cfg, tmp_path: Path) -> None:
    results = tmp_path / "results"
    for protocol, seeds in (("clean", (0, 1)), ("authors", (0, 1)), ("select_on_test", (0,))):
        for seed in seeds:
            extra = ["protocol.test_batch_size=4"] if protocol == "authors" else []
            _run(
                tiny_cfg,
                results / protocol / f"seed{seed}",
                f"protocol={protocol}",
                f"seed={seed}",
                "model.epochs=2",
                *extra,
            )
    out = tmp_path / "reports"
    # what +experiment=protocol_gap's callback does when its multirun ends
    callback = compose(["+experiment=protocol_gap"], return_hydra_config=True).hydra.callbacks.report
    assert callback._target_ == "ulsad_bench.report.at_end.WriteReport"
    WriteReport(out=str(out)).on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(results)}}}))
    gap = (out / "protocol_gap_synthetic_ulsad.md").read_text()
    assert "| texture |" in gap and "TEST-SELECTED" in gap and (out / "protocol_gap_synthetic_ulsad.tex").is_file()
    row = next(line for line in gap.splitlines() if line.startswith("| texture |"))
    cells = [c.strip() for c in re.split(r"(?<!\\)\|", row.strip().strip("|"))]
    assert cells[-2] == cells[-1] == r"— \| — \| —"  # drop_last_test and quantiles_from_test were not run alone
    assert cells[4] != r"— \| — \| —"  # select_on_test alone was run
    assert (out / "figures" / "protocol_curve_synthetic_ulsad.png").is_file()
    table = (out / "metrics_synthetic.md").read_text()
    assert "AUTHORS' PROTOCOL: test-selected" in table and "TEST-SET SELECTION" in table
    clean_row = next(line for line in table.splitlines() if line.startswith("| ULSAD |"))
    authors_row = next(line for line in table.splitlines() if line.startswith("| ULSAD \\[AUTHORS"))
    marked = re.compile(r"<sup>[^<]*\bTS\b[^<]*</sup>")  # TS among a cell's marks (¶ follows: model.epochs=2)
    assert not marked.search(clean_row) and len(marked.findall(authors_row)) == 7  # every authors cell marked
    assert "**" not in authors_row  # never ranked against clean numbers
