"""The results of a DICOM series as DICOM objects a PACS stores and a viewer shows beside the
study: a Segmentation (SEG) and a Structured Report (SR, TID 1500), built with highdicom from
the source datasets, never by setting tags by hand.

- The SEG is BINARY with one segment, "tumour": SNOMED CT Neoplasm in the category
  Morphologically Abnormal Structure, algorithm type AUTOMATIC, its algorithm identification
  naming the kit's version and the served models. Its frames are the source slices' own
  (each mask frame references its source instance and shares the source's Frame of
  Reference and orientation: no reformat). Empty frames are omitted (highdicom's default,
  valid for SEG; a SEG whose mask is empty everywhere keeps one empty frame).
- The SR holds the finding (tumour present or absent) with the classifier's probability, the
  tumour volume in mm³ counted from the mask, references to the SEG and the source series,
  and the served models' identity (``ModelIdentity``) in its algorithm identification and in
  the device observer context, so the clinical record says what produced it.
- A series outside the models' intended use (``brainscan.intended_use``) gets no SEG, and an
  SR that says it was not analysed ("test not done") and why, one coded reason each (the
  kit's private coding scheme); analysed anyway for research, its SEG and SR say so.

Nothing here reads patient names or IDs into messages: objects are named by UIDs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainscan import contract
from brainscan.client.imaging.volumes import Volume, VolumeError, tumour_volume_mm3
from brainscan.identity import ModelIdentity
from brainscan.intended_use import CODE_MEANINGS, CODING_SCHEME, Verdict

MANUFACTURER = "brainscan"
SEG_SERIES_NUMBER = 9101
SR_SERIES_NUMBER = 9102
SERIES_DESCRIPTION_PREFIX = "brainscan"  # SEG and SR series descriptions start with it
OUTSIDE_MARK = "OUTSIDE INTENDED USE (research)"  # in the descriptions of results for refused series


class DicomResultError(VolumeError):
    """The SEG or SR of a series cannot be built; the message names the series and why."""


@dataclass
class SeriesResults:
    seg: object  # highdicom.seg.Segmentation
    sr: object  # highdicom.sr.Comprehensive3DSR
    tumour_volume_mm3: float


# Type 2 attributes of the patient and study that a SEG or SR copies from its source: some
# exporters leave them out; the results carry them empty then (valid for Type 2)
TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def header_datasets(files: list[Path]) -> list:
    """The files' datasets without their pixel data, with the Type 2 attributes results copy
    present (empty where the source leaves them out)."""
    import pydicom

    datasets = [pydicom.dcmread(str(path), stop_before_pixels=True, force=True) for path in files]
    for ds in datasets:
        for keyword in TYPE2_COPIED:
            if keyword not in ds:
                setattr(ds, keyword, "")
    return datasets


def _source_datasets(volume: Volume) -> list:
    """The source datasets in the volume's slice order (``header_datasets``)."""
    if not volume.sources:
        raise DicomResultError(f"{volume.source}: not a DICOM series, no SEG to write")
    files = list(dict.fromkeys(path for path, _ in volume.sources))
    datasets = dict(zip(files, header_datasets(files)))
    if len(files) == 1 and len(volume.sources) > 1:  # one enhanced multi-frame image
        return [datasets[files[0]]]
    if len(files) != len(volume.sources):
        raise DicomResultError(
            f"{volume.source}: a series mixing multi-frame and single-frame files; no SEG written (the NIfTI mask is)"
        )
    return [datasets[path] for path, _ in volume.sources]


def _frames_in_source_order(volume: Volume, mask: np.ndarray) -> np.ndarray:
    """The mask as frames of the source slices: [slice, row, column] (the volume holds
    voxel [column, row, slice]); multi-frame sources in their frame order."""
    frames = np.transpose(mask, (2, 1, 0)).astype(np.uint8)
    if len({path for path, _ in volume.sources}) == 1 and len(volume.sources) > 1:
        order = np.argsort([number for _, number in volume.sources])
        frames = frames[order]
    return np.ascontiguousarray(frames)


def algorithm(identity: ModelIdentity):
    from highdicom import AlgorithmIdentificationSequence
    from pydicom.sr.codedict import codes

    return AlgorithmIdentificationSequence(
        name="brainscan tumour segmentation",
        version=f"{identity.kit} models {identity.digest}",
        family=codes.cid7162.ArtificialIntelligence,
        parameters={"served models": "; ".join(identity.describe())},
    )


