"""Numbered, plain-SQL schema migrations, applied in order by ``connectors.migrate``.

One file per migration, named ``NNNN_what_it_does.sql`` (four digits, then a lower-case
description). Each file runs in one transaction of its own, so it must not contain
statements that refuse to run in a transaction (``CREATE INDEX CONCURRENTLY``,
``VACUUM``) nor its own ``BEGIN``/``COMMIT``. A file is never edited once applied
anywhere: change the schema with a new, higher number. This package holds no code; it
exists so the files ship in the wheel and are found with ``importlib.resources``.
"""

__all__: list[str] = []
