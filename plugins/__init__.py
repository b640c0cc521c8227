"""Built-in analyzer plugins (installed as ``zooscope.plugins``)."""
