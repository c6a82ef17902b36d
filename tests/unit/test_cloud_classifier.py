"""The hub's classifier on a batch: one model run for the good inputs, a clear error for the bad one only."""

import pytest

from cloud.models.classifier import Classifier
from protocol import EncodedImage
from protocol.errors import MalformedMessage


def test_a_bad_input_fails_alone_in_its_batch(demo_assets):
    classifier = Classifier(demo_assets / "models" / "digits-strong.onnx")
    frames = sorted((demo_assets / "stream" / "images").iterdir())[:3]
    good = [EncodedImage("image/png", f.read_bytes(), 32, 32) for f in frames]
    bad = EncodedImage("image/png", b"not a png", 32, 32)
    results = classifier.predict_batch([good[0], bad, good[1], good[2]])
    assert isinstance(results[1], MalformedMessage) and "not a decodable image" in str(results[1])
    alone = [classifier.predict(g) for g in good]
    assert [r.label for r in (results[0], results[2], results[3])] == [a.label for a in alone]
    for batched, single in zip((results[0], results[2], results[3]), alone, strict=True):
        assert batched.scores == pytest.approx(single.scores, abs=1e-5)
    with pytest.raises(MalformedMessage):
        classifier.predict(bad)
