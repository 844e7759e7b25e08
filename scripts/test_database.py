"""Print the DATABASE_URL ``make test`` runs the suite on, and say why on stderr.

DATABASE_URL if it is set; else PostgreSQL on 127.0.0.1:5432 (user ``postgres``) whenever it
answers, since production runs on it and the fast path's statements are written for it alone
(conversations/statements/postgresql.py); else SQLite, where those statements go through the
ORM and the PostgreSQL-only tests are skipped.
"""

from __future__ import annotations

import os
import sys

import psycopg

POSTGRESQL = "postgres://postgres@127.0.0.1:5432/test"
SQLITE = "sqlite:///db.sqlite3"


def main() -> None:
    given = os.environ.get("DATABASE_URL")
    if given:
        url, why = given, "DATABASE_URL is set"
    else:
        try:
            psycopg.connect(POSTGRESQL.rsplit("/", 1)[0] + "/postgres", connect_timeout=2).close()
        except psycopg.Error as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc)
            url = SQLITE
            why = (
                f"no PostgreSQL answers on 127.0.0.1:5432 ({first_line}): the PostgreSQL "
                "statements and their tests are skipped"
            )
        else:
            url, why = POSTGRESQL, "PostgreSQL answers on 127.0.0.1:5432"
    print(f"make test: the tests run on {url.split('@')[-1]} ({why})", file=sys.stderr)
    print(url)


if __name__ == "__main__":
    main()
