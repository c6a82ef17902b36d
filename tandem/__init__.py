"""Above both sides: the ``tandem`` command, the demo and the embedded broker."""
