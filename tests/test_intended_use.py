"""The intended-use gate as users meet it: series refused from their DICOM headers with a
stable code and an SR that says they were not analysed, images refused for their pixels by
the score the served classifier computes (through a real Triton), a site's rules file, the
research option that marks every output, one tumour volume everywhere, and a gate that
follows the data a user trains on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import TINY_SIZES, encode
from dicom_cases import REFUSED_SERIES, brainscan, dciodvfy_errors, lesion_images, sr_content, write_refused_series
from PIL import Image
from volume_files import write_mr_series

from brainscan import contract
from brainscan.intended_use import CODE_MEANINGS, Code, IntendedUse, PixelGate, RulesError
from brainscan.site_rules import narrow
from brainscan.train.ood import ENCODINGS, OUT_OF_DISTRIBUTION

pytestmark = pytest.mark.server


def _records(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


# --- series refused from their headers, before any pixel is sent ------------------------------------


def test_series_outside_the_intended_use_get_a_coded_not_analysed_sr_and_no_seg(bright_server, tmp_path):
    """CT, a localizer, a sagittal MR series, BodyPartExamined CHEST and DERIVED images: each
    refused with its code, exit 0; an SR "not analysed" (valid for dciodvfy) with the code and
    no SEG or mask; the audit line carries the code. An axial MR brain series beside them is
    analysed as before."""
    inbox = tmp_path / "inbox"
    for number, name in enumerate(REFUSED_SERIES, start=20):
        write_refused_series(inbox / name, name, number)
    write_mr_series(inbox / "axial", lesion_images(5), number=30)
    out = tmp_path / "out"
    result = brainscan("predict", inbox, "--url", bright_server.grpc_url, "--out", out, "--format", "json")
    assert result.returncode == 0, result.stderr
    records = {Path(r["file"].split(" [")[0]).name: r for r in _records(result)}
    assert set(records) == {*REFUSED_SERIES, "axial"}
    assert "5 refused (outside the intended use: not analysed)" in result.stderr
    for name, (_, _, code) in REFUSED_SERIES.items():
        record = records[name]
        use = record["intended_use"]
        assert record["label"] == "not analysed" and use["accepted"] is False, record
        assert [r["code"] for r in use["reasons"]] == [code] and use["score"] is None
        outputs = [Path(p) for p in record["outputs"]]
        assert [p.suffixes[-2:] for p in outputs] == [[".refused", ".json"], [".sr", ".dcm"]]
        assert not list(out.glob(f"{name}_*.seg.dcm")) and not list(out.glob(f"{name}_*.mask.nii.gz"))
        assert dciodvfy_errors(outputs[1]) == []
        content = sr_content(outputs[1])
        assert content["Intended use of the automated analysis"] == "Test not done (qualifier value)"
        assert content["Reason outside the intended use"] == CODE_MEANINGS[Code(code)]
        sr = pydicom.dcmread(outputs[1])
        assert sr.SeriesDescription == f"brainscan not analysed: {code}"
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        assert evidence.SeriesInstanceUID == record["series"]  # it answers for the refused series
    axial = records["axial"]
    assert axial["intended_use"]["accepted"] is True and axial["label"] in ("tumour", "no tumour")
    assert any(p.endswith(".seg.dcm") for p in axial["outputs"])
    audit = {a["series"]: a for a in map(json.loads, (out / "audit.jsonl").read_text().splitlines())}
    for name, (_, _, code) in REFUSED_SERIES.items():
        assert audit[records[name]["series"]]["outcome"] == "not-analysed"
        assert audit[records[name]["series"]]["intended_use"] == [code]
    assert audit[axial["series"]]["outcome"] == "ok" and "intended_use" not in audit[axial["series"]]
    # a second run finds every series done, refused ones included: nothing is sent again
    again = brainscan(
        "predict", inbox, "--url", bright_server.grpc_url, "--out", out, "--skip-existing", "--format", "json"
    )
    assert again.returncode == 0 and "6 skipped" in again.stderr, again.stderr


def test_the_research_option_analyses_a_refused_series_and_marks_every_output(bright_server, tmp_path):
    write_refused_series(tmp_path / "ct", "ct", 40)
    out = tmp_path / "out"
    result = brainscan(
        "predict", tmp_path / "ct", "--url", bright_server.grpc_url, "--out", out, "--format", "json",
        "--outside-intended-use",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (record,) = _records(result)
    assert record["outside_intended_use"] is True and record["intended_use"]["accepted"] is False
    assert "1 outside the intended use analysed for research" in result.stderr
    seg = pydicom.dcmread(next(p for p in record["outputs"] if p.endswith(".seg.dcm")))
    sr_path = next(p for p in record["outputs"] if p.endswith(".sr.dcm"))
    assert (
        "OUTSIDE INTENDED USE" in seg.SeriesDescription
        and "OUTSIDE INTENDED USE" in pydicom.dcmread(sr_path).SeriesDescription
    )
    assert sr_content(Path(sr_path))["Reason outside the intended use"] == "Modality outside the intended use"
    assert dciodvfy_errors(Path(sr_path)) == []
    import nibabel

    mask = nibabel.load(next(p for p in record["outputs"] if p.endswith(".mask.nii.gz")))
    assert b"OUTSIDE INTENDED USE" in bytes(mask.header["descrip"])
    assert json.loads((out / Path(record["outputs"][1]).name).read_text())["outside_intended_use"] is True


# --- one tumour volume -----------------------------------------------------------------------------


def test_the_tumour_volume_is_one_number_in_the_table_json_summary_and_sr(bright_server, tmp_path):
    """A series with a slice missing (so the affine's mean step is longer than the slices'
    spacing): 128 x 128 slices, the segmenter's own size, so the bright-threshold segmenter's
    mask is exactly the hand-drawn box; the volume worked out by hand is the box's pixels on
    the three lesion slices times the pixel area and the spacing between slices."""
    images = []
    for k in range(8):
        image = np.full((128, 128), 300, np.uint16)
        if k in (2, 3, 4):
            image[40:60, 30:60] = 1500  # 20 x 30 pixels
        images.append(image)
    write_mr_series(tmp_path / "series", images, pixel_spacing=(0.9, 0.8), thickness=3.0, skip=(6,))
    by_hand_mm3 = 3 * 20 * 30 * 0.9 * 0.8 * 3.0  # 3888 mm³; the mean step would make it 7/6 of that
    json_run = brainscan(
        "predict", tmp_path / "series", "--url", bright_server.grpc_url, "--out", tmp_path / "a", "--format", "json"
    )
    assert json_run.returncode == 0, json_run.stderr
    (record,) = _records(json_run)
    assert record["tumour_volume_ml"] == pytest.approx(by_hand_mm3 / 1000, abs=1e-4)
    summary = json.loads(next(Path(p) for p in record["outputs"] if p.endswith(".summary.json")).read_text())
    assert summary["tumour_volume_ml"] == pytest.approx(by_hand_mm3 / 1000, abs=1e-4)
    sr = sr_content(next(Path(p) for p in record["outputs"] if p.endswith(".sr.dcm")))
    assert sr["Volume"] == pytest.approx(by_hand_mm3, abs=0.1)
    table = brainscan("predict", tmp_path / "series", "--url", bright_server.grpc_url, "--out", tmp_path / "b")
    assert table.returncode == 0 and f"volume: {by_hand_mm3 / 1000:.2f} ml" in table.stdout, table.stdout


# --- the pixel gate, through the real server -------------------------------------------------------


def _validation_slices(runs) -> list[Path]:
    from brainscan.train.training import load_run, split_samples

    return [s.image for s in split_samples(load_run(runs["classifier"]))["val"]]


def test_images_unlike_the_training_slices_are_refused_for_their_pixels(gated_server, runs, tmp_path):
    """The tiny networks' gate, fitted on their own training slices: the validation slices
    and other encodings of the clearest of them pass; noise, a blank image, a photograph and
    an inverted slice are refused with the code "pixels" and get no mask."""
    from brainscan.train.ood import bundled_photographs

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    rng = np.random.default_rng(5)
    (inbox / "noise.png").write_bytes(encode((rng.uniform(0, 255, (256, 256))).astype(np.uint8), "PNG"))
    (inbox / "blank.png").write_bytes(encode(np.full((256, 256), 90, np.uint8), "PNG"))
    photo = Image.fromarray(bundled_photographs()[0]).resize((256, 256)).convert("L")
    (inbox / "photo.jpg").write_bytes(encode(np.asarray(photo), "JPEG"))
    validation = _validation_slices(runs)
    slice_pixels = np.asarray(Image.open(validation[0]))
    (inbox / "inverted.png").write_bytes(encode((255 - slice_pixels).astype(np.uint8), "PNG"))
    given = brainscan(
        "predict", *validation, "--url", gated_server.grpc_url, "--out", tmp_path / "given", "--format", "json"
    )
    assert given.returncode == 0, given.stderr
    scores = {Path(r["file"]).name: r["intended_use"]["score"] for r in _records(given)}
    assert all(r["intended_use"]["accepted"] for r in _records(given)), scores  # the limit is set on them
    clearest = min(validation, key=lambda p: scores[p.name])
    pixels = np.asarray(Image.open(clearest))
    (inbox / "clearest.16bit.png").write_bytes(encode(pixels.astype(np.uint16) * 257, "PNG"))
    (inbox / "clearest.jpg").write_bytes(encode(pixels, "JPEG", quality=75))
    resized = Image.fromarray(pixels).resize((2 * pixels.shape[1], 2 * pixels.shape[0]), Image.BICUBIC)
    (inbox / "clearest.resized.png").write_bytes(encode(np.asarray(resized), "PNG"))
    out = tmp_path / "out"
    result = brainscan("predict", inbox, "--url", gated_server.grpc_url, "--out", out, "--format", "json")
    assert result.returncode == 0, result.stderr
    records = {Path(r["file"]).name: r for r in _records(result)}
    for name in ("noise.png", "blank.png", "photo.jpg", "inverted.png"):
        use = records[name]["intended_use"]
        assert not use["accepted"] and [r["code"] for r in use["reasons"]] == ["pixels"], (name, use)
        assert use["score"] > use["threshold"] == 1.0 and records[name]["probability"] is None
        assert not (out / f"{Path(name).stem}.mask.png").exists()
        assert (out / f"{Path(name).stem}.refused.json").exists()
    for name in ("clearest.16bit.png", "clearest.jpg", "clearest.resized.png"):
        assert records[name]["intended_use"]["accepted"], (name, records[name]["intended_use"], scores[clearest.name])
        assert (out / f"{Path(name).stem}.mask.png").exists()
    assert "4 refused (outside the intended use: not analysed)" in result.stderr


def test_health_and_the_repository_declare_the_intended_use(gated_server, server):
    """The repository of an exported run declares its intended use from the training run;
    one of a network without a fitted gate says it has none."""
    result = brainscan("health", "--url", gated_server.grpc_url, "--format", "json")
    assert result.returncode == 0, result.stderr
    use = IntendedUse.from_dict(json.loads(result.stdout)["intended_use"])
    assert use.modalities == ("MR",) and [str(p) for p in use.planes] == ["axial"]
    assert use.pixel_gate is not None and use.pixel_gate.threshold == 1.0
    assert use.pixel_gate.validation_accepted == 1.0 and use.pixel_gate.fitted_on == 24  # 4 patients x 6 slices
    assert use.image_side == (128, 1024)  # the phantom's 256-pixel slices: half to four times
    assert use.pixel_spacing_mm == (0.4465, 2.352)  # the phantom card's 0.893-1.176 mm, halved and doubled
    text = brainscan("doctor", "--repository", gated_server.repository)
    assert "intended use the classifier declares" in text.stdout and "pixel gate:" in text.stdout, text.stdout
    plain = json.loads(brainscan("health", "--url", server.grpc_url, "--format", "json").stdout)["intended_use"]
    assert plain["pixel_gate"] is None and plain["modalities"] == ["MR"]


# --- a site's rules file -----------------------------------------------------------------------


def test_a_rules_file_only_narrows_and_unknown_keys_exit_2(gated_server, runs, tmp_path):
    validation = _validation_slices(runs)[:2]
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"modalities": ["MR"], "pixel_threshold": 0.01}))
    narrowed = brainscan(
        "predict", *validation, "--url", gated_server.grpc_url, "--rules", rules, "--format", "json"
    )  # a site that takes nothing the gate is unsure of: every slice refused, not an error
    assert narrowed.returncode == 0, narrowed.stderr
    assert all(r["intended_use"]["threshold"] == 0.01 and not r["intended_use"]["accepted"] for r in _records(narrowed))
    for bad, words in (
        ({"modality": ["MR"]}, "unknown key(s) modality"),
        ({"modalities": ["MR", "CT"]}, "modalities CT is outside the models' intended use"),
        ({"pixel_threshold": 3.0}, "pixel_threshold 3 is above the models' 1"),
        ({"image_side": [16, 4096]}, "image_side [16, 4096] is wider than the models' intended use"),
    ):
        rules.write_text(json.dumps(bad))
        refused = brainscan("predict", *validation, "--url", gated_server.grpc_url, "--rules", rules)
        assert refused.returncode == 2 and words in refused.stderr, (bad, refused.stderr)
    rules.write_text("{not json")
    broken = brainscan("predict", *validation, "--url", "127.0.0.1:1", "--rules", rules)
    assert broken.returncode == 2 and "is not JSON" in broken.stderr  # before any server is asked


def test_narrowing_in_the_library_keeps_what_the_rules_do_not_name(tmp_path):
    gate = PixelGate("test", 1.0, 10, 5, 1.0)
    declared = IntendedUse(pixel_spacing_mm=(0.4, 2.4), image_side=(128, 1024), pixel_gate=gate)
    rules = tmp_path / "site.json"
    rules.write_text(
        json.dumps({"body_parts": ["BRAIN"], "pixel_spacing_mm": [0.5, 1.2], "refused_image_types": ["M"]})
    )
    site = narrow(declared, rules)
    assert site.body_parts == ("BRAIN",) and site.pixel_spacing_mm == (0.5, 1.2) and site.image_side == (128, 1024)
    assert site.refused_image_types == ("LOCALIZER", "DERIVED", "SECONDARY", "M") and site.pixel_gate == gate
    rules.write_text(json.dumps({"slices": [0, 5000]}))
    with pytest.raises(RulesError, match="wider than"):
        narrow(declared, rules)


# --- the gate follows the data a user trains on -------------------------------------------------


def test_a_classifier_trained_on_other_data_carries_a_gate_fitted_to_it(runs, onnx_models, tmp_path):
    """The tiny classifier trained again on the phantom rendered as head CT (`data phantom
    --look ct`, which declares CT in its dataset card): its intended use says CT, and its gate
    accepts its own validation slices and refuses the MR ones, where the MR-trained gate does
    the opposite."""
    from brainscan.export.onnx import export_run
    from brainscan.export.served_graph import run_outputs
    from brainscan.onnx_runtime import cpu_session
    from brainscan.preprocessing import decode_image, pixels
    from brainscan.train.phantom import write_phantom_dataset
    from brainscan.train.training import TrainConfig, train

    write_phantom_dataset(tmp_path / "ct", patients=6, seed=12, slices_per_patient=6, look="ct")
    train(
        TrainConfig(
            task="classifier", data=str(tmp_path / "ct"), out=str(tmp_path / "run"), size=TINY_SIZES["classifier"],
            epochs=2, batch_size=8, alpha=0.35, seed=3, steps_per_epoch=2,
        )
    )  # fmt: skip
    ct_onnx, (_, _, use) = export_run(tmp_path / "run", samples=4)
    assert use.modalities == ("CT",) and use.pixel_gate is not None
    assert json.loads((tmp_path / "run" / "intended_use.json").read_text())["modalities"] == ["CT"]

    def scores(onnx: Path, run: Path) -> np.ndarray:
        session = cpu_session(str(onnx))
        images = [pixels(decode_image(p.read_bytes())) for p in _validation_slices({"classifier": run})]
        return np.concatenate(run_outputs(session, images)[contract.OOD_SCORE]).ravel()

    mr_run, ct_run = runs["classifier"], tmp_path / "run"
    assert (scores(ct_onnx, ct_run) <= 1).all() and (scores(onnx_models["classifier"], mr_run) <= 1).all()
    assert (scores(ct_onnx, mr_run) > 1).all() and (scores(onnx_models["classifier"], ct_run) > 1).all()


def test_evaluate_prints_and_writes_the_gates_figures(gated_server, phantom_dir, tmp_path):
    """`brainscan evaluate`, as make demo ends, on small sets: every set measured through the
    server, noise, blank images and photographs refused with an AUROC of 1 against the test
    split, and the report written."""
    out = tmp_path / "evaluation"
    result = brainscan(
        "evaluate", "--data", phantom_dir, "--seed", "3", "--url", gated_server.grpc_url,
        "--set-size", "6", "--new-patients", "1", "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Intended-use gate through the server" in result.stdout and "Accuracy and mean Dice" in result.stdout
    report = json.loads((out / "report.json").read_text())
    sets = report["sets"]
    assert set(sets) == {"test", "new-seed", *OUT_OF_DISTRIBUTION, *ENCODINGS}
    assert sets["test"]["images"] == 6 and sets["new-seed"]["images"] == 10  # one test patient; 1 x 10 slices
    for name in ("noise", "blank", "photos"):
        assert sets[name]["refused"] == 1.0 and sets[name]["auroc"] == 1.0, (name, sets[name])
    assert report["intended_use"]["pixel_gate"]["threshold"] == 1.0
    assert (out / "report.md").read_text().startswith("# The served models: intended-use gate and accuracy")


def test_the_evaluation_table_says_which_target_a_run_missed():
    """Acceptance and refusal counted by hand: 97 of 100 test slices accepted is below the 99 %
    target and the table says NO and names the set; 98 of 100 new-cohort slices and 10 of 10
    noise images refused meet theirs; an encoding set has no target."""
    from brainscan.train.evaluation import Answered, figures, table

    def answered(name, kind, accepted, refused):
        scores = np.r_[np.full(accepted, 0.5), np.full(refused, 2.0)]
        return Answered(name, kind, scores, np.zeros(len(scores)))

    result = figures(
        [
            answered("test", "in-distribution", 97, 3),
            answered("new-seed", "in-distribution", 98, 2),
            answered("noise", "out-of-distribution", 0, 10),
            answered("png16", "encoding", 10, 0),
        ],
        threshold=1.0,
    )
    met = {name: row.get("target_met") for name, row in result["sets"].items()}
    assert met == {"test": False, "new-seed": True, "noise": True, "png16": None}
    rows = {line.split()[0]: line.split() for line in table(result).splitlines()[2:7]}
    assert rows["test"][3] == "97.0%" and rows["test"][-1] == "NO"
    assert rows["new-seed"][-1] == "yes" and rows["noise"][-1] == "yes"
    assert rows["png16"][-1] == "accepted"  # no target, nothing in the met column
    assert "below target: test (" in table(result)
