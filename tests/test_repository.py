"""Generated Triton configs: Triton's own ModelConfig schema, the served contract, the
ensemble wiring, and the committed production repository."""

from __future__ import annotations

from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from brainscan import contract
from brainscan.export.repository import (
    FLAVOURS,
    ORT_TRT_CACHE,
    WEIGHT_FILES,
    RepositoryError,
    RepositorySpec,
    model_configs,
    read_config,
    repository_files,
    to_model_config,
    validate_repository,
    write_repository,
)

COMMITTED = Path(__file__).resolve().parent.parent / "model_repository"


def test_committed_repository_is_exactly_what_the_writer_generates():
    expected = repository_files(RepositorySpec(flavour="tensorrt"))
    weights = set(WEIGHT_FILES.values())
    on_disk = {
        str(p.relative_to(COMMITTED)): p.read_bytes()
        for p in COMMITTED.rglob("*")
        if p.is_file() and p.name not in weights and p.suffix != ".json" and "__pycache__" not in p.parts
    }
    assert sorted(on_disk) == sorted(expected)
    for name, content in expected.items():
        assert on_disk[name] == content, (
            f"{name} differs: run `brainscan export repository --flavour tensorrt --repository model_repository`"
        )


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_every_flavour_keeps_the_served_contract(flavour, tmp_path):
    write_repository(tmp_path, flavour)
    configs = validate_repository(tmp_path)
    ensemble = configs[contract.ENSEMBLE]
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size > 0
    assert [(t.name, t.data_type, list(t.dims)) for t in ensemble.input] == [(contract.IMAGE, mc.TYPE_STRING, [1])]
    outputs = {t.name: (t.data_type, list(t.dims)) for t in ensemble.output}
    assert outputs == {
        contract.TUMOR_PROBABILITY: (mc.TYPE_FP32, [1]),
        contract.MASK: (mc.TYPE_UINT8, [-1, -1]),
        contract.OOD_SCORE: (mc.TYPE_FP32, [1]),
    }
    steps = [s.model_name for s in ensemble.ensemble_scheduling.step]
    assert steps == [contract.PREPROCESS, contract.CLASSIFIER, contract.SEGMENTER]
    # the ensemble and preprocess do not depend on the flavour, but for how many python
    # processes run (more where a GPU runs the networks), the largest image side (where a
    # TensorRT profile ends) and the largest batch (which a GPU allocates every input at)
    side = int(configs[contract.PREPROCESS].parameters[contract.MAX_SIDE_PARAMETER].string_value)
    batches = {config.max_batch_size for config in configs.values()}
    local = {name: to_model_config(c) for name, c in model_configs(RepositorySpec()).items()}
    for name in (contract.ENSEMBLE, contract.PREPROCESS):
        config = configs[name]
        for each in (config, local[name]):
            each.ClearField("instance_group"), each.ClearField("model_warmup")
            each.parameters.pop(contract.MAX_SIDE_PARAMETER, None), each.ClearField("max_batch_size")
        assert config == local[name], name
    on_gpu = flavour == "tensorrt"
    assert side == (contract.GPU_MAX_IMAGE_SIDE if on_gpu else contract.MAX_IMAGE_SIDE)
    assert batches == {contract.GPU_MAX_BATCH_SIZE if on_gpu else contract.MAX_BATCH_SIZE}
    for network in contract.NETWORKS:  # the networks take the decoded pixels at any size
        assert [(t.name, t.data_type, list(t.dims)) for t in configs[network].input] == [
            (contract.PIXELS, mc.TYPE_FP32, [-1, -1, -1])
        ]
        assert configs[network].parameters[contract.MAX_SIDE_PARAMETER].string_value == str(side)


def test_flavours_run_the_networks_as_documented():
    expected = {
        "local": ("", "python", "KIND_CPU"),
        "onnxruntime": ("onnxruntime_onnx", "", "KIND_CPU"),
        "tensorrt": ("tensorrt_plan", "", "KIND_GPU"),
    }
    for flavour, (platform, backend, kind) in expected.items():
        for name in contract.NETWORKS:
            config = to_model_config(model_configs(RepositorySpec(flavour=flavour))[name])
            assert (config.platform, config.backend) == (platform, backend)
            assert config.instance_group[0].kind == mc.ModelInstanceGroup.Kind.Value(kind)
            assert config.HasField("dynamic_batching")


