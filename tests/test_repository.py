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
        assert on_disk[name] == content, f"{name} differs: run `brainscan export repository --flavour tensorrt --out model_repository`"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_every_flavour_keeps_the_served_contract(flavour, tmp_path):
    write_repository(tmp_path, flavour)
    configs = validate_repository(tmp_path)
    ensemble = configs[contract.ENSEMBLE]
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size > 0
    assert [(t.name, t.data_type, list(t.dims)) for t in ensemble.input] == [(contract.IMAGE, mc.TYPE_STRING, [1])]
    outputs = {t.name: (t.data_type, list(t.dims)) for t in ensemble.output}
    assert outputs == {contract.TUMOR_PROBABILITY: (mc.TYPE_FP32, [1]), contract.MASK: (mc.TYPE_UINT8, [-1, -1])}
    steps = [s.model_name for s in ensemble.ensemble_scheduling.step]
    assert steps == [contract.PREPROCESS, contract.CLASSIFIER, contract.SEGMENTER, contract.POSTPROCESS]
    # the ensemble, preprocess and postprocess do not depend on the flavour, but for how many
    # python processes run (more where a GPU runs the networks)
    local = {name: to_model_config(c) for name, c in model_configs(RepositorySpec()).items()}
    for name in (contract.ENSEMBLE, contract.PREPROCESS, contract.POSTPROCESS):
        config = configs[name]
        config.ClearField("instance_group"), local[name].ClearField("instance_group")
        assert config == local[name], name


def test_flavours_run_the_networks_as_documented():
    expected = {"local": ("", "python", "KIND_CPU"), "onnxruntime": ("onnxruntime_onnx", "", "KIND_CPU"),
                "tensorrt": ("tensorrt_plan", "", "KIND_GPU")}
    for flavour, (platform, backend, kind) in expected.items():
        for name in (contract.CLASSIFIER, contract.SEGMENTER):
            config = to_model_config(model_configs(RepositorySpec(flavour=flavour))[name])
            assert (config.platform, config.backend) == (platform, backend)
            assert config.instance_group[0].kind == mc.ModelInstanceGroup.Kind.Value(kind)
            assert config.HasField("dynamic_batching")


def test_network_input_sizes_follow_the_onnx_models(onnx_models, tmp_path):
    write_repository(tmp_path, "local", onnx_models["classifier"], onnx_models["segmenter"])
    configs = validate_repository(tmp_path, require_weights=True)
    assert list(configs[contract.CLASSIFIER].input[0].dims) == [96, 96, 3]
    assert list(configs[contract.PREPROCESS].output[0].dims) == [96, 96, 3]
    assert list(configs[contract.PREPROCESS].output[1].dims) == [64, 64, 3]
    assert list(configs[contract.SEGMENTER].output[0].dims) == [64, 64, 1]


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
    (tmp_path / contract.POSTPROCESS / "config.pbtxt").unlink()
    with pytest.raises(RepositoryError, match="postprocess"):
        validate_repository(tmp_path)


def test_a_broken_config_file_is_named(tmp_path):
    write_repository(tmp_path, "local")
    path = tmp_path / contract.SEGMENTER / "config.pbtxt"
    path.write_text(path.read_text() + "\nnot_a_field: 3\n")
    with pytest.raises(RepositoryError, match="segmenter"):
        read_config(path)


def test_unknown_flavour_is_refused():
    with pytest.raises(RepositoryError, match="unknown flavour"):
        RepositorySpec(flavour="tflite")


