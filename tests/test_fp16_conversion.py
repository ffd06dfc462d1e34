"""`brainscan export fp16`: precision in the ONNX graph, checked on CPU. The FP16 graph keeps
FP32 inputs and outputs, computes in FP16, keeps chosen nodes in FP32, passes the strict
type inference TensorRT's strongly typed parser relies on; the CPU gate sees FP16 storage
(checked against a numpy emulation written here), passes sound graphs and refuses one
that overflows FP16, writing nothing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from known_networks import write_threshold_segmenter
from onnx import TensorProto
from typer.testing import CliRunner

from brainscan import contract
from brainscan.cli import app
from brainscan.export.fp16 import (
    PrecisionError,
    convert_to_fp16,
    export_fp16,
    fp16_path,
    run_fp16,
)
from brainscan.export.gate import GateFailedError
from brainscan.export.records import Fp16Record
from brainscan.export.served_graph import serving_model
from brainscan.export.validation import NetworkInputs, run_onnx
from brainscan.preprocessing import pixels
from brainscan.train import datasets

runner = CliRunner()
SIZE = 64


def _types(model) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.output]}
    return types | {t.name: t.data_type for t in inferred.graph.initializer}


@pytest.fixture(scope="module")
def slices(phantom_dir):
    """Real phantom slices, decoded at their own size, and their ground-truth masks."""
    samples = [s for s in datasets.find_kaggle3m(phantom_dir)][:12]
    return [pixels(i) for i in datasets.decode_images(samples)], datasets.load_truth(samples)


def test_the_fp16_graph_keeps_its_io_types_fp16_weights_fp32_pre_and_post_and_passes_strict_type_inference(
    fp16_models, onnx_models
):
    for network, path in fp16_models.items():
        source, converted = onnx.load(str(onnx_models[network])), onnx.load(str(path))
        assert path == fp16_path(onnx_models[network]) and path.name == "model.fp16.onnx"
        # FP32 probability and out-of-distribution score, or the UINT8 mask
        output_types = [TensorProto.FLOAT] * 2 if network == contract.CLASSIFIER else [TensorProto.UINT8]
        assert [t.type.tensor_type.elem_type for t in [*converted.graph.input, *converted.graph.output]] == [
            TensorProto.FLOAT,
            *output_types,
        ]
        assert [t.name for t in converted.graph.input] == [t.name for t in source.graph.input]  # the served names
        assert [t.name for t in converted.graph.output] == [t.name for t in source.graph.output]
        added = ("preprocess/", "mask/", "gate/")
        weights = {
            t.name
            for t in source.graph.initializer
            if t.data_type == TensorProto.FLOAT and not t.name.startswith(added)
        }
        halves = {t.name for t in converted.graph.initializer if t.data_type == TensorProto.FLOAT16}
        assert weights and weights == halves  # every network weight is stored in FP16, nothing else
        convs = [n for n in converted.graph.node if n.op_type == "Conv"]
        types = _types(converted)
        assert convs and all(types[n.output[0]] == TensorProto.FLOAT16 for n in convs)  # and computed in FP16
        resize = [n for n in converted.graph.node if n.name.startswith(added) and n.op_type == "MatMul"]
        assert resize and all(types[n.output[0]] == TensorProto.FLOAT for n in resize)  # 16-bit pixels overflow FP16
        if network == contract.CLASSIFIER:  # the pixel gate is the FP32 graph's, in FP32 on the FP16 network
            gate = [n for n in converted.graph.node if n.name.startswith("gate/")]
            assert gate and all(types[n.output[0]] == TensorProto.FLOAT for n in gate if n.op_type != "Shape")
            source_gate = {t.name: t for t in source.graph.initializer if t.name.startswith("gate/")}
            converted_gate = {t.name: t for t in converted.graph.initializer if t.name.startswith("gate/")}
            assert source_gate.keys() == converted_gate.keys() and source_gate["gate/whitening"].data_type == 1
            assert source_gate["gate/whitening"].raw_data == converted_gate["gate/whitening"].raw_data
        onnx.shape_inference.infer_shapes(converted, check_type=True, strict_mode=True)
        record = json.loads(Fp16Record.path_for(path).read_text())
        assert record["network"] == network and record["gate"]["passed"] is True
        assert record["fp16_nodes"] == record["float_nodes"] > 10 and record["converter"].startswith(
            "onnxconverter-common"
        )


def test_keep_fp32_by_node_name_or_op_type(onnx_models):
    model = onnx.load(str(onnx_models["segmenter"]))
    sigmoid = next(n for n in model.graph.node if n.op_type == "Sigmoid")
    first_conv = next(n for n in model.graph.node if n.op_type == "Conv")
    converted, kept = convert_to_fp16(model, ("op:Sigmoid", first_conv.name))
    assert kept == [sigmoid.name, first_conv.name]
    types = _types(converted)
    node = {n.name: n for n in converted.graph.node}
    assert types[node[sigmoid.name].output[0]] == TensorProto.FLOAT
    assert types[node[first_conv.name].output[0]] == TensorProto.FLOAT
    others = [n for n in converted.graph.node if n.op_type == "Conv" and n.name != first_conv.name]
    assert all(types[n.output[0]] == TensorProto.FLOAT16 for n in others)
    with pytest.raises(PrecisionError, match=r"--keep-fp32 'decoder9_\*' matches no node \(op types here: .*Conv"):
        convert_to_fp16(model, ("decoder9_*",))


def test_the_cpu_run_stores_every_fp16_tensor_as_numpy_says_fp16_does(tmp_path):
    """The oracle is numpy's float16, step by step: rounding and overflow to Inf of every
    intermediate tensor, as a strongly typed FP16 engine stores them between layers."""
    x = np.linspace(0, 255, 4 * SIZE * SIZE * 3, dtype=np.float32).reshape(4, SIZE, SIZE, 3)
    graph = onnx.load(str(write_threshold_segmenter(tmp_path / "detour.onnx", SIZE, detour=1000.0)))
    converted, _ = convert_to_fp16(graph)

    def half(a):
        return np.asarray(a, np.float32).astype(np.float16)

    with np.errstate(over="ignore"):
        mean = half(half(x).astype(np.float32).mean(axis=3, keepdims=True))
        up = half(mean.astype(np.float32) * np.float32(1000))  # Inf above 65504
        level = half(up.astype(np.float32) / np.float32(1000))
        logit = half((half(level.astype(np.float32) - 128).astype(np.float32)) * np.float32(half(0.1)))
        expected = half(1 / (1 + np.exp(-logit.astype(np.float32)))).astype(np.float32)
    assert np.isinf(up).any() and not np.isinf(up).all()
    got = np.stack(run_fp16(converted, list(x))[contract.SEGMENTER_OUTPUT])
    np.testing.assert_allclose(got, expected, atol=1e-3)
    fp32 = np.stack(run_onnx(graph.SerializeToString(), list(x)))
    assert ((got > 0.5) != (fp32 > 0.5)).mean() > 0.2  # the overflow changes a good share of the mask


def test_the_cpu_gate_passes_a_sound_graph_with_real_tumour_masks(tmp_path, slices):
    images, truth = slices
    source = write_threshold_segmenter(tmp_path / "model.onnx", SIZE)
    served = serving_model(onnx.load(str(source))).SerializeToString()
    assert any(
        mask.any() for mask in run_onnx(served, images)
    )  # masks that are not empty: the comparison means something
    result = export_fp16(source, NetworkInputs(source, images, truth))
    assert result.report.passed and result.path == tmp_path / "model.fp16.onnx" and result.path.exists()
    checks = {c.name: c.value for c in result.report.checks}
    assert checks["mean Dice FP16 vs FP32 masks"] > 0.99 and checks["masks emptied by FP16"] == 0


def test_a_graph_that_overflows_fp16_is_refused_and_nothing_is_written(tmp_path, slices):
    images, truth = slices
    source = write_threshold_segmenter(tmp_path / "model.onnx", SIZE, detour=1000.0)
    with pytest.raises(GateFailedError) as refused:
        export_fp16(source, NetworkInputs(source, images, truth))
    message = str(refused.value)
    assert "FP16 gate, segmenter" in message and "FAIL" in message and "--keep-fp32" in message
    failed = {c.name for c in refused.value.reports[0].failures}
    assert "mean Dice FP16 vs FP32 masks" in failed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # nothing written, not even a temp file
    # keeping the overflowing step in FP32 is the documented way out
    result = export_fp16(source, NetworkInputs(source, images, truth), keep_fp32=("detour_*",))
    assert result.report.passed and result.kept_fp32 == ["detour_up", "detour_down"]


def test_the_command_prints_the_gate_and_writes_beside_the_run(runs, onnx_models, tmp_path):
    run = shutil.copytree(runs["classifier"], tmp_path / "classifier")
    result = runner.invoke(app, ["export", "fp16", str(run), "--samples", "4"])
    assert result.exit_code == 0, result.output
    assert "FP16 gate, classifier, 4 validation slices: passed" in result.output
    assert "nodes compute in FP16" in result.output and f"wrote {run / 'model.fp16.onnx'}" in result.output
    assert (run / "model.fp16.onnx").exists() and (run / "model.fp16.json").exists()
    listed = runner.invoke(app, ["export", "fp16", str(run), "--list-nodes"])
    assert listed.exit_code == 0 and "Conv " in listed.output and "Sigmoid" in listed.output
    typo = runner.invoke(app, ["export", "fp16", str(run), "--keep-fp32", "op:Sigmiod"])
    assert typo.exit_code == 1 and "--keep-fp32 'op:Sigmiod' matches no node" in typo.output
    missing = runner.invoke(app, ["export", "fp16", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "does not exist" in missing.output
