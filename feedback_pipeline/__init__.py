"""The pipeline from Python, for notebooks and scripts.

```python
import feedback_pipeline as fp

scored = fp.analyze(["Kargo çok geç geldi", "Livrarea a fost rapidă"])
with fp.connect("data/feedback.duckdb") as db:
    november = db.records(since="2026-11-01", until="2026-12-01")
```

``feedback analyze`` and ``feedback export`` are built on the same functions.
"""

from feedback_pipeline._analyze import ANALYZE_STAGES, Analyzer, analyze
from feedback_pipeline._connect import Connection, connect
from pipelines.export import EXPORT_COLUMNS, EXPORT_DTYPES, EXPORT_SCHEMA_VERSION, read_export

__all__ = [
    "ANALYZE_STAGES",
    "EXPORT_COLUMNS",
    "EXPORT_DTYPES",
    "EXPORT_SCHEMA_VERSION",
    "Analyzer",
    "Connection",
    "analyze",
    "connect",
    "read_export",
]
