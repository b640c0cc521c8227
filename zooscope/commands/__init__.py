"""The CLI's command groups, one module each; ``zooscope.cli`` wires them together."""
