"""The application floor: the pretraining engine, the downstream loop and its tasks, embedding export,
probes and reports. It stands on ``data/``, ``models/`` and ``utils/``; the scripts stand on it
(docs/architecture.md)."""
