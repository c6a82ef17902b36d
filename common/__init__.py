"""What the device and the hub both stand on: the error tree's root, config helpers, the MQTT client
factory and the inference runners. Python 3.10, like ``edge/``; imports only ``protocol/``."""
