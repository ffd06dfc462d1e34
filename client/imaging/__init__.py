"""Imaging files in and out: inputs found under paths (files), NIfTI volumes and mask volumes
(volumes), DICOM series (dicom), and the DICOM SEG and SR written for them (dicom_results)."""
