"""The pipelined frame loop (``detector.pipelined``): the same traces as the loop that takes frames in turn, one
frame in flight, the model called from one thread at a time, and every frame accounted for. No network."""

from __future__ import annotations

import threading
import time

import cv2
import pytest

from common.errors import InferenceError
from edge.app import EdgeRuntime
from edge.config import DetectorConfig, EdgeConfig, JudgeConfig, SourceConfig
from edge.judge import TraceState
from edge.sources import Frame


def make_runtime(tmp_path, demo_assets, name: str, pipelined: bool) -> EdgeRuntime:
    config = EdgeConfig(
        device_id=f"cam-{name}",
        state_path=tmp_path / f"{name}.db",
        source=SourceConfig(kind="images", path=demo_assets / "stream" / "images"),
        detector=DetectorConfig(model_path=demo_assets / "models" / "digits-weak.onnx", pipelined=pipelined),
        judge=JudgeConfig(confidence_threshold=0.9),
    )
    runtime = EdgeRuntime(config)
    runtime.store.open()
    runtime.detector.start()
    return runtime


def frames(demo_assets, count: int = 40) -> list[Frame]:
    paths = sorted((demo_assets / "stream" / "images").iterdir())[:count]
    found = [Frame("cam", i, time.time(), cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)) for i, p in enumerate(paths)]
    found[7] = Frame("cam", 7, time.time(), None, error="cannot decode 000007.png")  # an undecodable frame
    return found


def test_pipelined_and_in_turn_record_the_same_traces(tmp_path, demo_assets):
    stream = frames(demo_assets)
    books = {}
    for pipelined in (True, False):
        runtime = make_runtime(tmp_path, demo_assets, f"p{pipelined}", pipelined)
        try:
            assert runtime.run_frames(iter(stream)) == len(stream)
            books[pipelined] = sorted(
                (t.frame_index, t.state, t.local_label, round(t.local_confidence or 0, 5))
                for t in runtime.store.traces()
            )
        finally:
            runtime.store.close()
    assert books[True] == books[False]
    assert len(books[True]) == len(stream)
    assert [i for i, state, *_ in books[True] if state is TraceState.UNJUDGEABLE] == [7]
    assert any(state is TraceState.PENDING_CLOUD for _, state, *_ in books[True])


class Watched:
    """Wraps the live detector: counts calls at once and which threads make them."""

    def __init__(self, inner, fail_on: int | None = None):
        self.inner = inner
        self.fail_on = fail_on
        self.calls = 0
        self.at_once = 0
        self.most_at_once = 0
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def predict(self, image):
        with self._lock:
            self.calls += 1
            self.at_once += 1
            self.most_at_once = max(self.most_at_once, self.at_once)
            self.threads.add(threading.current_thread().name)
            call = self.calls
        try:
            time.sleep(0.002)  # long enough for a second call to overlap, were one made
            if call == self.fail_on:
                raise InferenceError("the engine failed on this frame")
            return self.inner.predict(image)
        finally:
            with self._lock:
                self.at_once -= 1


@pytest.fixture
def watched(tmp_path, demo_assets):
    runtime = make_runtime(tmp_path, demo_assets, "watched", True)
    watcher = Watched(runtime.live.detector, fail_on=5)
    runtime._replace_live(detector=watcher)  # as a model swap does: the next frame sees it
    yield runtime, watcher
    runtime.store.close()


def test_one_frame_in_flight_and_an_inference_failure_is_that_frames_alone(demo_assets, watched):
    runtime, watcher = watched
    stream = [f for f in frames(demo_assets, 20) if f.image is not None]
    assert runtime.run_frames(iter(stream)) == len(stream)
    assert watcher.most_at_once == 1  # the model never runs two frames at once
    assert all(name.startswith("inference") for name in watcher.threads)  # off the frame loop's thread
    traces = sorted(runtime.store.traces(), key=lambda t: t.frame_index)
    assert len(traces) == len(stream)
    failed = [t for t in traces if t.state is TraceState.UNJUDGEABLE]
    assert len(failed) == 1 and "inference failed: the engine failed" in failed[0].history[-1].reason


def test_stop_ends_the_pipelined_loop_with_every_frame_taken_recorded(demo_assets, watched):
    runtime, _ = watched
    stream = frames(demo_assets, 30)

    def stopping():
        for i, frame in enumerate(stream):
            if i == 10:
                runtime.stop()
            yield frame

    taken = runtime.run_frames(runtime._paced(stopping(), None, None))
    assert taken == len(runtime.store.traces()) == 11  # the frame read when stop() came is finished too