def test_bare_networks_are_served_wrapped_and_a_swapped_pair_is_refused(onnx_models, tmp_path):
    """An ONNX network taking the contract's input (a user's own export) goes in with the
    preprocessing and mask head around it; giving the segmenter as the classifier is named."""
    import onnx

    from brainscan.export.served_graph import is_served, network_only

    bare = {}
    for name in contract.NETWORKS:
        bare[name] = tmp_path / f"{name}-bare.onnx"
        onnx.save(network_only(onnx.load(str(onnx_models[name]))), str(bare[name]))
    write_repository(tmp_path / "repo", "local", bare[contract.CLASSIFIER], bare[contract.SEGMENTER])
    validate_repository(tmp_path / "repo", require_weights=True)
    for name in contract.NETWORKS:
        served = onnx.load(str(tmp_path / "repo" / name / "1" / "model.onnx"))
        outputs = [o.name for o in served.graph.output]
        assert is_served(served) and outputs == [spec.name for spec in contract.NETWORK_OUTPUTS[name]]
    with pytest.raises(RepositoryError, match="is the segmenter, given as the classifier"):
        write_repository(
            tmp_path / "swapped", "local", onnx_models[contract.SEGMENTER], onnx_models[contract.CLASSIFIER]
        )


def test_unknown_config_fields_are_rejected_by_the_schema():
    config = model_configs(RepositorySpec())[contract.CLASSIFIER]
    config["dynamic_batching"]["max_queue_delay_usec"] = 100
    with pytest.raises(RepositoryError, match="max_queue_delay_usec"):
        to_model_config(config)


def test_incomplete_repositories_are_explained(tmp_path):
    with pytest.raises(RepositoryError, match="does not exist"):
        validate_repository(tmp_path / "missing")
    write_repository(tmp_path, "local")
    with pytest.raises(RepositoryError, match="classifier.*model.onnx is missing"):
        validate_repository(tmp_path, require_weights=True)
    (tmp_path / contract.PREPROCESS / "config.pbtxt").unlink()
    with pytest.raises(RepositoryError, match="preprocess"):
        validate_repository(tmp_path)


def test_a_broken_config_file_is_named(tmp_path):
    write_repository(tmp_path, "local")
    path = tmp_path / contract.SEGMENTER / "config.pbtxt"
    path.write_text(path.read_text() + "\nnot_a_field: 3\n")
    with pytest.raises(RepositoryError, match="segmenter"):
        read_config(path)


def test_a_tensorrt_config_that_cannot_be_read_stops_the_writer_and_is_left_as_it_was(tmp_path):
    """Rewriting it would drop the engines it lists for the fleet's other GPU kinds."""
    write_repository(tmp_path, "tensorrt")
    path = tmp_path / contract.CLASSIFIER / "config.pbtxt"
    broken = path.read_text().replace("cc_model_filenames", "cc_model_filenames {", 1) + "\nnot_a_field: 3\n"
    path.write_text(broken)
    with pytest.raises(RepositoryError, match=r"classifier/config.pbtxt is not a valid.*not rewritten"):
        write_repository(tmp_path, "tensorrt")
    assert path.read_text() == broken


def test_unknown_flavour_is_refused():
    with pytest.raises(RepositoryError, match="unknown flavour"):
        RepositorySpec(flavour="tflite")


def test_tensorrt_flavour_batches_dynamically_with_cuda_graphs_and_configurable_instances():
    spec = RepositorySpec(flavour="tensorrt", instances={contract.SEGMENTER: 2, contract.PREPROCESS: 3})
    configs = {name: to_model_config(c) for name, c in model_configs(spec).items()}
    for name in contract.NETWORKS:
        config = configs[name]
        assert config.platform == "tensorrt_plan"
        assert config.optimization.cuda.graphs is True
        assert not config.dynamic_batching.preferred_batch_size  # the batcher forms any size 1..max
        assert 0 < config.dynamic_batching.max_queue_delay_microseconds <= 100  # short: a GPU batch takes < 1 ms
        assert config.max_batch_size == contract.GPU_MAX_BATCH_SIZE
    assert configs[contract.SEGMENTER].instance_group[0].count == 2
    assert configs[contract.CLASSIFIER].instance_group[0].count == 1
    assert configs[contract.PREPROCESS].instance_group[0].count == 3


@pytest.mark.parametrize(
    "flavour,device,count",
    [
        ("tensorrt", "cpu", 4),
        ("onnxruntime", "gpu", 4),
        ("onnxruntime", "cpu", 1),
        ("local", "cpu", 1),
    ],
)
def test_the_python_step_gets_more_instances_where_a_gpu_runs_the_networks(flavour, device, count):
    configs = model_configs(RepositorySpec(flavour=flavour, device=device))
    assert to_model_config(configs[contract.PREPROCESS]).instance_group[0].count == count


@pytest.mark.parametrize("max_batch", [1, 4, 8, 16])
def test_every_batch_size_the_batcher_can_form_has_a_cuda_graph(max_batch):
    """Triton's tensorrt backend, given no graph_spec, captures graphs only for a few batch
    sizes: every size must be listed, each once, for the common 256 x 256 grey slice (the
    input is dynamic, so the shape must be given), without an inexact match (which would pad
    the image the resize sees)."""
    for name in contract.NETWORKS:
        config = to_model_config(model_configs(RepositorySpec(flavour="tensorrt", max_batch_size=max_batch))[name])
        specs = config.optimization.cuda.graph_spec
        assert sorted(spec.batch_size for spec in specs) == list(range(1, max_batch + 1))
        assert all(list(spec.input[contract.PIXELS].dim) == [256, 256, 1] for spec in specs)
        assert not any(spec.HasField("graph_lower_bound") for spec in specs)


