"""The analysis services: ``results`` (running analyzers, storing and reusing results,
their CSV and PNG files), ``evaluation`` (re-evaluating models rebuilt from a zoo),
``bootstrap`` (confidence intervals over seeds and examples), ``card`` (the zoo card),
``report`` (the one-page report) and ``notebook`` (``zooscope.analyze`` from Python).
"""
