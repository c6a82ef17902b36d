"""TensorRT: a serialized engine (built on the device by ``tools/build_engine``), with pycuda buffers.

Only on a machine with an NVIDIA GPU and TensorRT's Python bindings (a Jetson:
JetPack's python3-libnvinfer; see deploy/jetson/install.sh). Elsewhere the
imports fail and this backend alone is off, with the reason.

The engine has one input and the named output; shapes may be dynamic in the
batch dimension, which is set per call. Host buffers are page-locked so the
copies to and from the GPU are asynchronous on one stream.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np

from common.errors import InferenceError
from common.inference.runner import BackendUnavailable, Runner

logger = logging.getLogger(__name__)

try:
    import pycuda.driver as cuda
    import tensorrt as trt
except ImportError as exc:
    trt = None
    cuda = None
    IMPORT_ERROR: Optional[str] = f"tensorrt or pycuda did not import: {exc}"
else:
    IMPORT_ERROR = None


def status() -> str:
    """``ok`` with TensorRT's version, or why the backend is off."""
    return f"off: {IMPORT_ERROR}" if trt is None else f"ok: TensorRT {trt.__version__}"


class TensorRtRunner(Runner):
    def __init__(self, path: Path, output: Optional[str] = None) -> None:
        if trt is None or cuda is None:
            raise BackendUnavailable(f"the tensorrt backend is off: {IMPORT_ERROR}")
        try:
            cuda.init()
            self._context_owner = cuda.Device(0).retain_primary_context()
            self._context_owner.push()
        except cuda.Error as exc:
            raise BackendUnavailable(f"the tensorrt backend is off: no usable CUDA device: {exc}") from exc
        try:
            self._logger = trt.Logger(trt.Logger.WARNING)
            runtime = trt.Runtime(self._logger)
            self._engine = runtime.deserialize_cuda_engine(path.read_bytes())
            if self._engine is None:
                raise InferenceError(f"{path}: TensorRT could not deserialize the engine (built for another version?)")
            self._context = self._engine.create_execution_context()
            names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
            inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
            if len(inputs) != 1 or not outputs:
                raise InferenceError(f"{path}: expected one input and an output, found {inputs} and {outputs}")
            self._input = inputs[0]
            self._output: str = output if output is not None and output in outputs else outputs[0]
            self.input_shape = [d if d >= 0 else "N" for d in self._engine.get_tensor_shape(self._input)]
            self._stream = cuda.Stream()
            self._buffers: dict[str, Any] = {}
        finally:
            cuda.Context.pop()
        self._path = path

    def _buffer(self, name: str, shape: tuple[int, ...]) -> tuple[np.ndarray, Any]:
        dtype = trt.nptype(self._engine.get_tensor_dtype(name))
        host, device = self._buffers.get(name, (None, None))
        if host is None or host.shape != shape:
            host = cuda.pagelocked_empty(shape, dtype)
            device = cuda.mem_alloc(host.nbytes)
            self._buffers[name] = (host, device)
        return host, device

    def engine(self) -> str:
        return f"tensorrt:{trt.__version__}"

    def run(self, batch: np.ndarray) -> np.ndarray:
        self._context_owner.push()
        try:
            self._context.set_input_shape(self._input, batch.shape)
            host_in, device_in = self._buffer(self._input, batch.shape)
            np.copyto(host_in, batch)
            out_shape = tuple(self._context.get_tensor_shape(self._output))
            host_out, device_out = self._buffer(self._output, out_shape)
            self._context.set_tensor_address(self._input, int(device_in))
            self._context.set_tensor_address(self._output, int(device_out))
            cuda.memcpy_htod_async(device_in, host_in, self._stream)
            if not self._context.execute_async_v3(self._stream.handle):
                raise InferenceError(f"{self._path.name}: TensorRT execution failed")
            cuda.memcpy_dtoh_async(host_out, device_out, self._stream)
            self._stream.synchronize()
            result: np.ndarray = host_out.copy()
            return result
        except cuda.Error as exc:
            raise InferenceError(f"{self._path.name}: CUDA error: {exc}") from exc
        finally:
            cuda.Context.pop()

    def close(self) -> None:
        if getattr(self, "_buffers", None):
            self._context_owner.push()
            try:
                for _, device in self._buffers.values():
                    device.free()
                self._buffers.clear()
            finally:
                cuda.Context.pop()
        if getattr(self, "_context_owner", None) is not None:
            self._context_owner.detach()
            self._context_owner = None


def platform() -> str:
    """What an engine is tied to: TensorRT's version and the GPU's name (an engine runs only where it was built)."""
    if trt is None or cuda is None:
        raise BackendUnavailable(f"the tensorrt backend is off: {IMPORT_ERROR}")
    cuda.init()
    return f"trt{trt.__version__}-{cuda.Device(0).name()}"


def build_engine(onnx_path: Path, engine_path: Path, fp16: bool = False) -> None:
    """Build a serialized engine from an ONNX model on this GPU (TensorRT's builder and ONNX parser); a dynamic
    batch dimension gets the profile 1:1:8. Written to ``engine_path`` only when complete."""
    if trt is None or cuda is None:
        raise BackendUnavailable(f"the tensorrt backend is off: {IMPORT_ERROR}")
    logger_ = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger_)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger_)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InferenceError(f"{onnx_path.name}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    source = network.get_input(0)
    shape = list(source.shape)
    if shape and shape[0] < 0:
        profile = builder.create_optimization_profile()
        rest = shape[1:]
        profile.set_shape(source.name, [1, *rest], [1, *rest], [8, *rest])
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise InferenceError(f"{onnx_path.name}: TensorRT could not build an engine for this GPU")
    partial = engine_path.with_name(engine_path.name + ".partial")
    partial.write_bytes(bytes(serialized))
    partial.replace(engine_path)
