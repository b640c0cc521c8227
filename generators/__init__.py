"""Built-in generator plugins (installed as ``zooscope.generators``)."""