def test_tensorrt_flavour_batches_dynamically_with_cuda_graphs_and_configurable_instances():
    spec = RepositorySpec(flavour="tensorrt", instances={contract.SEGMENTER: 2, contract.PREPROCESS: 3})
    configs = {name: to_model_config(c) for name, c in model_configs(spec).items()}
    for name in (contract.CLASSIFIER, contract.SEGMENTER):
        config = configs[name]
        assert config.platform == "tensorrt_plan"
        assert config.optimization.cuda.graphs is True
        assert not config.dynamic_batching.preferred_batch_size  # the batcher forms any size 1..max
        assert 0 < config.dynamic_batching.max_queue_delay_microseconds <= 100  # short: a GPU batch takes < 1 ms
        assert config.max_batch_size == contract.MAX_BATCH_SIZE
    assert configs[contract.SEGMENTER].instance_group[0].count == 2
    assert configs[contract.CLASSIFIER].instance_group[0].count == 1
    assert configs[contract.PREPROCESS].instance_group[0].count == 3
    assert configs[contract.POSTPROCESS].instance_group[0].count == 2  # the GPU default, not overridden


@pytest.mark.parametrize("flavour,device,python_steps", [
    ("tensorrt", "cpu", (4, 2)), ("onnxruntime", "gpu", (4, 2)), ("onnxruntime", "cpu", (1, 1)), ("local", "cpu", (1, 1)),
])
def test_python_steps_get_more_instances_where_a_gpu_runs_the_networks(flavour, device, python_steps):
    configs = model_configs(RepositorySpec(flavour=flavour, device=device))
    counts = tuple(to_model_config(configs[m]).instance_group[0].count for m in (contract.PREPROCESS, contract.POSTPROCESS))
    assert counts == python_steps


@pytest.mark.parametrize("max_batch", [1, 4, 8, 16])
def test_every_batch_size_the_batcher_can_form_has_a_cuda_graph(max_batch):
    """Triton's tensorrt backend, given no graph_spec, captures graphs only for batch 1 and
    max_batch_size (with dynamic batching and no preferred sizes): every size in between
    must be listed, each once, with no input shapes (the engine's own are used)."""
    for name in (contract.CLASSIFIER, contract.SEGMENTER):
        config = to_model_config(model_configs(RepositorySpec(flavour="tensorrt", max_batch_size=max_batch))[name])
        specs = config.optimization.cuda.graph_spec
        assert sorted(spec.batch_size for spec in specs) == list(range(1, max_batch + 1))
        assert all(not spec.input and not spec.HasField("graph_lower_bound") for spec in specs)


def test_the_onnxruntime_flavour_on_a_gpu_serves_the_fp16_graphs(tmp_path, onnx_models, fp16_models):
    out = write_repository(tmp_path / "ort", "onnxruntime", onnx_models["classifier"], onnx_models["segmenter"], device="gpu")
    validate_repository(out, require_weights=True)
    for name in (contract.CLASSIFIER, contract.SEGMENTER):
        assert (out / name / "1" / "model.onnx").read_bytes() == fp16_models[name].read_bytes()
    cpu = write_repository(tmp_path / "cpu", "onnxruntime", onnx_models["classifier"], onnx_models["segmenter"])
    assert (cpu / contract.CLASSIFIER / "1" / "model.onnx").read_bytes() == onnx_models["classifier"].read_bytes()
    lone = tmp_path / "lone" / "model.onnx"
    lone.parent.mkdir()
    lone.write_bytes(onnx_models["segmenter"].read_bytes())
    with pytest.raises(RepositoryError, match=r"lone/model\.fp16\.onnx is missing: write it with `brainscan export fp16"):
        write_repository(tmp_path / "bad", "onnxruntime", segmenter_onnx=lone, device="gpu")


@pytest.mark.parametrize("device,kind", [("cpu", "KIND_CPU"), ("gpu", "KIND_GPU")])
def test_onnxruntime_flavour_runs_on_cpu_or_on_gpu_with_the_tensorrt_provider(device, kind):
    spec = RepositorySpec(flavour="onnxruntime", device=device, max_batch_size=16)
    for name in (contract.CLASSIFIER, contract.SEGMENTER):
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
        dims = "x".join(str(d) for d in config.input[0].dims)
        assert trt.parameters["trt_profile_min_shapes"] == f"{config.input[0].name}:1x{dims}"
        assert trt.parameters["trt_profile_max_shapes"] == f"{config.input[0].name}:{config.max_batch_size}x{dims}"


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
