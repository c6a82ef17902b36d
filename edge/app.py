"""The edge runtime's composition root: builds every part from config and runs the frame loop.

    frame -> detector -> judge -> COMPLETE (local)
                               -> PENDING_CLOUD: trace + outbox row in one transaction
                                  -> worker sends it over gRPC or MQTT, retrying while the hub is down
                                  -> verdict on MQTT -> COMPLETE, or deadline -> FALLBACK_COMPLETE

Constructors do no I/O; ``start()`` opens the store, loads the model and
connects; ``close()`` undoes it. Nothing here stops on a bad frame, a dead
hub or a dead broker: each becomes a recorded state, a log line and a metric.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Optional

import numpy as np

from common.errors import InferenceError
from edge.actions import Actions, Settlement
from edge.comms.grpc_client import GrpcTransport
from edge.comms.link import DeviceLink, Handled
from edge.comms.mqtt_transport import MqttTransport
from edge.comms.transport import Transport
from edge.config import (
    EdgeConfig,
    EscalationConfig,
    JudgeConfig,
    MqttTransportConfig,
    SourceConfig,
    camera_judge,
    fleet_state_dir,
)
from edge.detectors import create_detector
from edge.detectors.base import Detector
from edge.enroll import check_identity
from edge.errors import StoreError, StoreFull
from edge.health import HealthServer
from edge.judge import Judge, JudgeDecision, JudgeInput, TraceMachine, TraceState, Verdict
from edge.metrics import EdgeMetrics, RuntimeState, SourceStatus
from edge.models.agent import DesiredStateAgent, Identity
from edge.models.host import ModelHost
from edge.models.quality import Quality
from edge.models.settings import HotSettings
from edge.models.slots import Slots
from edge.models.updater import Host, ModelUpdater
from edge.outbox import EdgeStore, OutboxLimits, VerdictOutcome
from edge.outbox.worker import EscalationWorker
from edge.payload import encode as encode_payload
from edge.service import SystemdNotifier
from edge.sources import Frame, FrameSource, LiveSource, SourceState, open_source
from edge.sources.reader import CameraReader
from edge.sources.sensors import SensorState, open_sensor
from edge.telemetry import Heartbeat, HeartbeatLoop
from protocol import fleet
from protocol.bundle import Manifest
from protocol.codec import decode_escalation_ack, decode_result, encode_request, encode_result_ack
from protocol.errors import ProtocolError
from protocol.messages import EscalationRequest, Prediction, ResultAck, new_trace_id
from protocol.topics import Channel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Live:
    """What the frame loop reads, swapped as one reference between frames: a frame sees the old set or the new."""

    detector: Detector
    judge: Judge  # the device's
    escalation: EscalationConfig
    camera_judges: Mapping[str, Judge] = field(default_factory=dict)  # by source_id, where a camera has its own

    def judge_for(self, camera: str) -> Judge:
        return self.camera_judges.get(camera, self.judge)


def camera_judges(config: EdgeConfig, judge: JudgeConfig) -> Mapping[str, Judge]:
    """Each camera's own judge, where its config changes any field of the device's."""
    own = {c.source_id: Judge.from_config(camera_judge(c, judge)) for c in config.cameras if c.judge}
    return MappingProxyType(own)


@dataclass(frozen=True)
class Escalation:
    payload: bytes
    priority: int


def priority(decision: JudgeDecision, prediction: Prediction) -> int:
    """Outbox priority, 0-100: the less sure the device, the sooner the hub should look; audits come last."""
    if not decision.uncertain:
        return 0
    return max(1, min(100, round(100 * (1 - prediction.confidence))))


class EdgeRuntime:
    def __init__(
        self,
        config: EdgeConfig,
        *,
        detector: Optional[Detector] = None,
        transport: Optional[Transport] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_identity(config)
        self.config = config
        self.clock = clock
        self.metrics = EdgeMetrics()
        outbox = config.outbox
        self.store = EdgeStore(
            config.state_path,
            outbox.synchronous,
            OutboxLimits(outbox.max_rows, outbox.max_bytes, outbox.on_full),
            local_batch=outbox.local_trace_batch,
            local_flush_s=outbox.local_trace_flush_ms / 1000.0,
        )
        self._live_lock = threading.Lock()  # writers of self.live: the fleet agent and the model updater
        self.live = Live(
            detector or create_detector(config.detector),
            Judge.from_config(config.judge),
            config.escalation,
            camera_judges(config, config.judge),
        )
        self.heartbeat = Heartbeat(config.device_id, clock, cameras=[c.source_id for c in config.cameras])
        self.identity = Identity.of(config)
        self.models = ModelHost(
            config,
            self.identity,
            lambda: self.live.detector,
            lambda detector: self._replace_live(detector=detector).detector,
            self.model_swapped,
        )
        self.slots = Slots(fleet_state_dir(config))
        self.quality = Quality(config.models.probation.frames)
        self.updater = ModelUpdater(
            config.models,
            self.slots,
            self.quality,
            Host(
                self.models.prepare,
                self.models.swap,
                self.models.standing,
                self._model_update,
            ),
            ca_path=config.tls.ca_path if config.tls is not None else None,
        )
        self.fleet = DesiredStateAgent(
            config,
            fleet_state_dir(config),
            self.identity,
            apply=self.use_settings,
            active_model=self.models.active_model,
            publish_reported=lambda payload: self.link.publish(Channel.REPORTED, payload, retain=True),
            want_model=self.updater.want,
            clock=clock,
        )
        self.link = DeviceLink(
            config.device_id,
            config.mqtt,
            {
                Channel.RESULTS: self.on_result,
                Channel.ACCEPTED: self.on_accepted,
                Channel.DESIRED: self.fleet.on_desired,
            },
            on_connected=self.fleet.report,
            tls=config.tls,
        )
        self.transport = transport or self._transport(config)
        self.actions = Actions(config.actions, self.link.publish, self.metrics)
        self.settle = Settlement(config, self.store, self.actions, self.metrics, clock)
        self.worker = EscalationWorker(
            self.store,
            self.transport,
            config.outbox,
            self.metrics,
            clock,
            on_fallback=self._fell_back,
        )
        self.telemetry = HeartbeatLoop(
            self.heartbeat,
            config.fleet.telemetry_interval_s,
            self._outbox_now,
            lambda payload: self.link.publish(Channel.TELEMETRY, payload, qos=0),
            judge_threshold=lambda: self.live.judge.confidence_threshold,
        )
        self.notifier = SystemdNotifier()
        self.health = (
            HealthServer(config.service.http_host, config.service.http_port, self.metrics.registry, self.health_probe)
            if config.service.http_port is not None
            else None
        )
        self.metrics.watch(self.runtime_state)
        self.sensors = SensorState()
        self.sensor_readers = [
            open_sensor(s, self.sensors, config.mqtt, config.device_id, self._on_sensor_error) for s in config.sensors
        ]
        self._stop = threading.Event()
        self._source: Optional[FrameSource] = None
        self._readers: list[CameraReader] = []  # several cameras: their reader threads, while run() runs
        self._source_states = {  # by camera, as each reports (files are read, not watched)
            c.source_id: "file" if c.kind in ("video", "images") else "connecting" for c in config.cameras
        }
        self._recent: collections.deque[float] = collections.deque(maxlen=1000)  # monotonic times of frames
        self._store_full = False  # the last write found the store's filesystem full
        self._last_turn = time.monotonic()

    def _transport(self, config: EdgeConfig) -> Transport:
        if isinstance(config.transport, MqttTransportConfig):
            return MqttTransport(config.transport, self.link)
        return GrpcTransport(
            config.transport, on_result=lambda payload: self.on_result(payload, acknowledge=False), tls=config.tls
        )

    # -- lifecycle -----------------------------------------------------------

    @property
    def detector(self) -> Detector:
        """The detector the next frame runs on."""
        return self.live.detector

    def start(self) -> None:
        self.store.open()
        manifest, folder = self.updater.recover()  # the active bundle, checked complete, if the hub sent one
        if manifest is not None and folder is not None:
            self._replace_live(detector=create_detector(self.models.detector_config(manifest, folder)))
            self.models.manifest = manifest
            self.fleet.use_bundle_judge(manifest.judge)
        self.fleet.start()  # the hub's saved settings, before the first frame
        self.detector.start()
        self.transport.start()
        # Subscribe before escalating anything, so no verdict can be published
        # before the broker holds a session for this device.
        self.link.start()
        self.worker.start()
        self.telemetry.start()
        self.updater.start()
        for reader in self.sensor_readers:
            reader.start()
        self.actions.start()
        if self.health is not None:
            self.health.start()
        self.notifier.ready(f"device {self.config.device_id} running")
        logger.info("edge %s: running", self.config.device_id)

    def stop(self) -> None:
        """Ask ``run()`` to return after the current frame (signal handlers call this)."""
        self._stop.set()
        source = self._source
        if source is not None:
            source.stop()
        for reader in self._readers:
            reader.stop()

    def close(self) -> None:
        """Drain and release everything: sends in flight finish, queued rows stay in the outbox for the next start."""
        self.notifier.stopping()
        self.updater.close()
        self.telemetry.close()
        for reader in self.sensor_readers:
            reader.close()
        self.worker.stop()
        self.actions.close()
        if self.health is not None:
            self.health.close()
        self.link.close()
        self.transport.close()
        self.detector.close()
        self.store.close()
        self.notifier.close()
        logger.info("edge %s: closed", self.config.device_id)

    def __enter__(self) -> EdgeRuntime:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the frame loop --------------------------------------------------------

    def run(self, max_frames: Optional[int] = None) -> int:
        """Read the configured source(s) until they end, ``stop()`` is called, or max_frames; return frames read."""
        cameras = self.config.cameras
        if len(cameras) > 1:
            return self._run_cameras(cameras, max_frames)
        camera = cameras[0]
        with open_source(camera, self._on_source_state) as source:
            self._source = source
            if isinstance(source, LiveSource):
                source.on_idle = self._turn  # waiting for a camera that is down is not a stalled loop
            try:
                return self.run_frames(self._paced(source.frames(), max_frames, camera.max_fps))
            finally:
                self._source = None

    def _paced(self, frames: Iterator[Frame], max_frames: Optional[int], fps: Optional[float]) -> Iterator[Frame]:
        """The source's frames, up to max_frames, until ``stop()``, no faster than fps."""
        interval = 1.0 / fps if fps else 0.0
        next_at = time.monotonic()
        for count, frame in enumerate(frames, start=1):
            yield frame
            if self._stop.is_set() or (max_frames is not None and count >= max_frames):
                return
            if interval:
                # The next frame's slot; after a stall, catch up by at most one frame, never in a burst.
                next_at = max(next_at + interval, time.monotonic() - interval)
                self._stop.wait(max(0.0, next_at - time.monotonic()))

    def run_frames(self, frames: Iterable[Frame]) -> int:
        """Every frame through the model, the judge and the store, in order; returns how many.

        Pipelined (``detector.pipelined``): frame N+1's inference runs on a thread of its own while this thread
        judges and records frame N (the model's runtime releases the GIL while it runs), so one frame is in
        flight; the model sees one frame at a time, as before."""
        if not self.config.detector.pipelined:
            count = 0
            for frame in frames:
                self.process(frame)
                count += 1
            return count
        count = 0
        pending: Optional[tuple[Frame, Future[Optional[Prediction | InferenceError]]]] = None
        with ThreadPoolExecutor(1, thread_name_prefix="inference") as inference:
            for frame in frames:
                answer = inference.submit(self._answer, frame)
                if pending is not None:
                    self.process(pending[0], pending[1].result())
                    count += 1
                pending = (frame, answer)
            if pending is not None:
                self.process(pending[0], pending[1].result())
                count += 1
        return count

    def _answer(self, frame: Frame) -> Optional[Prediction | InferenceError]:
        """The live model's answer for one frame (the pipeline's thread); None for an undecodable frame."""
        if frame.image is None:
            return None
        try:
            return self.live.detector.predict(frame.image)
        except InferenceError as exc:
            return exc

    def _run_cameras(self, cameras: list[SourceConfig], max_frames: Optional[int]) -> int:
        """Several cameras: each read on its own thread into a one-frame slot, so one that stalls holds up only
        itself; this thread takes whatever frames are waiting, runs them through the model together
        (``Detector.predict_many``) and judges each with its camera's judge."""
        done = threading.Event()  # the readers' own: run() ending stops them, not the runtime
        arrived = threading.Event()
        readers = [CameraReader(c, done, arrived, self._on_source_state, self._turn) for c in cameras]
        self._readers = readers
        for reader in readers:
            reader.start()
        count = 0
        try:
            while not self._stop.is_set() and (max_frames is None or count < max_frames):
                arrived.clear()  # before taking: a frame put from here on sets it again
                frames = [f for f in (r.take() for r in readers) if f is not None]
                if max_frames is not None:
                    frames = frames[: max_frames - count]
                if not frames:
                    if all(r.finished for r in readers):
                        break
                    arrived.wait(0.5)
                    self._turn()  # waiting on cameras is not a stalled loop (one camera alone: LiveSource.on_idle)
                    continue
                detector = self.live.detector
                answers = self._infer_together(detector, frames)
                for frame, answer in zip(frames, answers, strict=True):
                    self.process(frame, answer)
                count += len(frames)
        finally:
            self._stop_readers(readers)
        return count

    def _infer_together(self, detector: Detector, frames: list[Frame]) -> list[Prediction | InferenceError | None]:
        """One model run for every decodable frame; a failed run fails each of them (None: nothing to run)."""
        images = [f.image for f in frames if f.image is not None]
        try:
            found: list[Prediction | InferenceError] = list(detector.predict_many(images)) if images else []
        except InferenceError as exc:
            found = [exc] * len(images)
        answers = iter(found)
        return [next(answers) if f.image is not None else None for f in frames]

    def _stop_readers(self, readers: list[CameraReader]) -> None:
        for reader in readers:
            reader.join(5.0)
        self._readers = []

    def _turn(self) -> None:
        """The frame loop is alive: ping systemd's watchdog and note the time for /healthz."""
        self._last_turn = time.monotonic()
        self.notifier.watchdog()

    def process(self, frame: Frame, answer: Optional[Prediction | InferenceError] = None) -> Optional[TraceState]:
        """One frame through detector and judge (or only the judge, given the model's ``answer`` from a run of
        several cameras' frames); returns the trace's state, or None if it could not be stored."""
        trace_id, now, machine, live = new_trace_id(), self.clock(), TraceMachine(), self.live
        prediction = self._infer(frame, machine, now, live.detector, answer)
        reasons: tuple[str, ...] = ()
        escalation: Optional[Escalation] = None
        uncertain = False
        if prediction is not None and frame.image is not None:
            reasons, escalation, uncertain = self._judge(trace_id, frame, frame.image, prediction, machine, now, live)
        if machine.state is TraceState.UNJUDGEABLE:
            logger.warning("frame %s/%d unjudgeable: %s", frame.source_id, frame.index, machine.last_reason)
        deadline_at = now + live.escalation.deadline_ms / 1000.0 if escalation is not None else None
        try:
            dropped = self.store.record_trace(
                trace_id,
                machine,
                source_id=frame.source_id,
                frame_index=frame.index,
                truth=frame.truth,
                prediction=prediction,
                reasons=reasons,
                created_at=now,
                escalation=escalation.payload if escalation else None,
                deadline_at=deadline_at,
                priority=escalation.priority if escalation else 0,
            )
        except StoreFull as exc:
            self.metrics.store_errors.labels(operation="record_trace_full").inc()
            if not self._store_full:  # said once, not at every frame; /healthz and a gauge say it meanwhile
                logger.error("device store full: frames are not recorded until space returns: %s", exc)
                self._store_full = True
            self._turn()  # a full disk degrades the loop; it does not stall it
            return None
        except StoreError as exc:
            logger.error("frame %s/%d: could not be recorded: %s", frame.source_id, frame.index, exc)
            self.metrics.store_errors.labels(operation="record_trace").inc()
            return None
        if self._store_full:
            logger.warning("device store writable again")
            self._store_full = False
        self.metrics.count_frame(frame.source_id, machine.state.value.lower())
        if prediction is not None:  # the heartbeat's counts, and the model's record for a probation
            confidence = prediction.confidence
            self.heartbeat.frame(
                confidence, escalation is not None, prediction.inference_ms, uncertain, camera=frame.source_id
            )
            self.quality.frame(True, prediction.inference_ms, uncertain, confidence)
        else:
            self.heartbeat.frame(None, False, camera=frame.source_id)
            if frame.image is not None:  # an inference failure counts against the model; an undecodable frame not
                self.quality.frame(False, 0.0, False, 0.0)
        self._recent.append(time.monotonic())
        self._turn()
        if prediction is not None:
            self.metrics.inference_ms.observe(prediction.inference_ms)
        self.settle.new_trace(trace_id, frame, prediction, machine.state, now)
        if dropped.rows:
            logger.warning(
                "outbox full: dropped %d escalations (%s), %d of them still waiting; their local answers stand",
                len(dropped.rows),
                self.config.outbox.on_full,
                len(dropped.fell_back),
            )
            self.metrics.outbox_dropped.labels(reason="full").inc(len(dropped.rows))
            self._fell_back(list(dropped.fell_back))
        if escalation is not None:
            self.worker.wake()
        return machine.state

    def _infer(
        self,
        frame: Frame,
        machine: TraceMachine,
        now: float,
        detector: Detector,
        answer: Optional[Prediction | InferenceError] = None,
    ) -> Optional[Prediction]:
        """RAW -> INFERRED with the model's answer, or RAW -> UNJUDGEABLE when there is none."""
        if frame.image is None:
            machine.advance(TraceState.UNJUDGEABLE, f"undecodable frame: {frame.error}", now)
            return None
        try:
            if isinstance(answer, InferenceError):
                raise answer
            prediction = answer if answer is not None else detector.predict(frame.image)
        except InferenceError as exc:
            machine.advance(TraceState.UNJUDGEABLE, f"inference failed: {exc}", now)
            return None
        said = f"{prediction.model_id}: {prediction.label} ({prediction.confidence:.3f})"
        machine.advance(TraceState.INFERRED, said, now)
        return prediction

    def _judge(
        self,
        trace_id: str,
        frame: Frame,
        image: np.ndarray,
        prediction: Prediction,
        machine: TraceMachine,
        now: float,
        live: Live,
    ) -> tuple[tuple[str, ...], Optional[Escalation], bool]:
        """INFERRED -> JUDGED -> COMPLETE or PENDING_CLOUD (or UNJUDGEABLE); returns the reasons and any escalation."""
        decision = live.judge_for(frame.source_id).decide(JudgeInput(prediction, image, self.sensors.values()))
        self.metrics.count_decision(frame.source_id, decision.verdict.value, decision.cause)
        uncertain = decision.uncertain
        if decision.verdict is Verdict.UNJUDGEABLE:
            machine.advance(TraceState.UNJUDGEABLE, "; ".join(decision.reasons), now)
            return decision.reasons, None, uncertain
        machine.advance(TraceState.JUDGED, "; ".join(decision.reasons), now)
        if not decision.escalate:
            why = "uncertain, not escalated" if decision.uncertain else "confident"
            machine.advance(TraceState.COMPLETE, f"local answer stands ({why})", now)
            return decision.reasons, None, uncertain
        escalation = self._escalation(trace_id, image, prediction, frame, decision, now, live)
        if escalation is None:
            machine.advance(TraceState.COMPLETE, "local answer stands (cannot escalate: frame did not encode)", now)
            return decision.reasons, None, uncertain
        refused = self.store.admission(len(escalation.payload), escalation.priority)
        if refused is not None:
            self.metrics.outbox_dropped.labels(reason="rejected").inc()
            machine.advance(TraceState.COMPLETE, f"local answer stands (not escalated: {refused})", now)
            return decision.reasons, None, uncertain
        machine.advance(TraceState.PENDING_CLOUD, "escalated to the hub", now)
        return decision.reasons, escalation, uncertain

    def _escalation(
        self,
        trace_id: str,
        image: np.ndarray,
        prediction: Prediction,
        frame: Frame,
        decision: JudgeDecision,
        now: float,
        live: Live,
    ) -> Optional[Escalation]:
        settings = live.escalation
        payload = encode_payload(image, settings, live.judge_for(frame.source_id).uncertain_boxes(prediction))
        if payload is None:
            logger.error("frame %s/%d: cannot encode for the hub", frame.source_id, frame.index)
            return None
        self.metrics.escalation_bytes.labels(
            camera=frame.source_id, payload=payload.kind, format=settings.image_format
        ).observe(payload.size)
        request = EscalationRequest(
            trace_id=trace_id,
            device_id=self.config.device_id,
            local_prediction=prediction,
            input=payload.image,
            deadline_ms=settings.deadline_ms,
            model_hint=settings.model_hint,
            sent_at=now,
            attributes={
                "source_id": frame.source_id,
                "frame_index": str(frame.index),
                "reasons": "; ".join(decision.reasons),
                "device_group": self.config.fleet.group,  # routing rules can match on it (when.device_group)
                **payload.attributes,
            },
        )
        return Escalation(encode_request(request), priority(decision, prediction))

    def _fell_back(self, trace_ids: list[str]) -> None:
        self.heartbeat.fell_back(len(trace_ids))
        self.settle.fallback(trace_ids)

    def _on_sensor_error(self, sensor: str, error: str) -> None:
        self.metrics.sensor_errors.labels(sensor=sensor, error=error).inc()

    # -- verdicts ------------------------------------------------------------

    def on_result(self, payload: bytes, acknowledge: bool = True) -> Handled:
        """Apply one result message from the hub (paho's thread, or the gRPC sender's with acknowledge=False:
        the hub counts a gRPC response as delivered). A stored result is acknowledged on the acks topic,
        so the hub stops resending it; a repeat is acknowledged again, in case the first ack was lost."""
        try:
            result = decode_result(payload)
        except ProtocolError as exc:
            logger.error("result message dropped: %s", exc)
            self.metrics.bad_results.labels(error=type(exc).__name__).inc()
            return Handled.ACK  # it will never decode; redelivery cannot help
        if result.device_id != self.config.device_id:
            logger.error("result %s is for device %s, not this one; dropped", result.trace_id, result.device_id)
            self.metrics.bad_results.labels(error="WrongDevice").inc()
            return Handled.ACK
        try:
            outcome = self.store.apply_result(result, self.clock())
        except StoreError as exc:
            logger.error("result %s could not be stored, asking for redelivery: %s", result.trace_id, exc)
            self.metrics.store_errors.labels(operation="apply_result").inc()
            return Handled.RETRY
        self.metrics.verdicts.labels(outcome=outcome.value).inc()
        if outcome in (VerdictOutcome.COMPLETED, VerdictOutcome.LATE, VerdictOutcome.FAILED):
            self.settle.verdict(result.trace_id, outcome)
        log = logger.warning if outcome in (VerdictOutcome.UNKNOWN_TRACE, VerdictOutcome.FAILED) else logger.debug
        log("result %s: %s", result.trace_id, outcome.value)
        if acknowledge:
            self._acknowledge(result.trace_id)
        return Handled.ACK

    def on_accepted(self, payload: bytes) -> Handled:
        """The hub's acknowledgement of an escalation sent over MQTT (paho's thread): no more resends."""
        try:
            ack = decode_escalation_ack(payload)
        except ProtocolError as exc:
            logger.error("escalation ack dropped: %s", exc)
            self.metrics.bad_results.labels(error=f"ack:{type(exc).__name__}").inc()
            return Handled.ACK
        try:
            changed = self.store.mark_accepted(ack.trace_id)
        except StoreError as exc:
            logger.error("escalation ack %s could not be stored, asking for redelivery: %s", ack.trace_id, exc)
            self.metrics.store_errors.labels(operation="mark_accepted").inc()
            return Handled.RETRY
        self.metrics.hub_acks.labels(status=ack.status.name.lower() if changed else "repeat").inc()
        return Handled.ACK

    def _acknowledge(self, trace_id: str) -> None:
        ack = encode_result_ack(ResultAck(trace_id, self.config.device_id))
        try:
            self.link.publish(Channel.ACKS, ack)
        except ConnectionError as exc:  # the hub sends the result again, and this ack goes with the repeat
            logger.warning("result %s: stored, but its ack could not be queued: %s", trace_id, exc)
            self.metrics.ack_errors.inc()

    # -- the fleet: settings from the hub, what this device reports ----------------

    def use_settings(self, settings: HotSettings) -> None:
        """The hub's settings from the next frame on (paho's thread, or start()): no restart, no frame lost."""
        self._replace_live(
            judge=Judge.from_config(settings.judge),
            camera_judges=camera_judges(self.config, settings.judge),
            escalation=settings.escalation,
        )
        self.settle.answer = settings.judge.answer

    def _replace_live(self, **parts: object) -> Live:
        """Swap parts of what the frame loop reads, as one reference; returns what was there."""
        with self._live_lock:
            old = self.live
            self.live = replace(old, **parts)  # type: ignore[arg-type]
        return old

    def _model_update(self, status: fleet.UpdateStatus) -> None:
        """Where a model update stands (the updater's thread): reported to the hub; an end is counted."""
        if status.state in fleet.FINAL_STATES:
            self.metrics.model_updates.labels(state=status.state.value, reason=status.reason or "-").inc()
        self.fleet.update_status(status)

    def model_swapped(self, manifest: Optional[Manifest]) -> None:
        """A new model is in the frame loop (the updater's thread): its counters start, its judge settings apply."""
        self.heartbeat.new_model()
        self.fleet.use_bundle_judge(manifest.judge if manifest else {})

    def _outbox_now(self) -> tuple[int, float]:
        depth = self.store.depth()
        age = self.clock() - depth.oldest_enqueued_at if depth.oldest_enqueued_at else 0.0
        return depth.rows, age

    # -- state for /healthz and /metrics -------------------------------------------

    def _on_source_state(self, source_id: str, state: SourceState, reason: str) -> None:
        self._source_states[source_id] = state.value
        self.notifier.status(f"source {source_id} {state.value}: {reason}")

    def _sources(self) -> tuple[SourceStatus, ...]:
        """Each camera's state, and its live source's counts (the reader's slot's drops added, with several)."""
        live: dict[str, tuple[Optional[FrameSource], int]] = {
            r.config.source_id: (r.source, r.dropped) for r in self._readers
        }
        if self._source is not None:
            live[self._source.source_id] = (self._source, 0)
        statuses = []
        for source_id, state in self._source_states.items():
            source, dropped = live.get(source_id, (None, 0))
            stats = source.stats if isinstance(source, LiveSource) else None
            statuses.append(
                SourceStatus(
                    source_id,
                    state,
                    dropped + (stats.dropped if stats else 0),
                    stats.reconnects if stats else 0,
                    stats.down_s if stats else 0.0,
                )
            )
        return tuple(statuses)

    def runtime_state(self) -> RuntimeState:
        now = time.monotonic()
        recent = [t for t in self._recent if t >= now - 10.0]
        fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0
        depth = self.store.depth()
        return RuntimeState(
            fps=fps,
            outbox_rows=depth.rows,
            outbox_bytes=depth.bytes,
            outbox_oldest_age_s=max(0.0, self.clock() - depth.oldest_enqueued_at) if depth.oldest_enqueued_at else 0.0,
            failed_rows=depth.failed_rows,
            sources=self._sources(),
            store_full=self._store_full,
        )

    def health_probe(self) -> tuple[bool, dict[str, object]]:
        """Healthy while the frame loop turns; the body says what else is degraded."""
        state = self.runtime_state()
        idle_s = time.monotonic() - self._last_turn
        stalled = self._source is not None and idle_s > self.config.service.stall_after_s
        degraded = [
            name
            for name, bad in (
                ("source down", any(source.state == "down" for source in state.sources)),
                ("broker not connected", not self.link.subscribed),
                ("failed escalations waiting for replay", state.failed_rows > 0),
                ("store full: frames are not recorded", state.store_full),
            )
            if bad
        ]
        status = "stalled" if stalled else ("degraded" if degraded else "ok")
        sources = [_source_json(source) for source in state.sources]
        body: dict[str, object] = {
            "status": status,
            "device_id": self.config.device_id,
            "loop_idle_s": round(idle_s, 3),
            "degraded": degraded,
            "fps": round(state.fps, 2),
            "sources": sources,
            "outbox": {
                "rows": state.outbox_rows,
                "bytes": state.outbox_bytes,
                "oldest_age_s": round(state.outbox_oldest_age_s, 3),
                "failed": state.failed_rows,
            },
            "mqtt_connected": self.link.subscribed,
        }
        if len(sources) == 1:
            body["source"] = sources[0]  # the one camera, where it was before there could be several
        return not stalled, body

    def wait_resolved(self, timeout_s: float, poll_s: float = 0.05) -> bool:
        """Wait until every escalated trace has a verdict or a fallback; True if it happened in time."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.store.unresolved() == 0:
                return True
            self.worker.wake()
            time.sleep(poll_s)
        return self.store.unresolved() == 0


def _source_json(source: SourceStatus) -> dict[str, object]:
    return {
        "id": source.source_id,
        "state": source.state,
        "dropped": source.dropped,
        "reconnects": source.reconnects,
        "down_s": round(source.down_s, 3),
    }
