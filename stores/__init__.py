"""Built-in store plugins (installed as ``zooscope.stores``)."""
