"""Triton python model ``preprocess``: encoded image bytes -> network inputs + original size.

The work is brainscan.preprocessing.preprocess_batch, the same function training uses.
Every request stands alone: a bad image fails its own request with INVALID_ARG, and any
other failure (out of memory, a decoder's own exception) fails only that request too, with
a message that names it; the other requests of the batch are answered normally.
"""
import json

import triton_python_backend_utils as pb_utils

from brainscan import contract
from brainscan.preprocessing import InvalidImageError, as_network_input, preprocess_batch


def failed(message: str):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        outputs = {name: pb_utils.get_output_config_by_name(config, name)
                   for name in (contract.CLASSIFIER_INPUT, contract.SEGMENTER_INPUT)}
        self.classifier_size = tuple(outputs[contract.CLASSIFIER_INPUT]["dims"][:2])
        self.segmenter_size = tuple(outputs[contract.SEGMENTER_INPUT]["dims"][:2])
        # the networks' input dtype is the config's (FP32; UINT8 when the cast is in their graphs)
        self.dtypes = {name: pb_utils.triton_string_to_numpy(output["data_type"]) for name, output in outputs.items()}

    def execute(self, requests):
        responses = []
        for request in requests:
            encoded = pb_utils.get_input_tensor_by_name(request, contract.IMAGE).as_numpy()
            try:
                cls, seg, sizes = preprocess_batch(encoded, self.classifier_size, self.segmenter_size)
            except InvalidImageError as exc:
                responses.append(failed(str(exc)))
                continue
            except MemoryError:
                responses.append(failed("not enough memory to decode this image on the server"))
                continue
            except Exception as exc:  # a decoder's own error must not fail the batch's other requests
                responses.append(failed(f"cannot decode this image ({type(exc).__name__}: {exc})"))
                continue
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(contract.CLASSIFIER_INPUT, as_network_input(cls, self.dtypes[contract.CLASSIFIER_INPUT])),
                        pb_utils.Tensor(contract.SEGMENTER_INPUT, as_network_input(seg, self.dtypes[contract.SEGMENTER_INPUT])),
                        pb_utils.Tensor(contract.ORIGINAL_SIZE, sizes),
                    ]
                )
            )
        return responses
