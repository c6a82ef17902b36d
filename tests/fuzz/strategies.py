"""Inputs for the fuzzers: arbitrary bytes, and valid messages and images with bytes changed, cut or added."""

from __future__ import annotations

from hypothesis import strategies as st

from protocol import EncodedImage, EscalationRequest, EscalationResult, Prediction, ResultAck, ResultStatus, Tensor
from tests.support.images import png

TRACE = "0123456789abcdef0123456789abcdef"
LOCAL = Prediction("weak", "1", ("0", "1"), (0.4, 0.6))
VALID = {
    "request": EscalationRequest(TRACE, "cam-1", LOCAL, EncodedImage("image/png", png(), 8, 8), 1000),
    "tensor request": EscalationRequest(TRACE, "cam-1", LOCAL, Tensor("uint8", (8, 8), bytes(64)), 1000),
    "result": EscalationResult(TRACE, "cam-1", ResultStatus.SUCCESS, (LOCAL,), LOCAL, error=""),
    "ack": ResultAck(TRACE, "cam-1"),
}


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` with a few bytes flipped, a cut, or bytes inserted."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, 8))):
        if not data:
            break
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        at = draw(st.integers(0, len(data) - 1))
        if action == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[at : at + draw(st.integers(1, 16))]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


def wire_bytes() -> st.SearchStrategy[bytes]:
    seeds = [m.to_proto().SerializeToString() for m in VALID.values()]
    return st.one_of(st.binary(max_size=512), *(mutated(seed) for seed in seeds))