def test_the_onnxruntime_flavour_on_a_gpu_serves_the_fp16_graphs(tmp_path, onnx_models, fp16_models):
    out = write_repository(
        tmp_path / "ort", "onnxruntime", onnx_models["classifier"], onnx_models["segmenter"], device="gpu"
    )
    validate_repository(out, require_weights=True)
    for name in contract.NETWORKS:
        assert (out / name / "1" / "model.onnx").read_bytes() == fp16_models[name].read_bytes()
    cpu = write_repository(tmp_path / "cpu", "onnxruntime", onnx_models["classifier"], onnx_models["segmenter"])
    import onnx

    from brainscan.export.served_graph import for_cpu

    for name in contract.NETWORKS:  # on a CPU: the FP32 graph with its resize in bands (the same answers)
        expected = for_cpu(onnx.load(str(onnx_models[name]))).SerializeToString()
        assert (cpu / name / "1" / "model.onnx").read_bytes() == expected
    lone = tmp_path / "lone" / "model.onnx"
    lone.parent.mkdir()
    lone.write_bytes(onnx_models["segmenter"].read_bytes())
    with pytest.raises(
        RepositoryError, match=r"lone/model\.fp16\.onnx is missing: write it with `brainscan export fp16"
    ):
        write_repository(tmp_path / "bad", "onnxruntime", segmenter_onnx=lone, device="gpu")


@pytest.mark.parametrize("device,kind", [("cpu", "KIND_CPU"), ("gpu", "KIND_GPU")])
def test_onnxruntime_flavour_runs_on_cpu_or_on_gpu_with_the_tensorrt_provider(device, kind):
    spec = RepositorySpec(flavour="onnxruntime", device=device, max_batch_size=16)
    for name in contract.NETWORKS:
        config = to_model_config(model_configs(spec)[name])
        assert config.platform == "onnxruntime_onnx"
        assert config.instance_group[0].kind == mc.ModelInstanceGroup.Kind.Value(kind)
        accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
        if device == "cpu":
            assert not accelerators and config.parameters["intra_op_thread_count"].string_value == "1"
            continue
        (trt,) = accelerators
        assert trt.name == "tensorrt"
        assert "precision_mode" not in trt.parameters  # the precision is the FP16 graph's, not a builder flag
        assert trt.parameters["trt_engine_cache_enable"] == "1"
        assert trt.parameters["trt_engine_cache_path"] == f"{ORT_TRT_CACHE}/{name}"  # one level below the volume
        # the timing cache beside the engines: without a path it goes to the working directory, /models, read-only
        assert trt.parameters["trt_timing_cache_enable"] == "1"
        assert trt.parameters["trt_timing_cache_path"] == f"{ORT_TRT_CACHE}/{name}"
        side = contract.GPU_MAX_IMAGE_SIDE
        assert trt.parameters["trt_profile_min_shapes"] == f"{contract.PIXELS}:1x1x1x1"
        assert trt.parameters["trt_profile_opt_shapes"] == f"{contract.PIXELS}:16x256x256x1"
        assert trt.parameters["trt_profile_max_shapes"] == f"{contract.PIXELS}:16x{side}x{side}x3"


def test_flavour_options_that_do_not_apply_are_refused():
    with pytest.raises(RepositoryError, match="--device applies to the onnxruntime flavour"):
        RepositorySpec(flavour="local", device="gpu")
    with pytest.raises(RepositoryError, match="unknown device"):
        RepositorySpec(flavour="onnxruntime", device="tpu")
    with pytest.raises(RepositoryError, match="unknown model"):
        RepositorySpec(instances={"segmentor": 2})
    with pytest.raises(RepositoryError, match="at least 1"):
        RepositorySpec(instances={contract.CLASSIFIER: 0})


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_every_models_queue_is_bounded_and_refuses_quickly_when_full(flavour):
    spec = RepositorySpec(flavour=flavour, max_queue_size=32, queue_timeout_ms=5000)
    for name in contract.COMPOSING_MODELS:
        policy = to_model_config(model_configs(spec)[name]).dynamic_batching.default_queue_policy
        assert policy.max_queue_size == 32 and policy.default_timeout_microseconds == 5_000_000
        assert policy.timeout_action == mc.ModelQueuePolicy.TimeoutAction.REJECT
        assert policy.allow_timeout_override  # a client's own timeout travels with its request
    with pytest.raises(RepositoryError, match="at least 1"):
        RepositorySpec(max_queue_size=0)