def build_seg(
    volume: Volume, mask: np.ndarray, identity: ModelIdentity, datasets: list | None = None, outside: bool = False
):
    """The DICOM SEG of ``mask`` (the volume's own voxel grid, 0/1) on the series' slices;
    ``outside``: of a series outside the intended use, analysed for research (said in its
    series and content descriptions)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    datasets = datasets if datasets is not None else _source_datasets(volume)
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="tumour",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm(identity),
        display_color=hd.color.CIELabColor(53.2, 80.1, 67.2),
    )
    try:
        seg = hd.seg.Segmentation(
            source_images=datasets,
            pixel_array=_frames_in_source_order(volume, mask),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[segment],
            series_instance_uid=generate_uid(),
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name="brainscan tumour segmentation",
            software_versions=identity.kit,
            device_serial_number=identity.digest,
            series_description=f"{SERIES_DESCRIPTION_PREFIX} tumour SEG" + (f", {OUTSIDE_MARK}" if outside else ""),
            content_description="tumour mask, outside intended use" if outside else "tumour mask",
            content_label="TUMOUR",
            omit_empty_frames=True,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        series = getattr(datasets[0], "SeriesInstanceUID", volume.source)
        raise DicomResultError(f"series {series}: cannot build the SEG ({exc})") from None
    _segment_in_each_frame(seg)
    return seg


def _segment_in_each_frame(seg) -> None:
    """Move the Segment Identification from the shared functional groups into every frame.

    DICOM allows either place. highdicom shares it when there is one segment; dwv (0.36) reads
    it only per frame and otherwise draws no mask, and per-frame is what most SEG readers expect.
    """
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "SegmentIdentificationSequence" not in shared:
        return
    identification = shared.SegmentIdentificationSequence
    del shared.SegmentIdentificationSequence
    for frame in seg.PerFrameFunctionalGroupsSequence:
        frame.SegmentIdentificationSequence = copy.deepcopy(identification)


def _observation(identity: ModelIdentity):
    """What produced a report: the algorithm, and the device as the observer."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    algorithm_id = hd.sr.AlgorithmIdentification(
        name="brainscan", version=f"{identity.kit} models {identity.digest}", parameters=identity.describe()
    )
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(),
        name="brainscan",
        manufacturer_name=MANUFACTURER,
        model_name=f"served models {identity.digest}",
        serial_number=identity.digest,
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    return algorithm_id, context


def _coded(code: str, meaning: str):
    import highdicom as hd

    return hd.sr.CodedConcept(code, CODING_SCHEME, meaning[:64])


# the kit's concepts for what the intended use says (private coding scheme, CODING_SCHEME)
INTENDED_USE_CONCEPT = ("intended-use", "Intended use of the automated analysis")
REASON_CONCEPT = ("reason", "Reason outside the intended use")
OUTSIDE = ("outside", "Outside the intended use, analysed for research")


def _intended_use_evaluations(verdict: Verdict | None, analysed: bool) -> list:
    """Qualitative evaluations saying why the series is outside the intended use: one per
    reason, coded, and whether it was analysed anyway (research) or not at all."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if verdict is None or verdict.accepted:
        return []
    state = _coded(*OUTSIDE) if analysed else codes.SCT.TestNotDone
    found = [hd.sr.QualitativeEvaluation(name=_coded(*INTENDED_USE_CONCEPT), value=state)]
    for reason in verdict.reasons:
        found.append(
            hd.sr.QualitativeEvaluation(
                name=_coded(*REASON_CONCEPT), value=_coded(str(reason.code), CODE_MEANINGS[reason.code])
            )
        )
    return found


def _report(datasets: list, content, evidence: list, description: str, identity: ModelIdentity, where: object):
    """The Comprehensive 3D SR of a TID 1500 report (observation context, one measurement
    group), naming the served models' digest as its device serial number (what a later run
    looks for to skip a series already answered), and the kit's coding scheme."""
    import highdicom as hd
    from highdicom.coding_schemes import CodingSchemeIdentificationItem
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    report = hd.sr.MeasurementReport(
        observation_context=content[0],
        procedure_reported=codes.cid100.MRIUnspecifiedBodyRegion,
        imaging_measurements=[content[1]],
    )
    try:
        return hd.sr.Comprehensive3DSR(
            evidence=evidence,
            content=report[0],
            series_instance_uid=generate_uid(),
            series_number=SR_SERIES_NUMBER,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            is_complete=True,
            series_description=description[:64],
            manufacturer_model_name="brainscan tumour report",
            software_versions=identity.kit,
            device_serial_number=identity.digest,
            coding_schemes=[
                CodingSchemeIdentificationItem(
                    CODING_SCHEME, name="brainscan intended-use codes", responsible_organization=MANUFACTURER
                )
            ],
        )
    except (ValueError, TypeError, AttributeError) as exc:
        series = getattr(datasets[0], "SeriesInstanceUID", where)
        raise DicomResultError(f"series {series}: cannot build the SR ({exc})") from None


