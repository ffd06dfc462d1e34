"""The batch engine: concurrent, ordered, resumable runs over many inputs (engine), an answered
input's record and outputs (records), predict's printed output (output), which slices the
segmenter runs on (series_gate), and the JSON-lines audit trail (audit)."""
