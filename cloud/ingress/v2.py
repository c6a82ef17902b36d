"""The Open Inference Protocol v2 (KServe v2 / Triton) for the models the hub serves, over HTTP and gRPC.

    GET  /v2, /v2/health/live, /v2/health/ready
    GET  /v2/models/{name}[/versions/{v}], .../ready
    POST /v2/models/{name}[/versions/{v}]/infer     JSON, or JSON + binary tensors (binary_tensor_data extension)
    gRPC inference.GRPCInferenceService: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer

so ``tritonclient`` (and any v2 client) works against the hub unchanged. A v2
call runs the model on raw tensors: no decoding, routing or traces, as on
Triton. The models are the ONNX models the routing rules name.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from cloud.errors import HubError, ModelUnavailable, V2Error, V2ModelNotFound, http_status
from cloud.ingress.v2_grpc import service_pb2 as v2pb

SERVER_NAME = "tandem"
SERVER_VERSION = "1"
EXTENSIONS = ["binary_tensor_data"]
HEADER_LENGTH = "Inference-Header-Content-Length"

DATATYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
ONNX_TYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(int8)": "INT8",
    "tensor(uint8)": "UINT8",
    "tensor(bool)": "BOOL",
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 for a dimension of any size

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


class TensorModels(abc.ABC):
    """The models a v2 client can call (the hub's model pool in production)."""

    @abc.abstractmethod
    def names(self) -> list[str]: ...

    @abc.abstractmethod
    async def spec(self, name: str) -> ModelSpec:
        """The model's inputs and outputs; V2Error if there is no such model."""

    @abc.abstractmethod
    async def run(self, name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output of the model for these named inputs."""


def spec_from_onnx(name: str, version: str, inputs: list[Any], outputs: list[Any]) -> ModelSpec:
    """A ModelSpec from ONNX Runtime's NodeArg lists (name, type, shape)."""

    def tensors(args: list[Any]) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(a.name, ONNX_TYPES.get(a.type, "FP32"), tuple(d if isinstance(d, int) else -1 for d in a.shape))
            for a in args
        )

    return ModelSpec(name, version, tensors(inputs), tensors(outputs))


class V2Service:
    """The protocol's core, shared by the HTTP and gRPC adapters."""

    def __init__(self, models: Callable[[], TensorModels]) -> None:
        self._models = models  # read on every call: hot-reloaded rules change the model list

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}

    async def model_metadata(self, name: str) -> dict[str, Any]:
        spec = await self._spec(name)
        return {
            "name": spec.name,
            "versions": [spec.version],
            "platform": "onnxruntime_onnx",
            "inputs": [t.as_dict() for t in spec.inputs],
            "outputs": [t.as_dict() for t in spec.outputs],
        }

    def ready(self, name: str) -> bool:
        return name in self._models().names()

    async def infer(
        self, name: str, inputs: dict[str, np.ndarray], wanted: Optional[list[str]] = None
    ) -> tuple[ModelSpec, dict[str, np.ndarray]]:
        spec = await self._spec(name)
        expected = {t.name: t for t in spec.inputs}
        if set(inputs) != set(expected):
            raise V2Error(f"model {name} takes inputs {sorted(expected)}, got {sorted(inputs)}")
        for key, array in inputs.items():
            want = expected[key]
            if DATATYPES[want.datatype] != array.dtype.type:
                raise V2Error(f"input {key}: model {name} takes {want.datatype}, got {array.dtype}")
            dims = zip(want.shape, array.shape, strict=False)
            if len(want.shape) != array.ndim or any(w not in (-1, g) for w, g in dims):
                raise V2Error(f"input {key}: model {name} takes shape {list(want.shape)}, got {list(array.shape)}")
        try:
            outputs = await self._models().run(name, inputs)
        except (V2Error, ModelUnavailable):
            raise
        except Exception as exc:  # an inference failure is the server's, with its cause
            raise HubError(f"model {name}: inference failed: {type(exc).__name__}: {exc}") from exc
        if wanted:
            missing = [w for w in wanted if w not in outputs]
            if missing:
                raise V2Error(f"model {name} has no outputs {missing} (it has {sorted(outputs)})")
            outputs = {w: outputs[w] for w in wanted}
        return spec, outputs

    async def _spec(self, name: str) -> ModelSpec:
        if name not in self._models().names():
            raise V2ModelNotFound(f"unknown model {name!r}; the hub serves {sorted(self._models().names())}")
        return await self._models().spec(name)


