"""The hospital integration: a PACS over DICOMweb (dicomweb), the DICOM node `brainscan listen`
(listener, spool, node_*), the IHE ATNA audit (atna, atna_events), and their commands (cli)."""
