"""Triton python model running a served graph with ONNX Runtime (the ``local`` flavour's
classifier and segmenter, for servers without the onnxruntime backend).

With the config parameter ``resize`` set to ``opencv`` (what the local flavour writes), the
runner does the graph's resize, stretch and mask with OpenCV (``brainscan.opencv_path``, the
parity gate's reference) and runs only the network part of the graph: on a CPU that is the
faster way at every image size. With ``graph`` it runs the whole served graph, as the GPU
flavours do.

The requests of one dynamic batch are concatenated into one session call and split back.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from brainscan import contract, opencv_path


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = config.get("parameters", {})
        threads = int(parameters.get("intra_op_threads", {}).get("string_value", "1"))
        opencv = parameters.get(contract.RESIZE_PARAMETER, {}).get("string_value") == contract.OPENCV_RESIZE
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.input_name = config["input"][0]["name"]
        self.output_names = [output["name"] for output in config["output"]]
        graph = str(Path(args["model_repository"]) / args["model_version"] / "model.onnx")
        self.size = None  # the network input's (height, width) when OpenCV feeds the network
        if opencv:
            import onnx

            part, self.size = opencv_path.network_part(onnx.load(graph))
            graph = graph if part is None else part.SerializeToString()
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self.session_input = self.session.get_inputs()[0].name
        # the config's outputs in the config's order; the segmenter's network part gives its
        # probabilities instead of MASK, which OpenCV makes of them
        given = [output.name for output in self.session.get_outputs()]
        self.session_outputs = [name for name in self.output_names if name in given] or given

    def _split(self, outputs, arrays):
        """Outputs batched over the requests -> each request's own."""
        each, start = [], 0
        for array in arrays:
            each.append([out[start : start + len(array)] for out in outputs])
            start += len(array)
        return each

    def _run(self, arrays):
        """Each request's outputs for the requests' PIXELS, the network run once on all."""
        if self.size is None:
            if len({array.shape[1:] for array in arrays}) > 1:  # images of several sizes: one call each
                return [self._run([array])[0] for array in arrays]
            batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            return self._split(self.session.run(self.session_outputs, {self.session_input: batch}), arrays)
        inputs = np.concatenate([opencv_path.model_inputs(array, self.size) for array in arrays])
        each = self._split(self.session.run(self.session_outputs, {self.session_input: inputs}), arrays)
        if self.output_names == [contract.MASK]:  # each request's masks at its own image size
            each = [[opencv_path.masks(outputs[0], array.shape[1:3])] for outputs, array in zip(each, arrays)]
        return each

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        return [
            pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, out) for name, out in zip(self.output_names, outputs)]
            )
            for outputs in self._run(arrays)
        ]