def build_sr(
    volume: Volume,
    seg,
    probability: float,
    mask: np.ndarray,
    identity: ModelIdentity,
    datasets: list | None = None,
    verdict: Verdict | None = None,
):
    """The TID 1500 report of one series: the finding as the classifier decided it (present
    when the series' highest slice probability is above contract.DECISION_THRESHOLD, as
    `predict` labels it), that probability, the tumour volume counted from the mask,
    references to the SEG and the source series, and what produced them. With a refused
    ``verdict`` (analysed anyway, for research), the reasons it is outside the intended use."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    datasets = datasets if datasets is not None else _source_datasets(volume)
    volume_mm3 = tumour_volume_mm3(volume, mask)
    present = probability > contract.DECISION_THRESHOLD
    algorithm_id, context = _observation(identity)
    finding = hd.sr.QualitativeEvaluation(
        name=codes.DCM.Finding, value=codes.SCT.Present if present else codes.SCT.Absent
    )
    measurements = [
        hd.sr.Measurement(
            name=codes.SCT.Volume, value=volume_mm3, unit=codes.UCUM.CubicMillimeter, algorithm_id=algorithm_id
        ),
        hd.sr.Measurement(
            name=codes.DCM.Probability,
            value=round(float(probability), 6),
            unit=hd.sr.CodedConcept("1", "UCUM", "no units"),
            algorithm_id=algorithm_id,
        ),
    ]
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(identifier="tumour", uid=generate_uid()),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=1,
            source_series=hd.sr.SourceSeriesForSegmentation(str(datasets[0].SeriesInstanceUID)),
        ),
        finding_type=codes.SCT.Neoplasm,
        algorithm_id=algorithm_id,
        measurements=measurements,
        qualitative_evaluations=[finding, *_intended_use_evaluations(verdict, analysed=True)],
    )
    outside = verdict is not None and not verdict.accepted
    description = f"{SERIES_DESCRIPTION_PREFIX} tumour report" + (f", {OUTSIDE_MARK}" if outside else "")
    return _report(datasets, (context, group), [*datasets, seg], description, identity, volume.source)


def build_not_analysed_sr(datasets: list, verdict: Verdict, identity: ModelIdentity, where: object = ""):
    """The report of a series outside the intended use, which got no SEG: TID 1500 with the
    finding "test not done", one coded reason per refusal, and what decided it, so the
    radiologist sees that the automated analysis did not run on this series, and why."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    algorithm_id, context = _observation(identity)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(identifier="intended use", uid=generate_uid()),
        finding_type=codes.SCT.Neoplasm,
        algorithm_id=algorithm_id,
        qualitative_evaluations=_intended_use_evaluations(verdict, analysed=False),
    )
    description = f"{SERIES_DESCRIPTION_PREFIX} not analysed: {', '.join(verdict.codes)}"
    return _report(datasets, (context, group), list(datasets), description, identity, where)


def series_results(
    volume: Volume, mask: np.ndarray, probability: float, identity: ModelIdentity, verdict: Verdict | None = None
) -> SeriesResults:
    """The SEG and SR of an analysed series; a ``verdict`` that refused it (analysed anyway,
    for research) marks both as outside the intended use."""
    datasets = _source_datasets(volume)
    seg = build_seg(volume, mask, identity, datasets, outside=verdict is not None and not verdict.accepted)
    sr = build_sr(volume, seg, probability, mask, identity, datasets, verdict)
    return SeriesResults(seg, sr, tumour_volume_mm3(volume, mask))


def not_analysed_results(files: list[Path], verdict: Verdict, identity: ModelIdentity):
    """The SR of a series refused before any pixel was read: from its files' headers."""
    return build_not_analysed_sr(header_datasets(files), verdict, identity, files[0].parent if files else "")


def write_dataset(path: Path, dataset) -> None:
    """A DICOM object to a Part-10 file, atomically."""
    from brainscan.atomic import write_atomic

    write_atomic(Path(path), lambda tmp: dataset.save_as(tmp, enforce_file_format=True))
