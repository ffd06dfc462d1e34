"""Storing results back over DICOMweb when the PACS drops some of them: a real Orthanc whose
filter (a Lua script written here) refuses the first SEG it is sent. Orthanc 1.10.1's STOW-RS
answer still lists that SEG as stored; `predict --dicomweb --store` checks with QIDO-RS
that the PACS holds what it said it stored, finds the SEG missing, tries again, and the
record and the audit line count the tries."""

from __future__ import annotations

import json

import pytest
from dicom_cases import brainscan, lesion_images
from orthanc import Orthanc
from volume_files import write_mr_series

pytestmark = pytest.mark.server

REFUSE_FIRST_SEG = """
refused = 0
function ReceivedInstanceFilter(dicom, origin, info)
  if dicom.Modality == 'SEG' and refused < 1 then
    refused = refused + 1
    return false
  end
  return true
end
"""


def test_a_seg_the_pacs_refuses_once_is_stored_on_the_next_try_and_counted(bright_server, tmp_path):
    script = tmp_path / "refuse-first-seg.lua"
    script.write_text(REFUSE_FIRST_SEG)
    pacs = Orthanc(tmp_path / "orthanc", lua_scripts=[script]).start()
    try:
        written = write_mr_series(tmp_path / "series", lesion_images(6), number=60)
        pacs.upload(sorted((tmp_path / "series").glob("*.dcm")))
        study = str(written[0].StudyInstanceUID)
        out = tmp_path / "out"
        result = brainscan(
            "predict", "--dicomweb", pacs.dicomweb, "--study", study, "--store", "--url", bright_server.grpc_url,
            "--out", out, "--format", "json",
        )  # fmt: skip
        study_id = pacs.find_study(study)
        kinds = sorted(
            pacs.get(f"/series/{s}")["MainDicomTags"]["Modality"] for s in pacs.get(f"/studies/{study_id}")["Series"]
        )
    finally:
        pacs.stop()
    assert result.returncode == 0, result.stderr
    # Orthanc 1.10 answers success for the SEG its filter dropped: only the check after finds it missing
    assert "answered that it stored the SEG and SR" in result.stderr and "trying again" in result.stderr
    assert kinds == ["MR", "SEG", "SR"]
    (record,) = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")] or [
        json.loads(result.stdout)
    ]
    assert record["stored"] == pacs.dicomweb and record["store_attempts"] == 2
    (line,) = [json.loads(x) for x in (out / "audit.jsonl").read_text().splitlines()]
    assert line["outcome"] == "ok" and line["store_attempts"] == 2
