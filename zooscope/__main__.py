"""``python -m zooscope``, which ``torchrun`` launches for multi-process generation."""

from zooscope.cli import main

main()
