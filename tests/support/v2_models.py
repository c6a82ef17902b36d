"""A tiny v2 model for tests of the protocol's adapters: doubles its one FP32 input."""

from __future__ import annotations

from cloud.ingress.v2 import ModelSpec, TensorModels, TensorSpec


class Doubler(TensorModels):
    def names(self):
        return ["double"]

    async def spec(self, name):
        return ModelSpec(name, "1", (TensorSpec("x", "FP32", (-1,)),), (TensorSpec("y", "FP32", (-1,)),))

    async def run(self, name, inputs):
        return {"y": inputs["x"] * 2}
