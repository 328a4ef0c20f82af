"""The application floor: the pretraining engine, the downstream loop and its tasks, the end-to-end trainer,
the comparison, embedding export, probes, reports and maps. It stands on ``synthetic/``, ``prepare/``,
``data/``, ``models/`` and ``utils/``; the scripts stand on it (docs/architecture.md)."""
