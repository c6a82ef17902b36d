from cloud.dispatch.mqtt import MqttDispatcher, Publisher

__all__ = ["MqttDispatcher", "Publisher"]
