"""The analysts' guide in the README names every table and column of the DDL, and has ten queries or more."""

from __future__ import annotations

from pathlib import Path

from suanwang.store import SOURCE_COLUMNS, Store
from tests.test_e2e import analyst_queries

README = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")


def test_guide_documents_every_table_and_column(store: Store) -> None:
    guide = README.split("## Analysts' guide")[1].split("\n## ")[0]
    _, columns = store.query(
        "SELECT table, name FROM system.columns WHERE database = 'suanwang' AND table != 'schema_migrations' "
        "AND table NOT LIKE '%_mv'"
    )
    missing = [
        f"{table}.{name}"
        for table, name in columns
        if f"| `{table}` |" not in guide
        or (
            name not in (*SOURCE_COLUMNS, "ingested_at")
            and f"`{name}`" not in guide.split(f"| `{table}` |")[1].split("\n")[0]
        )
    ]
    assert not missing


def test_guide_has_ten_queries_or_more() -> None:
    queries = analyst_queries()
    assert len(queries) >= 10 and all(q.lstrip().upper().startswith("SELECT") for q in queries)
