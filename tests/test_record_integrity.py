"""What resume and the records compare: every file a job reads, every different tree, sealed records."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import mvtec_cfg, tiny_mvtec
from tests.test_datasets import _dataset, make_visa
from tests.test_report import write_run
from ulsad_bench import environment, runner
from ulsad_bench.data import build_splits
from ulsad_bench.data.content import forget
from ulsad_bench.records import RECORD_NAME, inspect_record, write_record
from ulsad_bench.report import build_report


def _edit_keeping_stat(path: Path, old: str, new: str) -> None:
    """Replace ``old`` by ``new`` (same length) in a text file, its modification time restored."""
    assert len(old) == len(new)
    stat = path.stat()
    path.write_text(path.read_text().replace(old, new))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


# ----------------------------------------------------------------------------- every file a job reads


def test_the_loco_defects_config_is_in_the_fingerprint_and_resume_reruns(
    tmp_path: Path, shared_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tiny_mvtec(tmp_path / "data")
    config = root / "bottle" / "defects_config.json"
    config.write_text(json.dumps([{"defect_name": "dent", "pixel_value": 255, "saturation_threshold": 1.0}]))
    run_dir = tmp_path / "run"
    first = runner.run(mvtec_cfg(root, shared_cache), run_dir)
    assert first["status"] == "ok" and first["data_fingerprint"]["splits"]["inputs"]["files"] == 1
    config.write_text(config.read_text().replace('"saturation_threshold": 1.0', '"saturation_threshold": 0.05'))
    with caplog.at_level(logging.INFO, logger="ulsad_bench"):
        second = runner.run(mvtec_cfg(root, shared_cache), run_dir)
    assert second["started"] != first["started"]
    assert "data changed: inputs: 1 files with other sizes or modification times" in caplog.text


def test_visas_split_csv_is_in_the_fingerprint(tmp_path: Path) -> None:
    make_visa(tmp_path)
    cfg = _dataset("visa", tmp_path, "dataset.category=capsules")
    before = build_splits(cfg, tmp_path).fingerprint()
    assert before["splits"]["inputs"]["files"] == 1
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    shutil.copytree(tmp_path, moved, copy_function=shutil.copy2)  # the same files elsewhere (another mount)
    assert build_splits(_dataset("visa", moved, "dataset.category=capsules"), moved).fingerprint() == before
    csv = tmp_path / "split_csv" / "1cls.csv"
    csv.write_text(csv.read_text() + "\n")
    assert build_splits(cfg, tmp_path).fingerprint()["sha256"] != before["sha256"]


def test_resume_content_finds_a_same_size_rewrite_that_strict_resume_cannot(
    tmp_path: Path, shared_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tiny_mvtec(tmp_path / "data")
    image = root / "bottle" / "test" / "good" / "0.png"
    Image.open(image).copy().save(image, compress_level=0)
    run_dir = tmp_path / "run"
    first = runner.run(mvtec_cfg(root, shared_cache), run_dir)
    assert first["data_fingerprint"]["content_sha256"]  # recorded: the caches read the bytes anyway
    stat = image.stat()
    Image.new("RGB", (32, 32), (3, 3, 3)).save(image, compress_level=0)
    assert image.stat().st_size == stat.st_size
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    forget()
    assert runner.run(mvtec_cfg(root, shared_cache), run_dir)["started"] == first["started"]  # strict: stat only
    with caplog.at_level(logging.INFO, logger="ulsad_bench"):
        second = runner.run(mvtec_cfg(root, shared_cache, "resume=content"), run_dir)
    assert second["started"] != first["started"] and "data changed: test: 10 files with other bytes" in caplog.text
    assert runner.run(mvtec_cfg(root, shared_cache, "resume=content"), run_dir)["started"] == second["started"]


# ----------------------------------------------------------------------------- every different tree


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True, capture_output=True
    )


def test_every_different_uncommitted_tree_is_another_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    (repo / "ulsad_bench").mkdir(parents=True)
    code = repo / "ulsad_bench" / "model.py"
    code.write_text("score = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first")
    monkeypatch.setattr(environment, "REPO", repo)
    clean = environment.git_commit()
    assert clean is not None and "dirty" not in clean
    seen = {clean}
    for edit in ("score = 2\n", "score = -2\n"):  # the second edit of an already-dirty tree is seen too
        code.write_text(edit)
        seen.add(environment.git_commit())
    (repo / "ulsad_bench" / "new.py").write_text("x = 1\n")  # an untracked module
    seen.add(environment.git_commit())
    (repo / "notes.txt").write_text("not code")  # untracked outside the code folders: no new version
    seen_again = environment.git_commit()
    assert len(seen) == 4 and seen_again in seen
    assert all(v.startswith(clean + "-dirty-") for v in seen - {clean})


# ----------------------------------------------------------------------------- sealed records

PADIM = {"model": "padim", "dataset": "synthetic", "category": "texture"}


def _tables(tmp_path: Path) -> str:
    build_report(tmp_path / "out", tmp_path / "reports", figures=False)
    return (tmp_path / "reports" / "table01_image_auroc.md").read_text()


def test_a_hand_edited_record_is_malformed_and_never_published(tmp_path: Path) -> None:
    write_run(tmp_path / "out", model="padim", dataset="synthetic", category="texture", seed=1, image_auroc=0.7)
    run = write_run(
        tmp_path / "out", model="padim", dataset="synthetic", category="texture", seed=0, image_auroc=0.6667
    )
    path = run / RECORD_NAME
    assert inspect_record(path).ok
    record = json.loads(path.read_text())
    record["model"] = "ulsad"
    path.write_text(json.dumps(record, indent=2))
    read = inspect_record(path)
    assert read.record is None and "edited after it was written" in str(read.problem)
    table = _tables(tmp_path)
    assert "ULSAD" not in table and "PaDiM" in table
    index = (tmp_path / "reports" / "README.md").read_text()
    assert "edited after it was written" in index
    listed = subprocess.run(
        [".venv/bin/python", "-m", "ulsad_bench.records", str(tmp_path / "out")], capture_output=True, text=True
    ).stdout
    assert "[malformed]" in listed and "[ok] ulsad" not in listed


@pytest.mark.parametrize(
    "edit, problem",
    [
        ({"model": "ulsad"}, "identity disagrees with its stored config: model='ulsad' but its config says 'padim'"),
        ({"seed": 3}, "seed=3 but its config says 0"),
        ({"config_hash": "0123456789abcdef"}, "is not the hash of its stored config"),
    ],
)
def test_a_resealed_record_that_disagrees_with_its_config_is_malformed(
    tmp_path: Path, edit: dict, problem: str
) -> None:
    run = write_run(
        tmp_path / "out", model="padim", dataset="synthetic", category="texture", seed=0, image_auroc=0.6667
    )
    record = json.loads((run / RECORD_NAME).read_text())
    write_record(run, {**record, **edit})  # sealed again: the digest alone cannot tell
    read = inspect_record(run / RECORD_NAME)
    assert read.record is None and problem in str(read.problem)


def test_a_record_without_its_digest_is_malformed(tmp_path: Path) -> None:
    run = write_run(tmp_path / "out", model="padim", dataset="synthetic", category="texture", seed=0, image_auroc=0.6)
    record = json.loads((run / RECORD_NAME).read_text())
    del record["record_digest"]
    (run / RECORD_NAME).write_text(json.dumps(record))
    assert "no record_digest" in str(inspect_record(run / RECORD_NAME).problem)


def test_a_models_own_files_and_a_weights_file_are_in_the_fingerprint(tiny_cfg, tmp_path: Path) -> None:
    from ulsad_bench.resume import list_splits
    from ulsad_bench.spec import JobSpec

    penalty = tmp_path / "penalty"
    penalty.mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8), (i, i, i)).save(penalty / f"{i}.png")
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"w" * 64)
    cfg = tiny_cfg("model=efficientad", f"model.penalty_dir={penalty}", "model.penalty=imagenette")
    spec = JobSpec.from_config(cfg)
    before = list_splits(spec).fingerprint
    dataset_inputs = len(spec.data.splits().inputs)
    assert before is not None and before["splits"]["inputs"]["files"] == dataset_inputs + 2
    Image.new("RGB", (8, 8), (200, 0, 0)).save(penalty / "0.png")
    after = list_splits(spec).fingerprint
    assert after is not None and after["splits"]["inputs"]["sha256"] != before["splits"]["inputs"]["sha256"]
    with_file = JobSpec.from_config(tiny_cfg("model=padim", f"backbone.weights={weights}"))
    assert with_file.input_files() == (weights.resolve(),)


def test_a_record_of_an_earlier_schema_stays_a_result_listed_as_unsealed(tmp_path: Path) -> None:
    run = write_run(tmp_path / "out", **PADIM, seed=0, image_auroc=0.6)
    legacy = json.loads((run / RECORD_NAME).read_text())
    del legacy["record_digest"]
    legacy["schema_version"] = 2
    (run / RECORD_NAME).write_text(json.dumps(legacy))
    assert inspect_record(run / RECORD_NAME).ok  # a re-run that fails keeps it (it is a good record)
    report = build_report(tmp_path / "out", tmp_path / "reports", figures=False)
    assert report.results.unsealed and "PaDiM" in _md_table(tmp_path)
    assert "Records written before records were sealed" in (tmp_path / "reports" / "README.md").read_text()
    legacy["model"] = "ulsad"  # an older record edited by hand: its identity still gives it away
    (run / RECORD_NAME).write_text(json.dumps(legacy))
    assert "identity disagrees" in str(inspect_record(run / RECORD_NAME).problem)


def _md_table(tmp_path: Path) -> str:
    return (tmp_path / "reports" / "table01_image_auroc.md").read_text()


def test_listing_a_job_whose_model_files_are_missing_leaves_the_refusal_to_the_job(tiny_cfg) -> None:
    from ulsad_bench.resume import list_splits
    from ulsad_bench.spec import JobSpec

    spec = JobSpec.from_config(tiny_cfg("model=efficientad", "model.teacher=pretrained"))  # no teacher file given
    listing = list_splits(spec)
    assert listing.fingerprint is not None and spec.input_files() == ()