# -- HTTP ---------------------------------------------------------------------------------------------------------


def v2_routes(service: V2Service) -> APIRouter:
    router = APIRouter()

    @router.get("/v2")
    def server_metadata() -> dict[str, Any]:
        return service.server_metadata()

    @router.get("/v2/health/live")
    @router.get("/v2/health/ready")
    def health() -> dict[str, Any]:
        return {}

    @router.get("/v2/models/{name}")
    @router.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: Optional[str] = None) -> Any:
        try:
            return await service.model_metadata(name)
        except HubError as exc:
            return v2_error_response(exc)

    @router.get("/v2/models/{name}/ready")
    @router.get("/v2/models/{name}/versions/{version}/ready")
    def model_ready(name: str, version: Optional[str] = None) -> Any:
        if not service.ready(name):
            return v2_error_response(V2Error(f"model {name} is not ready"))
        return {}

    @router.post("/v2/models/{name}/infer")
    @router.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: Optional[str] = None) -> Response:
        body = await request.body()
        header_length = request.headers.get(HEADER_LENGTH)
        try:
            header, inputs, binary_out = _parse_http_request(body, header_length)
            wanted = [o["name"] for o in header.get("outputs", [])] or None
            spec, outputs = await service.infer(name, inputs, wanted)
        except HubError as exc:
            return v2_error_response(exc)
        return _http_response(spec, header.get("id"), outputs, binary_out)

    return router


def v2_error_response(exc: HubError) -> JSONResponse:
    """The protocol's error body, ``{"error": message}`` (tritonclient shows it), with the status from cloud.errors."""
    return JSONResponse({"error": str(exc)}, status_code=http_status(exc))


