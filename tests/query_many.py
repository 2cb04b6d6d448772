"""Many queries of one data directory in one process (`python -m tests.query_many DIR < queries.json`): each
`suanwang sql` costs a process start, and the e2e test asks forty questions of one run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from suanwang.settings import Settings
from suanwang.store import Store


def main(data_dir: str) -> None:
    store = Store(Settings(data_dir=Path(data_dir)))
    try:
        answers = []
        for sql in json.load(sys.stdin):
            names, rows = store.query(sql)
            answers.append([dict(zip(names, row, strict=True)) for row in rows])
    finally:
        store.close()
    json.dump(answers, sys.stdout, default=str)


if __name__ == "__main__":
    main(sys.argv[1])
