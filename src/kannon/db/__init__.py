"""The database layer: the only package that imports asyncpg.

Owns the Database (the asyncpg connection pool, `database.py`), the migrations runner, the embedded
PostgreSQL used by standalone mode and the test fixtures, and the repositories that read and
write Kannon's tables.
"""
