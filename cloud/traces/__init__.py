from cloud.traces.store import HubTrace, TraceStatus, TraceStore

__all__ = ["HubTrace", "TraceStatus", "TraceStore"]
