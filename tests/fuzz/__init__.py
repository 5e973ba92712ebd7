"""Fuzzing harness for edgedx's input-facing parsers (see docs/fuzzing.md).

One module per target (``fuzz_decode``, ``fuzz_dicom``, ``fuzz_manifest``, ``fuzz_onnx``), each with
``seeds()`` and ``one_input(data)``; :mod:`tests.fuzz.run` drives them with atheris (coverage
guided, when installed) or a portable seeded mutator; ``test_fuzz_smoke.py`` runs a few hundred
inputs of each inside pytest.

The property every target checks: only :class:`edgedx.errors.EdgedxError` subclasses escape, what
is returned is well formed, and no input takes longer than its deadline.
"""