def _parse_http_request(
    body: bytes, header_length: Optional[str]
) -> tuple[dict[str, Any], dict[str, np.ndarray], set[str]]:
    """The JSON header, its input tensors (from JSON data or the binary tail), and which outputs go back binary.
    V2Error for anything that is not a well-formed v2 request."""
    try:
        split = int(header_length) if header_length else len(body)
    except ValueError as exc:
        raise V2Error(f"{HEADER_LENGTH} is not a number: {header_length!r}") from exc
    if not 0 <= split <= len(body):
        raise V2Error(f"{HEADER_LENGTH} {split} is outside the body of {len(body)} bytes")
    try:
        header = json.loads(body[:split])
    except ValueError as exc:
        raise V2Error(f"the request's JSON does not parse: {exc}") from exc
    if not isinstance(header, dict):
        raise V2Error(f"the request must be a JSON object, not {type(header).__name__}")
    parameters = _mapping(header.get("parameters"), "parameters")
    wanted = [_mapping(o, "an output") for o in _list(header.get("outputs"), "outputs")]
    if any(not isinstance(o.get("name"), str) for o in wanted):
        raise V2Error("every requested output needs a name")
    tail, offset = body[split:], 0
    inputs: dict[str, np.ndarray] = {}
    for item in (_mapping(i, "an input") for i in _list(header.get("inputs"), "inputs")):
        try:
            dtype, shape = DATATYPES[item["datatype"]], [int(d) for d in item["shape"]]
            size = _mapping(item.get("parameters"), "an input's parameters").get("binary_data_size")
            if size is not None:
                size = int(size)
                if size < 0 or offset + size > len(tail):
                    raise ValueError(f"binary_data_size {size} is beyond the body's binary part")
                array: np.ndarray = np.frombuffer(tail[offset : offset + size], dtype=dtype).reshape(shape)
                offset += size
            else:
                array = np.asarray(item["data"], dtype=dtype).reshape(shape)
            inputs[str(item["name"])] = array
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise V2Error(f"input {item.get('name')!r}: {type(exc).__name__}: {exc}") from exc
    binary_default = parameters.get("binary_data_output")
    binary = {
        o["name"]
        for o in wanted
        if _mapping(o.get("parameters"), "an output's parameters").get("binary_data", binary_default)
    }
    if not wanted and binary_default:
        binary = {"*"}
    return {**header, "outputs": wanted}, inputs, binary


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise V2Error(f"{what} must be a list, not {type(value).__name__}")
    return value


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise V2Error(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def _http_response(
    spec: ModelSpec, request_id: Optional[str], outputs: Mapping[str, np.ndarray], binary: set[str]
) -> Response:
    described, tail = [], b""
    for name, array in outputs.items():
        item: dict[str, Any] = {"name": name, "datatype": _datatype(array), "shape": list(array.shape)}
        if name in binary or "*" in binary:
            raw = np.ascontiguousarray(array).tobytes()
            item["parameters"] = {"binary_data_size": len(raw)}
            tail += raw
        else:
            item["data"] = array.flatten().tolist()
        described.append(item)
    reply: dict[str, Any] = {"model_name": spec.name, "model_version": spec.version, "outputs": described}
    if request_id:
        reply["id"] = request_id
    header = json.dumps(reply).encode()
    if not tail:
        return Response(header, media_type="application/json")
    return Response(header + tail, media_type="application/octet-stream", headers={HEADER_LENGTH: str(len(header))})


def _datatype(array: np.ndarray) -> str:
    return next(name for name, kind in DATATYPES.items() if kind == array.dtype.type)


# -- gRPC ---------------------------------------------------------------------------------------------------------


class V2Grpc:
    """inference.GRPCInferenceService's unary methods; the ingress deployment forwards to these."""

    def __init__(self, service: V2Service) -> None:
        self._service = service

    def server_live(self) -> v2pb.ServerLiveResponse:
        return v2pb.ServerLiveResponse(live=True)

    def server_ready(self) -> v2pb.ServerReadyResponse:
        return v2pb.ServerReadyResponse(ready=True)

    def model_ready(self, request: v2pb.ModelReadyRequest) -> v2pb.ModelReadyResponse:
        return v2pb.ModelReadyResponse(ready=self._service.ready(request.name))

    def server_metadata(self) -> v2pb.ServerMetadataResponse:
        meta = self._service.server_metadata()
        return v2pb.ServerMetadataResponse(name=meta["name"], version=meta["version"], extensions=meta["extensions"])

    async def model_metadata(self, request: v2pb.ModelMetadataRequest) -> v2pb.ModelMetadataResponse:
        meta = await self._service.model_metadata(request.name)
        return v2pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[v2pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
            outputs=[v2pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]],
        )

    async def model_infer(self, request: v2pb.ModelInferRequest) -> v2pb.ModelInferResponse:
        inputs: dict[str, np.ndarray] = {}
        for index, item in enumerate(request.inputs):
            dtype = DATATYPES.get(item.datatype)
            if dtype is None:
                raise V2Error(f"input {item.name}: datatype {item.datatype} is not supported")
            try:
                if index < len(request.raw_input_contents):
                    array: np.ndarray = np.frombuffer(request.raw_input_contents[index], dtype=dtype)
                else:
                    array = np.asarray(_typed_contents(item.contents, item.datatype), dtype=dtype)
                inputs[item.name] = array.reshape(list(item.shape))
            except (TypeError, ValueError, OverflowError) as exc:
                raise V2Error(f"input {item.name}: {exc}") from exc
        wanted = [o.name for o in request.outputs] or None
        spec, outputs = await self._service.infer(request.model_name, inputs, wanted)
        reply = v2pb.ModelInferResponse(model_name=spec.name, model_version=spec.version, id=request.id)
        for name, array in outputs.items():
            reply.outputs.add(name=name, datatype=_datatype(array), shape=list(array.shape))
            reply.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
        return reply


def _typed_contents(contents: Any, datatype: str) -> list[Any]:
    field = {
        "BOOL": "bool_contents",
        "FP32": "fp32_contents",
        "FP64": "fp64_contents",
        "INT64": "int64_contents",
        "UINT8": "uint_contents",
        "INT8": "int_contents",
        "INT16": "int_contents",
        "INT32": "int_contents",
        "FP16": "fp32_contents",
    }[datatype]
    return list(getattr(contents, field))
