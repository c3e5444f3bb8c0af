"""A persistent cache of judge replies, so reruns cost nothing and killed runs resume.

Keyed by the request that decides a reply (judge model, messages, sampling settings), not by where
the judge is served: the same model behind another URL hits the same entries. Every valid reply is
committed as soon as it arrives, so after a crash or Ctrl-C the finished calls are kept and a rerun
only asks for the rest. SQLite in WAL mode lets several evaluations share one cache file.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from tarsier.errors import TarsierError

SCHEMA_VERSION = 1


def request_key(request: dict[str, Any]) -> str:
    """Stable hash of a chat request (key order and whitespace do not matter)."""
    blob = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JudgeCache:
    """SQLite table ``replies(key, model, request, reply, created_at)``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise TarsierError(f"{self.path}: judge cache of an unknown version {version}")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS replies ("
                " key TEXT PRIMARY KEY, model TEXT NOT NULL, request TEXT NOT NULL,"
                " reply TEXT NOT NULL, created_at REAL NOT NULL)"
            )
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._db.commit()
        except sqlite3.DatabaseError as exc:
            raise TarsierError(f"{self.path}: not a usable judge cache ({exc})") from None

    def get(self, key: str) -> str | None:
        row = self._db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, request: dict[str, Any], reply: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO replies (key, model, request, reply, created_at) VALUES (?, ?, ?, ?, ?)",
            (key, str(request.get("model", "")), json.dumps(request, ensure_ascii=False), reply, time.time()),
        )
        self._db.commit()

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> JudgeCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
