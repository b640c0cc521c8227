"""Upkeep of whole zoos, one module per job: ``outputs`` (output paths checked before any
work), ``validate``, ``merge`` (merging and splitting), ``export`` and ``imports`` (to and
from Hugging Face model folders). They read through the ``Zoo`` interface and write
through a store's writer; the file format is the store's business.
"""
