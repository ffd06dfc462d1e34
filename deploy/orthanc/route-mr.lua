-- Orthanc: send each MR series to the brainscan node (`brainscan listen`) once it is stable,
-- that is when no new instance of it has arrived for "StableAge" seconds. The SEG and SR that
-- come back are not MR, so they are not sent again.
-- In Orthanc's configuration: "LuaScripts": ["/etc/orthanc/route-mr.lua"], "StableAge": 60,
-- and the node under "DicomModalities": {"brainscan": ["BRAINSCAN", "<host>", 11112]}.
--
-- The send goes through Orthanc's REST route as an asynchronous job: Lua's own
-- SendToModality(seriesId, ...) failed in Orthanc 1.10.1 with "Unable to read attachment
-- dicom of instance ..." and sent nothing (tests/test_pacs.py runs this script).
function OnStableSeries(seriesId, tags, metadata)
  if tags['Modality'] == 'MR' then
    RestApiPost('/modalities/brainscan/store',
                DumpJson({ Resources = { seriesId }, Asynchronous = true }, true))
  end
end
