"""The analysts' guide (docs/analysts.md) names every table and column of the DDL, and has ten queries or more."""

from __future__ import annotations

from pathlib import Path

from suanwang.store import SOURCE_COLUMNS, Store
from tests.test_e2e import analyst_queries

GUIDE = (Path(__file__).parents[1] / "docs" / "analysts.md").read_text(encoding="utf-8")


def test_guide_documents_every_table_and_column(store: Store) -> None:

    _, columns = store.query(
        "SELECT table, name FROM system.columns WHERE database = 'suanwang' AND table != 'schema_migrations' "
        "AND table NOT LIKE '%_mv'"
    )
    missing = [
        f"{table}.{name}"
        for table, name in columns
        if f"| `{table}` |" not in GUIDE
        or (
            name not in (*SOURCE_COLUMNS, "ingested_at")
            and f"`{name}`" not in GUIDE.split(f"| `{table}` |")[1].split("\n")[0]
        )
    ]
    assert not missing


def test_guide_has_ten_queries_or_more() -> None:
    queries = analyst_queries()
    assert len(queries) >= 10 and all(q.lstrip().upper().startswith("SELECT") for q in queries)
