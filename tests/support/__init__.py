"""Helpers the tests share: Ray actor and learner subclasses that record or inject faults, the
training runs they launch, and greedy-decoding references. Imported as `support.<module>` (tests/
is on sys.path, and on the Ray workers' PYTHONPATH through conftest.py)."""
